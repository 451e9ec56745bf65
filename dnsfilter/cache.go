package dnsfilter

import (
	"encoding/binary"
	"hash/maphash"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/miekg/dns"
)

// entry is one cached upstream answer. It never changes once stored, but
// for ref.
type entry struct {
	// wire is the packed answer: ID 0, the question in lower case, no OPT
	// record. Answers are served by copying it and patching ID, flags,
	// question case and TTLs.
	wire []byte
	// ttlOff are the offsets of the TTLs in wire; ttls their values when
	// stored.
	ttlOff []uint16
	ttls   []uint32
	// stored and expires are Unix nanoseconds.
	stored, expires int64
	// targets are the CNAME targets of the answer chain, lower case,
	// without the final dot.
	targets []string
	// ref is the cache's reference bit: set by hits (under the shard's
	// read lock), cleared by the eviction hand (under its write lock).
	// It lives here rather than in the slot so that a hit touches only
	// the map and the entry, which the answer reads anyway.
	ref atomic.Bool
}

// newEntry builds an entry from an upstream answer m to question name
// (lower case, fully qualified). It returns nil when the answer must not
// be used, and whether it may be cached (a negative answer without SOA has
// no TTL to honour). m is modified.
func newEntry(m *dns.Msg, name string, s *settings, now int64) (*entry, bool) {
	m.Id = 0
	m.Response = true
	m.Authoritative = false
	m.Truncated = false
	m.RecursionAvailable = true
	m.Compress = true
	if len(m.Question) != 1 {
		return nil, false
	}
	m.Question[0].Name = name
	extra := m.Extra[:0]
	for _, rr := range m.Extra {
		switch rr.Header().Rrtype {
		case dns.TypeOPT, dns.TypeTSIG, dns.TypeSIG:
			continue
		}
		extra = append(extra, rr)
	}
	m.Extra = extra
	e := &entry{stored: now}
	ttl := uint32(1<<31 - 1)
	clamp := func(rr dns.RR) uint32 {
		h := rr.Header()
		if strings.EqualFold(h.Name, name) {
			h.Name = name
		}
		t := h.Ttl
		if t > s.maxTTL {
			t = s.maxTTL
		}
		if t < s.minTTL {
			t = s.minTTL
		}
		h.Ttl = t
		return t
	}
	for _, rr := range m.Answer {
		if t := clamp(rr); t < ttl {
			ttl = t
		}
		if c, ok := rr.(*dns.CNAME); ok {
			e.targets = append(e.targets, strings.TrimSuffix(strings.ToLower(c.Target), "."))
		}
	}
	negative := len(m.Answer) == 0 || m.Rcode == dns.RcodeNameError
	haveSOA := false
	for _, rr := range m.Ns {
		t := clamp(rr)
		if soa, ok := rr.(*dns.SOA); ok && negative {
			// RFC 2308: a negative answer lives min(SOA TTL, MINIMUM).
			if soa.Minttl < t {
				t = soa.Minttl
			}
			if t > s.negativeTTL {
				t = s.negativeTTL
			}
			soa.Hdr.Ttl = t
			if !haveSOA || t < ttl {
				ttl = t
			}
			haveSOA = true
		}
	}
	for _, rr := range m.Extra {
		clamp(rr)
	}
	// Without an SOA a negative answer has no TTL to honour (RFC 2308
	// section 5): it is passed on, not kept.
	cacheable := !(negative && !haveSOA) && (m.Rcode == dns.RcodeSuccess || m.Rcode == dns.RcodeNameError)
	wire, err := m.Pack()
	if err != nil {
		return nil, false
	}
	offs, err := ttlOffsets(wire)
	if err != nil {
		return nil, false
	}
	if len(wire) > maxCachedAnswer {
		cacheable = false
	}
	e.wire = wire
	e.ttlOff = offs
	e.ttls = make([]uint32, len(offs))
	for i, o := range offs {
		e.ttls[i] = binary.BigEndian.Uint32(wire[o:])
	}
	if !cacheable {
		ttl = 0
	}
	e.expires = now + int64(ttl)*1e9
	return e, cacheable
}

// maxCachedAnswer bounds the size of one cached answer.
const maxCachedAnswer = 8192

// cacheShards is the largest number of independently locked parts of the
// cache; a small cache has fewer, each of at least minShardItems entries,
// so that it holds about as many entries as asked for.
const (
	cacheShards   = 64
	minShardItems = 64
)

