package dnsfilter

import (
	"hash/maphash"
	"net/netip"
	"sync"
)

// limiter is a per-client token bucket. Buckets of idle clients are
// forgotten by sweep; the number of buckets is bounded.
type limiter struct {
	rate   float64 // tokens per nanosecond
	burst  float64
	exempt []netip.Prefix
	seed   maphash.Seed
	shards [16]limiterShard
}

type limiterShard struct {
	mu      sync.Mutex
	buckets map[netip.Addr]*bucket
}

type bucket struct {
	tokens float64
	last   int64
}

// maxBuckets bounds the clients remembered per shard.
const maxBuckets = 1 << 14

func newLimiter(perSecond float64, burst int, exempt []netip.Prefix) *limiter {
	if perSecond <= 0 {
		return nil
	}
	l := &limiter{rate: perSecond / 1e9, burst: float64(burst), exempt: exempt, seed: maphash.MakeSeed()}
	for i := range l.shards {
		l.shards[i].buckets = make(map[netip.Addr]*bucket)
	}
	return l
}

// allow takes a token for client at now (Unix ns) and reports whether
// there was one.
func (l *limiter) allow(client netip.Addr, now int64) bool {
	if l == nil {
		return true
	}
	for _, p := range l.exempt {
		if p.Contains(client) {
			return true
		}
	}
	b16 := client.As16()
	sh := &l.shards[maphash.Bytes(l.seed, b16[:])%uint64(len(l.shards))]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	b, ok := sh.buckets[client]
	if !ok {
		if len(sh.buckets) >= maxBuckets {
			l.sweepShard(sh, now)
			if len(sh.buckets) >= maxBuckets {
				// Still full of active clients: forget one at random.
				for k := range sh.buckets {
					delete(sh.buckets, k)
					break
				}
			}
		}
		b = &bucket{tokens: l.burst, last: now}
		sh.buckets[client] = b
	}
	b.tokens += float64(now-b.last) * l.rate
	if b.tokens > l.burst {
		b.tokens = l.burst
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// sweep forgets the clients whose bucket has refilled.
func (l *limiter) sweep(now int64) {
	if l == nil {
		return
	}
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		l.sweepShard(sh, now)
		sh.mu.Unlock()
	}
}

func (l *limiter) sweepShard(sh *limiterShard, now int64) {
	for k, b := range sh.buckets {
		if b.tokens+float64(now-b.last)*l.rate >= l.burst {
			delete(sh.buckets, k)
		}
	}
}
