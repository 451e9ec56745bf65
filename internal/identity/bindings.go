package identity

import (
	"encoding/binary"
	"log/slog"
	"math/bits"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// MaxSharedAfter is the largest SharedAfter (the slots kept per address).
const MaxSharedAfter = 16

// Binding is one authentication of a user from an address: what Bind
// records, OnBind reports and Apply takes from another replica.
type Binding struct {
	// Addr is the client address (IPv4-mapped addresses are held as
	// IPv4; zones are dropped).
	Addr netip.Addr
	// User is the authenticated user name (compared case-insensitively).
	User string
	// At is when the user authenticated.
	At time.Time
}

// LogValue keeps bindings out of logs: a Binding given to slog prints as
// "[binding]", never its address or user.
func (Binding) LogValue() slog.Value { return slog.StringValue("[binding]") }

// Options configures Bindings. The zero value holds the defaults.
type Options struct {
	// TTL is how long an address stays tied to a user after that user's
	// last authentication from it. Zero: 30 minutes ([identity]
	// binding_ttl).
	TTL time.Duration
	// SharedAfter is the number of distinct users authenticated from one
	// address within TTL that make it shared: User then answers no one.
	// Zero: 2 ([identity] shared_after); 1: every address is shared;
	// at most MaxSharedAfter (larger values are held as that).
	SharedAfter int
	// MaxAddresses bounds the addresses kept; beyond it the address bound
	// least recently is forgotten (counted in Stats.Evicted). Zero: 65536.
	MaxAddresses int
	// OnBind, when set, is called with every binding Bind records (not
	// those given to Apply), after the lock is released: the hook through
	// which a shared store tells other replicas. It must not block.
	OnBind func(Binding)
}

// Bindings maps addresses to the users authenticated from them. It is
// safe for concurrent use; User does not allocate.
type Bindings struct {
	ttl         int64
	sharedAfter int
	onBind      func(Binding)
	shards      []shard
	mask        uint64
	evicted     atomic.Uint64
}

// shard is one stripe of the map: its own lock, map and recency list.
type shard struct {
	mu   sync.RWMutex
	m    map[netip.Addr]*entry
	head entry // sentinel of the list, most recently bound first
	max  int
}

// entry is one address: the most recent distinct users (at most
// sharedAfter), each with its last authentication.
type entry struct {
	addr       netip.Addr
	users      [MaxSharedAfter]string
	at         [MaxSharedAfter]int64 // nanoseconds since the epoch; 0 = empty slot
	last       int64
	prev, next *entry
}

// NewBindings returns empty Bindings.
func NewBindings(o Options) *Bindings {
	if o.TTL <= 0 {
		o.TTL = 30 * time.Minute
	}
	if o.SharedAfter <= 0 {
		o.SharedAfter = 2
	}
	o.SharedAfter = min(o.SharedAfter, MaxSharedAfter)
	if o.MaxAddresses <= 0 {
		o.MaxAddresses = 65536
	}
	n := 1
	if o.MaxAddresses >= 1024 {
		n = 16
	}
	b := &Bindings{ttl: int64(o.TTL), sharedAfter: o.SharedAfter, onBind: o.OnBind,
		shards: make([]shard, n), mask: uint64(n - 1)}
	for i := range b.shards {
		s := &b.shards[i]
		s.m = map[netip.Addr]*entry{}
		s.head.prev, s.head.next = &s.head, &s.head
		s.max = o.MaxAddresses / n
	}
	return b
}

// normalize holds IPv4-mapped addresses as IPv4 and drops zones.
func normalize(a netip.Addr) netip.Addr { return a.Unmap().WithZone("") }

func (b *Bindings) shard(a netip.Addr) *shard {
	if b.mask == 0 {
		return &b.shards[0]
	}
	s := a.As16()
	hi := binary.LittleEndian.Uint64(s[:8])
	lo := binary.LittleEndian.Uint64(s[8:])
	// The top bits of a product by an odd constant depend on every bit.
	h := (lo ^ bits.RotateLeft64(hi, 32)) * 0x9e3779b97f4a7c15
	return &b.shards[(h>>60)&b.mask]
}

// nanos converts t to nanoseconds since the epoch (at least 1, so that
// 0 marks an empty slot).
func nanos(t time.Time) int64 { return max(t.UnixNano(), 1) }

// Bind records that user authenticated from addr at now, and reports it
// to OnBind. An invalid address or an empty user is ignored.
func (b *Bindings) Bind(addr netip.Addr, user string, now time.Time) {
	x := Binding{Addr: normalize(addr), User: user, At: now}
	if b.apply(x) && b.onBind != nil {
		b.onBind(x)
	}
}

// Apply records a binding learnt from elsewhere (another replica) as Bind
// does, without calling OnBind. A binding older than TTL at the time of
// the latest one held for the address changes nothing it answers.
func (b *Bindings) Apply(x Binding) {
	x.Addr = normalize(x.Addr)
	b.apply(x)
}

func (b *Bindings) apply(x Binding) bool {
	if !x.Addr.IsValid() || x.User == "" {
		return false
	}
	at := nanos(x.At)
	s := b.shard(x.Addr)
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.m[x.Addr]
	if e == nil {
		s.expire(at, b.ttl)
		if len(s.m) >= s.max {
			s.remove(s.head.prev)
			b.evicted.Add(1)
		}
		e = &entry{addr: x.Addr}
		s.m[x.Addr] = e
	} else {
		e.prev.next, e.next.prev = e.next, e.prev
	}
	e.prev, e.next = &s.head, s.head.next
	s.head.next.prev = e
	s.head.next = e
	e.last = max(e.last, at)
	slot, oldest := -1, 0
	for i := 0; i < b.sharedAfter; i++ {
		if e.at[i] != 0 && strings.EqualFold(e.users[i], x.User) {
			slot = i
			break
		}
		if e.at[i] < e.at[oldest] {
			oldest = i
		}
	}
	if slot >= 0 {
		e.at[slot] = max(e.at[slot], at)
	} else if at > e.at[oldest] {
		e.users[oldest], e.at[oldest] = x.User, at
	}
	return true
}

// expire forgets, from the least recently bound end, addresses whose last
// binding ended by now (a few at a time).
func (s *shard) expire(now, ttl int64) {
	for i := 0; i < 8; i++ {
		e := s.head.prev
		if e == &s.head || e.last+ttl > now {
			return
		}
		s.remove(e)
	}
}

func (s *shard) remove(e *entry) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
	delete(s.m, e.addr)
}