// clockScan bounds how many recently used entries the eviction hand spares
// before it evicts the one it is on, so that an insertion into a full
// cache does a bounded amount of work whatever the access pattern.
const clockScan = 8

// sweepChunk is how many slots the sweep examines per lock acquisition.
const sweepChunk = 256

// cache maps keys to entries, bounded in entries and bytes. It is split
// into shards, each with its own lock, map and CLOCK ring: a hit takes a
// read lock and sets the entry's reference bit; an insertion into a full
// shard evicts in constant time, the hand sparing at most clockScan
// entries used since it last passed (second chance).
type cache struct {
	seed   maphash.Seed
	shards [cacheShards]cacheShard
	// mask selects a shard from a hash: the number of shards in use,
	// a power of two, minus one.
	mask     uint64
	maxItems int
	maxBytes int
	// keep is how long past expiry an entry stays for stale answers, in
	// nanoseconds.
	keep int64
}

// cacheShard is one part of the cache. m maps each key to its entry and
// slot; the occupied slots form a ring (next, prev) that the hand walks;
// free lists the slots to reuse. len(slots) never exceeds the shard's
// item bound.
type cacheShard struct {
	mu    sync.RWMutex
	m     map[string]cacheRef
	slots []cacheSlot
	free  []int32
	hand  int32 // -1 when the ring is empty
	bytes int
	// The padding keeps the locks of neighbouring shards off one cache
	// line.
	_ [64]byte
}

// cacheRef is a map value: the entry and its slot.
type cacheRef struct {
	e *entry
	i int32
}

// cacheSlot is one place in a shard's ring.
type cacheSlot struct {
	key        string
	e          *entry
	next, prev int32
}

func newCache(size int, keep int64) *cache {
	c := &cache{seed: maphash.MakeSeed(), keep: keep}
	n := cacheShards
	for n > 1 && size/n < minShardItems {
		n /= 2
	}
	c.mask = uint64(n - 1)
	c.maxItems = max(size/n, 1)
	// Answers average a few hundred bytes; allow 1 KiB each on average.
	c.maxBytes = c.maxItems * 1024
	for i := range c.shards {
		c.shards[i].m = make(map[string]cacheRef)
		c.shards[i].hand = -1
	}
	return c
}

func (c *cache) shard(key []byte) *cacheShard {
	return &c.shards[maphash.Bytes(c.seed, key)&c.mask]
}

// get returns the entry for key, fresh or not, or nil.
func (c *cache) get(key []byte) *entry {
	sh := c.shard(key)
	sh.mu.RLock()
	e := sh.m[string(key)].e
	if e != nil && !e.ref.Load() {
		e.ref.Store(true)
	}
	sh.mu.RUnlock()
	return e
}

// put stores e under key, evicting as many entries as the bounds require
// (one, unless e is larger than those it displaces).
func (c *cache) put(key string, e *entry) {
	sh := c.shard([]byte(key))
	now := e.stored
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if r, ok := sh.m[key]; ok {
		s := &sh.slots[r.i]
		sh.bytes += len(e.wire) - len(s.e.wire)
		s.e = e
		sh.m[key] = cacheRef{e, r.i}
		e.ref.Store(true)
		for sh.bytes > c.maxBytes && len(sh.m) > 1 {
			sh.evict(now, c.keep, r.i)
		}
		return
	}
	if len(sh.m) >= c.maxItems {
		sh.evict(now, c.keep, -1)
	}
	var i int32
	if n := len(sh.free); n > 0 {
		i = sh.free[n-1]
		sh.free = sh.free[:n-1]
	} else {
		sh.slots = append(sh.slots, cacheSlot{})
		i = int32(len(sh.slots) - 1)
	}
	s := &sh.slots[i]
	s.key, s.e = key, e
	e.ref.Store(false)
	sh.link(i)
	sh.m[key] = cacheRef{e, i}
	sh.bytes += len(e.wire)
	for sh.bytes > c.maxBytes && len(sh.m) > 1 {
		sh.evict(now, c.keep, i)
	}
}

// link inserts slot i into the ring just behind the hand, so that the
// hand reaches it last.
func (sh *cacheShard) link(i int32) {
	s := &sh.slots[i]
	if sh.hand < 0 {
		s.next, s.prev = i, i
		sh.hand = i
		return
	}
	h := &sh.slots[sh.hand]
	s.next, s.prev = sh.hand, h.prev
	sh.slots[h.prev].next = i
	h.prev = i
}

