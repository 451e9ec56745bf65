package directory

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// Errors Groups and Authenticate return; match them with errors.Is.
var (
	// ErrUnknownUser: the directory holds no such user (or the name is
	// not a valid login name).
	ErrUnknownUser = errors.New("directory: unknown user")
	// ErrUnavailable: the directory could not be asked in time and
	// nothing is known of the user.
	ErrUnavailable = errors.New("directory: unavailable")
	// ErrInvalidCredentials: wrong password, unknown user, or an empty
	// password (never sent: it would be an unauthenticated bind).
	ErrInvalidCredentials = errors.New("directory: invalid credentials")
)

// maxUserLen bounds a login name; AD's sAMAccountName holds 20 characters,
// UPNs a few hundred.
const maxUserLen = 256

// Directory looks users' groups up in an LDAP directory. It is safe for
// concurrent use.
type Directory struct {
	s       *settings
	now     func() time.Time
	m       *metrics
	started time.Time

	dialMu sync.Mutex // one dial at a time
	connMu sync.Mutex
	conn   *ldap.Conn // shared, bound as the service account; nil: dial

	mu      sync.Mutex
	cache   map[string]*entry // by lower-cased user
	flights map[string]*flight

	up          atomic.Bool
	lastContact atomic.Int64 // unix nanoseconds of the last answer
	counts      [numResults]atomic.Uint64
	closed      atomic.Bool
}

// entry is what the directory last said of a user.
type entry struct {
	groups  []string // nil with known=false: unknown user
	known   bool
	fetched time.Time // last answer from the directory
	expires time.Time // until then, answered without asking
	stale   bool      // the last attempt to refresh failed
}

// flight is one lookup in progress, shared by every caller that wants it.
type flight struct {
	done   chan struct{}
	groups []string
	err    error
	stale  bool // groups are the last known, the directory failed
}