// User returns the user addr is bound to at now: the user last
// authenticated from it within TTL, while fewer than SharedAfter distinct
// users authenticated from it within TTL. Otherwise (nobody, or a shared
// address) ok is false. It does not allocate.
func (b *Bindings) User(addr netip.Addr, now time.Time) (user string, ok bool) {
	addr = normalize(addr)
	if !addr.IsValid() {
		return "", false
	}
	u := nanos(now)
	s := b.shard(addr)
	s.mu.RLock()
	defer s.mu.RUnlock()
	e := s.m[addr]
	if e == nil {
		return "", false
	}
	live, best := 0, -1
	for i := 0; i < b.sharedAfter; i++ {
		if at := e.at[i]; at != 0 && at <= u && u-at < b.ttl {
			live++
			if best < 0 || at > e.at[best] {
				best = i
			}
		}
	}
	if live == 0 || live >= b.sharedAfter {
		return "", false
	}
	return e.users[best], true
}

// BindingStats describes Bindings for metrics. It never names an address
// or a user.
type BindingStats struct {
	// Addresses is the number of addresses held (expired ones included
	// until they are evicted).
	Addresses int
	// Evicted counts addresses forgotten because MaxAddresses was reached.
	Evicted uint64
}

// Stats returns the current figures.
func (b *Bindings) Stats() BindingStats {
	st := BindingStats{Evicted: b.evicted.Load()}
	for i := range b.shards {
		s := &b.shards[i]
		s.mu.RLock()
		st.Addresses += len(s.m)
		s.mu.RUnlock()
	}
	return st
}
