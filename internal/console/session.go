package console

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"strings"
	"sync"
	"time"
)

// session is one signed-in user.
type session struct {
	user, role string
	csrf       string
	created    time.Time
	seen       time.Time
}

// sessions holds the sessions in memory, by the SHA-256 of their id (a
// process restart signs everyone out).
type sessions struct {
	idle, max time.Duration
	mu        sync.Mutex
	m         map[[32]byte]*session
}

func newSessions(idle, max time.Duration) *sessions {
	return &sessions{idle: idle, max: max, m: map[[32]byte]*session{}}
}

func randomToken() string {
	var b [32]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// create starts a session and returns its id.
func (s *sessions) create(user, role string, now time.Time) (string, *session) {
	id := randomToken()
	ss := &session{user: user, role: role, csrf: randomToken(), created: now, seen: now}
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, v := range s.m {
		if s.expired(v, now) {
			delete(s.m, k)
		}
	}
	s.m[sha256.Sum256([]byte(id))] = ss
	return id, ss
}

func (s *sessions) expired(ss *session, now time.Time) bool {
	return now.Sub(ss.seen) >= s.idle || now.Sub(ss.created) >= s.max
}

// get returns the live session with this id and marks it used.
func (s *sessions) get(id string, now time.Time) (session, bool) {
	if id == "" {
		return session{}, false
	}
	k := sha256.Sum256([]byte(id))
	s.mu.Lock()
	defer s.mu.Unlock()
	ss, ok := s.m[k]
	if !ok {
		return session{}, false
	}
	if s.expired(ss, now) {
		delete(s.m, k)
		return session{}, false
	}
	ss.seen = now
	return *ss, true
}

func (s *sessions) remove(id string) {
	s.mu.Lock()
	delete(s.m, sha256.Sum256([]byte(id)))
	s.mu.Unlock()
}

func (ss session) csrfOK(token string) bool {
	return token != "" && subtle.ConstantTimeCompare([]byte(token), []byte(ss.csrf)) == 1
}

// throttle counts failed sign-ins per account and per source.
type throttle struct {
	maxAccount, maxSource int
	window                time.Duration
	mu                    sync.Mutex
	fails                 map[string][]time.Time
}

func newThrottle(maxAccount, maxSource int, window time.Duration) *throttle {
	return &throttle{maxAccount: maxAccount, maxSource: maxSource, window: window, fails: map[string][]time.Time{}}
}

func (t *throttle) keys(user, source string) (string, string) {
	return "u\x00" + strings.ToLower(user), "s\x00" + source
}

// recent prunes and returns the failures of key within the window.
func (t *throttle) recent(key string, now time.Time) []time.Time {
	f := t.fails[key]
	i := 0
	for i < len(f) && now.Sub(f[i]) >= t.window {
		i++
	}
	f = f[i:]
	if len(f) == 0 {
		delete(t.fails, key)
	} else {
		t.fails[key] = f
	}
	return f
}

// allowed reports whether a sign-in of user from source may be tried,
// and if not, when it may be again.
func (t *throttle) allowed(user, source string, now time.Time) (bool, time.Duration) {
	ku, ks := t.keys(user, source)
	t.mu.Lock()
	defer t.mu.Unlock()
	if f := t.recent(ku, now); len(f) >= t.maxAccount {
		return false, f[len(f)-t.maxAccount].Add(t.window).Sub(now)
	}
	if f := t.recent(ks, now); len(f) >= t.maxSource {
		return false, f[len(f)-t.maxSource].Add(t.window).Sub(now)
	}
	return true, 0
}

func (t *throttle) fail(user, source string, now time.Time) {
	ku, ks := t.keys(user, source)
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.fails) > 100000 {
		t.fails = map[string][]time.Time{} // bounded memory under a flood
	}
	t.fails[ku] = append(t.fails[ku], now)
	t.fails[ks] = append(t.fails[ks], now)
}

func (t *throttle) succeed(user string) {
	ku, _ := t.keys(user, "")
	t.mu.Lock()
	delete(t.fails, ku)
	t.mu.Unlock()
}
