package negotiate

import (
	"crypto/sha256"
	"encoding/binary"
	"sync"
	"time"

	"github.com/jcmturner/gokrb5/v8/messages"
	"github.com/jcmturner/gokrb5/v8/types"
)

// replayCache remembers authenticators until they fall out of the clock
// skew (after which the skew check refuses them anyway). Keys are hashes,
// so an entry costs about 50 bytes whatever the names.
type replayCache struct {
	mu      sync.Mutex
	max     int
	seen    map[[16]byte]struct{}
	queue   []replayEntry // insertion order
	head    int
	evicted uint64
}

type replayEntry struct {
	key     [16]byte
	expires time.Time
}

func newReplayCache(max int) *replayCache {
	return &replayCache{max: max, seen: make(map[[16]byte]struct{})}
}

// replayKey identifies an authenticator as RFC 4120 §3.2.3 does: client,
// server, and the client's time to the microsecond.
func replayKey(t *messages.Ticket, a *types.Authenticator) [16]byte {
	h := sha256.New()
	var b [8]byte
	put := func(s string) {
		binary.BigEndian.PutUint64(b[:], uint64(len(s)))
		h.Write(b[:])
		h.Write([]byte(s))
	}
	put(t.SName.PrincipalNameString())
	put(t.Realm)
	put(a.CName.PrincipalNameString())
	put(a.CRealm)
	binary.BigEndian.PutUint64(b[:], uint64(a.CTime.Unix()))
	h.Write(b[:])
	binary.BigEndian.PutUint64(b[:], uint64(a.Cusec))
	h.Write(b[:])
	var k [16]byte
	copy(k[:], h.Sum(nil))
	return k
}

// add records key until expires and reports whether it was new.
func (c *replayCache) add(key [16]byte, expires, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.head < len(c.queue) && c.queue[c.head].expires.Before(now) {
		c.pop()
	}
	if _, ok := c.seen[key]; ok {
		return false
	}
	for len(c.seen) >= c.max && c.head < len(c.queue) {
		c.pop()
		c.evicted++
	}
	c.seen[key] = struct{}{}
	c.queue = append(c.queue, replayEntry{key, expires})
	return true
}

// pop forgets the oldest entry. c.mu is held.
func (c *replayCache) pop() {
	delete(c.seen, c.queue[c.head].key)
	c.queue[c.head] = replayEntry{}
	c.head++
	if c.head > 1024 && c.head > len(c.queue)/2 {
		c.queue = append(c.queue[:0], c.queue[c.head:]...)
		c.head = 0
	}
}

func (c *replayCache) stats() (int, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen), c.evicted
}
