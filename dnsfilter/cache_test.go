package dnsfilter

import (
	"fmt"
	"hash/maphash"
	"sync"
	"testing"
	"time"
)

// checkCache verifies the invariants of every shard: the ring holds
// exactly the mapped slots, each once, with consistent links; free holds
// the other slots; the bounds hold.
func checkCache(t *testing.T, c *cache) {
	t.Helper()
	for n := range c.shards {
		sh := &c.shards[n]
		sh.mu.Lock()
		seen := map[int32]bool{}
		bytes := 0
		if sh.hand >= 0 {
			i := sh.hand
			for {
				if seen[i] {
					t.Fatalf("shard %d: slot %d twice in the ring", n, i)
				}
				seen[i] = true
				s := &sh.slots[i]
				if sh.slots[s.next].prev != i {
					t.Fatalf("shard %d: slot %d: next.prev = %d", n, i, sh.slots[s.next].prev)
				}
				if r, ok := sh.m[s.key]; !ok || r.i != i || r.e != s.e {
					t.Fatalf("shard %d: slot %d (%q) maps to %v, %v", n, i, s.key, r, ok)
				}
				bytes += len(s.e.wire)
				if i = s.next; i == sh.hand {
					break
				}
			}
		}
		if len(seen) != len(sh.m) {
			t.Fatalf("shard %d: %d slots in the ring, %d in the map", n, len(seen), len(sh.m))
		}
		if len(seen)+len(sh.free) != len(sh.slots) {
			t.Fatalf("shard %d: %d in the ring + %d free != %d slots", n, len(seen), len(sh.free), len(sh.slots))
		}
		for _, i := range sh.free {
			if seen[i] || sh.slots[i].e != nil {
				t.Fatalf("shard %d: free slot %d in use", n, i)
			}
		}
		if bytes != sh.bytes {
			t.Fatalf("shard %d: %d bytes counted, %d held", n, sh.bytes, bytes)
		}
		if len(sh.m) > c.maxItems || len(sh.slots) > c.maxItems || (sh.bytes > c.maxBytes && len(sh.m) > 1) {
			t.Fatalf("shard %d: %d entries, %d slots, %d bytes; bounds %d entries, %d bytes", n, len(sh.m), len(sh.slots), sh.bytes, c.maxItems, c.maxBytes)
		}
		sh.mu.Unlock()
	}
}

// shardKeys returns n keys that fall into the same shard of c.
func shardKeys(c *cache, n int) []string {
	var keys []string
	var want uint64
	for i := 0; len(keys) < n; i++ {
		k := fmt.Sprintf("key-%d", i)
		h := maphash.String(c.seed, k) & c.mask
		if len(keys) == 0 {
			want = h
		}
		if h == want {
			keys = append(keys, k)
		}
	}
	return keys
}

func testEntry(size int, stored, expires int64) *entry {
	return &entry{wire: make([]byte, size), stored: stored, expires: expires}
}

func TestCacheBounds(t *testing.T) {
	now := time.Now().UnixNano()
	// 8 shards of 64.
	c := newCache(64*8, int64(time.Hour))
	if c.mask != 7 || c.maxItems != 64 {
		t.Fatalf("newCache(512): %d shards of %d, want 8 of 64", c.mask+1, c.maxItems)
	}
	for i := range 10_000 {
		c.put(fmt.Sprintf("k%d", i), testEntry(100, now, now+int64(time.Hour)))
		if i%1000 == 0 {
			checkCache(t, c)
		}
	}
	checkCache(t, c)
	if n := c.len(); n != 64*8 {
		t.Errorf("len = %d after 10000 insertions, want %d (full)", n, 64*8)
	}
	// Large answers: the byte bound (1 KiB per entry on average) holds.
	for i := range 10_000 {
		c.put(fmt.Sprintf("big%d", i), testEntry(maxCachedAnswer, now, now+int64(time.Hour)))
	}
	checkCache(t, c)
	if n := c.len(); n > 8*8 {
		t.Errorf("len = %d with 8 KiB answers, want at most 8 per shard (64 KiB)", n)
	}
	// Replacing an entry updates the byte count.
	keys := shardKeys(c, 1)
	c.put(keys[0], testEntry(10, now, now+int64(time.Hour)))
	c.put(keys[0], testEntry(20, now, now+int64(time.Hour)))
	checkCache(t, c)
	if e := c.get([]byte(keys[0])); e == nil || len(e.wire) != 20 {
		t.Errorf("get after replacement = %v, want the 20-byte entry", e)
	}
}

