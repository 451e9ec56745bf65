package dnsfilter

import (
	"encoding/binary"
	"hash/maphash"
	"strings"
	"sync"

	"github.com/miekg/dns"
)

// entry is one cached upstream answer. It never changes once stored.
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

const cacheShards = 64

// cache maps keys to entries, bounded in entries and bytes.
type cache struct {
	seed     maphash.Seed
	shards   [cacheShards]cacheShard
	maxItems int
	maxBytes int
	// keep is how long past expiry an entry stays for stale answers, in
	// nanoseconds.
	keep int64
}

type cacheShard struct {
	mu    sync.RWMutex
	m     map[string]*entry
	bytes int
}

func newCache(size int, keep int64) *cache {
	c := &cache{seed: maphash.MakeSeed(), keep: keep}
	c.maxItems = max(size/cacheShards, 1)
	// Answers average a few hundred bytes; allow 1 KiB each on average.
	c.maxBytes = c.maxItems * 1024
	for i := range c.shards {
		c.shards[i].m = make(map[string]*entry)
	}
	return c
}

func (c *cache) shard(key []byte) *cacheShard {
	return &c.shards[maphash.Bytes(c.seed, key)%cacheShards]
}

// get returns the entry for key, fresh or not, or nil.
func (c *cache) get(key []byte) *entry {
	sh := c.shard(key)
	sh.mu.RLock()
	e := sh.m[string(key)]
	sh.mu.RUnlock()
	return e
}

func (c *cache) put(key string, e *entry) {
	sh := c.shard([]byte(key))
	sh.mu.Lock()
	if old, ok := sh.m[key]; ok {
		sh.bytes -= len(old.wire)
	}
	sh.m[key] = e
	sh.bytes += len(e.wire)
	for len(sh.m) > c.maxItems || sh.bytes > c.maxBytes {
		// Map iteration starts at a random place: an arbitrary victim,
		// preferably one that is past any use.
		var victim string
		for k, v := range sh.m {
			if k == key {
				continue
			}
			victim = k
			if v.expires+c.keep < e.stored {
				break
			}
		}
		if victim == "" {
			break
		}
		sh.bytes -= len(sh.m[victim].wire)
		delete(sh.m, victim)
	}
	sh.mu.Unlock()
}

// sweep drops the entries too old even for stale answers.
func (c *cache) sweep(now int64) {
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.Lock()
		for k, e := range sh.m {
			if e.expires+c.keep < now {
				sh.bytes -= len(e.wire)
				delete(sh.m, k)
			}
		}
		sh.mu.Unlock()
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