// remove takes slot i out of the ring and the map and frees it.
func (sh *cacheShard) remove(i int32) {
	s := &sh.slots[i]
	if s.next == i {
		sh.hand = -1
	} else {
		sh.slots[s.prev].next = s.next
		sh.slots[s.next].prev = s.prev
		if sh.hand == i {
			sh.hand = s.next
		}
	}
	delete(sh.m, s.key)
	sh.bytes -= len(s.e.wire)
	s.key, s.e = "", nil
	s.next, s.prev = -1, -1
	sh.free = append(sh.free, i)
}

// evict removes one entry other than slot keep: the first under the hand
// that was not used since the hand last passed or is too old even for a
// stale answer, or else the one the hand reaches after sparing clockScan
// entries. The ring must hold an entry other than keep.
func (sh *cacheShard) evict(now, keepNs int64, keep int32) {
	spared := 0
	for {
		i := sh.hand
		s := &sh.slots[i]
		if i == keep {
			sh.hand = s.next
			continue
		}
		if spared < clockScan && s.e.ref.Load() && s.e.expires+keepNs >= now {
			s.e.ref.Store(false)
			sh.hand = s.next
			spared++
			continue
		}
		sh.remove(i)
		return
	}
}

// sweep drops the entries too old even for stale answers. It holds each
// shard's lock for at most sweepChunk slots at a time.
func (c *cache) sweep(now int64) {
	for i := range c.shards {
		sh := &c.shards[i]
		for start := 0; ; start += sweepChunk {
			sh.mu.Lock()
			if start >= len(sh.slots) {
				sh.mu.Unlock()
				break
			}
			end := min(start+sweepChunk, len(sh.slots))
			for j := start; j < end; j++ {
				if e := sh.slots[j].e; e != nil && e.expires+c.keep < now {
					sh.remove(int32(j))
				}
			}
			sh.mu.Unlock()
		}
	}
}

func (c *cache) len() int {
	n := 0
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.RLock()
		n += len(sh.m)
		sh.mu.RUnlock()
	}
	return n
}

// appendAnswer appends e as the answer to q: ID, flags and question case
// from the query, TTLs aged since storage (or ttl when stale) and capped to
// capTTL, and an OPT record when the query had one.
func (e *entry) appendAnswer(out []byte, pkt []byte, q *query, now int64, stale bool, staleTTL, capTTL uint32, limit int) []byte {
	start := len(out)
	out = append(out, e.wire...)
	msg := out[start:]
	binary.BigEndian.PutUint16(msg, q.id)
	flags := binary.BigEndian.Uint16(msg[2:])
	flags &^= flagRD | flagCD | flagTC
	if !q.do && q.flags&flagAD == 0 {
		flags &^= flagAD
	}
	flags |= flagQR | flagRA | q.flags&(flagRD|flagCD)
	binary.BigEndian.PutUint16(msg[2:], flags)
	copy(msg[headerLen:headerLen+q.nameLen], pkt[headerLen:headerLen+q.nameLen])
	elapsed := uint32((now - e.stored) / 1e9)
	for i, o := range e.ttlOff {
		t := e.ttls[i]
		switch {
		case stale:
			t = staleTTL
		case t > elapsed:
			t -= elapsed
		default:
			t = 0
		}
		if t > capTTL {
			t = capTTL
		}
		binary.BigEndian.PutUint32(msg[o:], t)
	}
	if q.edns {
		ar := binary.BigEndian.Uint16(msg[10:])
		binary.BigEndian.PutUint16(msg[10:], ar+1)
		code := -1
		if stale {
			code = int(dns.ExtendedErrorCodeStaleAnswer)
		}
		out = appendOPT(out, q, int(flags&0xF), code, "")
	}
	if len(out)-start > limit {
		// Too large for the client's UDP size: header and question with
		// TC set, so that it retries over TCP.
		out = out[:start+q.qEnd]
		msg = out[start:]
		binary.BigEndian.PutUint16(msg[2:], flags|flagTC)
		binary.BigEndian.PutUint16(msg[6:], 0)
		binary.BigEndian.PutUint16(msg[8:], 0)
		binary.BigEndian.PutUint16(msg[10:], 0)
		if q.edns {
			binary.BigEndian.PutUint16(msg[10:], 1)
			out = appendOPT(out, q, int(flags&0xF), -1, "")
		}
	}
	return out
}