// TestCacheSecondChance fills one shard, uses some entries and inserts
// more: the entries in use survive, the others go in insertion order.
func TestCacheSecondChance(t *testing.T) {
	now := time.Now().UnixNano()
	c := newCache(4, int64(time.Hour))
	keys := shardKeys(c, 8)
	fresh := func() *entry { return testEntry(100, now, now+int64(time.Hour)) }
	for _, k := range keys[:4] {
		c.put(k, fresh())
	}
	c.get([]byte(keys[0]))
	c.get([]byte(keys[2]))
	c.put(keys[4], fresh())
	c.put(keys[5], fresh())
	checkCache(t, c)
	for i, want := range []bool{true, false, true, false, true, true} {
		if got := c.get([]byte(keys[i])) != nil; got != want {
			t.Errorf("after two insertions, %s present = %v, want %v", keys[i], got, want)
		}
	}
	// Every entry referenced: an insertion still evicts exactly one.
	c.put(keys[6], fresh())
	checkCache(t, c)
	if n := c.len(); n != 4 {
		t.Errorf("shard holds %d entries, want 4", n)
	}
}

// TestCacheEvictsDeadFirst: an entry too old even for a stale answer goes
// before one in use, even if it was read.
func TestCacheEvictsDeadFirst(t *testing.T) {
	now := time.Now().UnixNano()
	keep := int64(time.Minute)
	c := newCache(2, keep)
	keys := shardKeys(c, 3)
	// The hand reaches the live entry first; both were read.
	c.put(keys[0], testEntry(100, now, now+int64(time.Hour)))
	c.put(keys[1], testEntry(100, now-int64(time.Hour), now-2*keep))
	c.get([]byte(keys[0]))
	c.get([]byte(keys[1]))
	c.put(keys[2], testEntry(100, now, now+int64(time.Hour)))
	if c.get([]byte(keys[1])) != nil || c.get([]byte(keys[0])) == nil {
		t.Errorf("the dead entry was kept, or the live one evicted")
	}
	checkCache(t, c)
}

func TestCacheSweep(t *testing.T) {
	now := time.Now().UnixNano()
	keep := int64(time.Minute)
	c := newCache(10_000, keep)
	for i := range 2000 {
		exp := now + int64(time.Hour)
		if i%2 == 0 {
			exp = now - 2*keep
		}
		c.put(fmt.Sprintf("k%d", i), testEntry(50, now, exp))
	}
	c.sweep(now)
	checkCache(t, c)
	if n := c.len(); n != 1000 {
		t.Errorf("len after sweep = %d, want 1000", n)
	}
	// Freed slots are reused before the slot arrays grow.
	for i := range 1000 {
		c.put(fmt.Sprintf("n%d", i), testEntry(50, now, now+int64(time.Hour)))
	}
	checkCache(t, c)
}

// TestCacheConcurrent exercises get, put and sweep from several
// goroutines (run with -race), then checks the invariants.
func TestCacheConcurrent(t *testing.T) {
	now := time.Now().UnixNano()
	keep := int64(time.Minute)
	c := newCache(64*16, keep)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 5000 {
				k := fmt.Sprintf("k%d", (i*7+g)%3000)
				if c.get([]byte(k)) == nil {
					exp := now + int64(time.Hour)
					if i%5 == 0 {
						exp = now - 2*keep
					}
					c.put(k, testEntry(50+i%900, now, exp))
				}
			}
		})
	}
	wg.Go(func() {
		for range 20 {
			c.sweep(now)
			c.len()
		}
	})
	wg.Wait()
	checkCache(t, c)
}

// TestCacheSmall: a small cache uses fewer shards, so that it holds about
// as many entries as asked for whatever the keys' hashes.
func TestCacheSmall(t *testing.T) {
	now := time.Now().UnixNano()
	for _, tc := range []struct{ size, shards, perShard int }{
		{1, 1, 1}, {2, 1, 2}, {100, 1, 100}, {1000, 8, 125}, {4096, 64, 64}, {100_000, 64, 1562},
	} {
		c := newCache(tc.size, int64(time.Hour))
		if int(c.mask)+1 != tc.shards || c.maxItems != tc.perShard {
			t.Errorf("newCache(%d): %d shards of %d, want %d of %d", tc.size, c.mask+1, c.maxItems, tc.shards, tc.perShard)
		}
	}
	c := newCache(100, int64(time.Hour))
	for i := range 100 {
		c.put(fmt.Sprintf("k%d", i), testEntry(50, now, now+int64(time.Hour)))
	}
	if n := c.len(); n != 100 {
		t.Errorf("a cache of 100 holds %d of 100 entries", n)
	}
	checkCache(t, c)
}