// New checks cfg and returns a Directory. It opens no connection: the
// first lookup does.
func New(cfg Config) (*Directory, error) {
	s, err := cfg.settings()
	if err != nil {
		return nil, err
	}
	d := &Directory{
		s:       s,
		now:     time.Now,
		cache:   make(map[string]*entry),
		flights: make(map[string]*flight),
	}
	d.started = d.now()
	d.m, err = newMetrics(d, cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return d, nil
}

// Close closes the directory connection. Lookups after Close fail.
func (d *Directory) Close() error {
	d.closed.Store(true)
	d.dropConn(nil)
	return nil
}

// validUser reports whether user can be a login name: not empty, not too
// long, no control characters.
func validUser(user string) bool {
	if user == "" || len(user) > maxUserLen {
		return false
	}
	for _, r := range user {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

// Groups returns the groups user belongs to, nested groups included, each
// by CN and by DN, sorted. It answers from the cache while the memberships
// are fresh; otherwise it asks the directory, and while the directory
// cannot be reached it returns the last known memberships (with a nil
// error; Stats counts them as stale). It returns ErrUnknownUser for a user
// the directory does not hold, and an error wrapping ErrUnavailable when
// the directory cannot be asked within Timeout (or ctx) and nothing is
// known. The caller must not modify the slice.
func (d *Directory) Groups(ctx context.Context, user string) ([]string, error) {
	if !validUser(user) {
		return nil, ErrUnknownUser
	}
	key := strings.ToLower(user)
	now := d.now()
	d.mu.Lock()
	if e := d.cache[key]; e != nil && now.Before(e.expires) {
		d.mu.Unlock()
		switch {
		case !e.known:
			d.count(resultNegative)
			return nil, ErrUnknownUser
		case e.stale:
			d.count(resultStale)
		default:
			d.count(resultHit)
		}
		return e.groups, nil
	}
	f := d.flights[key]
	if f == nil {
		f = &flight{done: make(chan struct{})}
		d.flights[key] = f
		go d.fly(key, user, f)
	}
	d.mu.Unlock()

	timer := time.NewTimer(d.s.Timeout)
	defer timer.Stop()
	select {
	case <-f.done:
		switch {
		case f.err == nil && f.stale:
			d.count(resultStale)
		case f.err == nil:
			d.count(resultMiss)
		case errors.Is(f.err, ErrUnknownUser):
			d.count(resultNegative)
		default:
			d.count(resultError)
		}
		return f.groups, f.err
	case <-timer.C:
	case <-ctx.Done():
	}
	// Too slow: the lookup goes on in the background and fills the cache.
	if g, ok := d.lastKnown(key); ok {
		d.count(resultStale)
		return g, nil
	}
	d.count(resultError)
	return nil, fmt.Errorf("%w: no answer within %v", ErrUnavailable, d.s.Timeout)
}

// fly asks the directory for user's groups and records the answer, or
// serves the last known one when the directory cannot be asked.
func (d *Directory) fly(key, user string, f *flight) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*d.s.Timeout)
	groups, err := d.fetch(ctx, user)
	cancel()
	now := d.now()
	d.mu.Lock()
	e := d.cache[key]
	switch {
	case err == nil:
		d.store(key, &entry{groups: groups, known: true, fetched: now, expires: now.Add(d.s.CacheTTL)})
		f.groups = groups
	case errors.Is(err, ErrUnknownUser):
		d.store(key, &entry{fetched: now, expires: now.Add(d.s.NegativeTTL)})
		f.err = ErrUnknownUser
	case e != nil && e.known && now.Sub(e.fetched) < d.s.MaxStale:
		// Keep the last known memberships; retry later, not on every call.
		e.stale = true
		e.expires = now.Add(d.s.RetryAfter)
		f.groups, f.stale = e.groups, true
	default:
		f.err = fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	delete(d.flights, key)
	d.mu.Unlock()
	close(f.done)
}

// store puts e in the cache, evicting a random entry when it is full.
// d.mu is held.
func (d *Directory) store(key string, e *entry) {
	if _, ok := d.cache[key]; !ok && len(d.cache) >= d.s.CacheSize {
		for k := range d.cache {
			delete(d.cache, k)
			break
		}
	}
	d.cache[key] = e
}

// lastKnown returns user's last known memberships if still within
// MaxStale.
func (d *Directory) lastKnown(key string) ([]string, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	e := d.cache[key]
	if e == nil || !e.known || d.now().Sub(e.fetched) >= d.s.MaxStale {
		return nil, false
	}
	return e.groups, true
}

// Cached returns what the cache holds for user, without any I/O: the last
// known groups (possibly expired, never older than MaxStale) and true, or
// nil and true for a user known to be unknown, or nil and false when the
// directory has not been asked (call Groups). The caller must not modify
// the slice.
func (d *Directory) Cached(user string) ([]string, bool) {
	key := strings.ToLower(user)
	d.mu.Lock()
	defer d.mu.Unlock()
	e := d.cache[key]
	if e == nil {
		return nil, false
	}
	if !e.known {
		return nil, d.now().Before(e.expires)
	}
	if d.now().Sub(e.fetched) >= d.s.MaxStale {
		return nil, false
	}
	return e.groups, true
}

// Stats are a Directory's counters since New.
type Stats struct {
	// Hits are lookups answered from fresh cached memberships.
	Hits uint64
	// Misses are lookups the directory answered with memberships.
	Misses uint64
	// Negative are lookups of users the directory does not hold (asked or
	// cached).
	Negative uint64
	// Stale are lookups answered with last known memberships because the
	// directory could not be asked.
	Stale uint64
	// Errors are lookups that failed with nothing known.
	Errors uint64
	// Entries is the number of users cached.
	Entries int
	// Up is true when the last exchange with the directory succeeded.
	Up bool
	// LastContact is when the directory last answered; zero: never.
	LastContact time.Time
}

// Stats returns the Directory's counters.
func (d *Directory) Stats() Stats {
	st := Stats{
		Hits:     d.counts[resultHit].Load(),
		Misses:   d.counts[resultMiss].Load(),
		Negative: d.counts[resultNegative].Load(),
		Stale:    d.counts[resultStale].Load(),
		Errors:   d.counts[resultError].Load(),
		Entries:  d.entries(),
		Up:       d.up.Load(),
	}
	if ns := d.lastContact.Load(); ns != 0 {
		st.LastContact = time.Unix(0, ns)
	}
	return st
}

func (d *Directory) entries() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.cache)
}

// contactAge is how long since the directory last answered (since New
// when it never has).
func (d *Directory) contactAge() time.Duration {
	t := d.started
	if ns := d.lastContact.Load(); ns != 0 {
		t = time.Unix(0, ns)
	}
	return d.now().Sub(t)
}

// sortedGroups returns names sorted and without duplicates.
func sortedGroups(names []string) []string {
	slices.Sort(names)
	return slices.Compact(names)
}
