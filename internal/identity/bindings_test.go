package identity

import (
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 17, 7, 0, 0, 0, time.UTC)

func mustUser(t *testing.T, b *Bindings, addr string, now time.Time, want string, wantOK bool) {
	t.Helper()
	got, ok := b.User(netip.MustParseAddr(addr), now)
	if got != want || ok != wantOK {
		t.Errorf("User(%s, %v) = %q, %v; want %q, %v", addr, now.Sub(t0), got, ok, want, wantOK)
	}
}

func TestBindingsOneUserThenShared(t *testing.T) {
	b := NewBindings(Options{})
	a := netip.MustParseAddr("10.1.2.3")
	mustUser(t, b, "10.1.2.3", t0, "", false)
	b.Bind(a, "alice", t0)
	mustUser(t, b, "10.1.2.3", t0, "alice", true)
	mustUser(t, b, "::ffff:10.1.2.3", t0.Add(time.Minute), "alice", true)
	mustUser(t, b, "10.1.2.4", t0, "", false)
	// alice again, other case: still one user.
	b.Bind(a, "ALICE", t0.Add(10*time.Minute))
	mustUser(t, b, "10.1.2.3", t0.Add(11*time.Minute), "alice", true)
	// bob at shift change: shared (default shared_after = 2).
	b.Bind(a, "bob", t0.Add(20*time.Minute))
	mustUser(t, b, "10.1.2.3", t0.Add(21*time.Minute), "", false)
	// alice's last authentication (10m) plus the ttl (30m): bob alone.
	mustUser(t, b, "10.1.2.3", t0.Add(39*time.Minute), "", false)
	mustUser(t, b, "10.1.2.3", t0.Add(40*time.Minute), "bob", true)
	// bob's binding ends 30m after his last authentication.
	mustUser(t, b, "10.1.2.3", t0.Add(50*time.Minute-time.Nanosecond), "bob", true)
	mustUser(t, b, "10.1.2.3", t0.Add(50*time.Minute), "", false)
}

func TestBindingsSharedAfter(t *testing.T) {
	b := NewBindings(Options{SharedAfter: 3, TTL: time.Hour})
	a := netip.MustParseAddr("2001:db8::7")
	b.Bind(a, "alice", t0)
	b.Bind(a, "bob", t0.Add(time.Minute))
	// Two users, fewer than 3: the address follows the last one.
	mustUser(t, b, "2001:db8::7", t0.Add(2*time.Minute), "bob", true)
	b.Bind(a, "alice", t0.Add(3*time.Minute))
	mustUser(t, b, "2001:db8::7", t0.Add(4*time.Minute), "alice", true)
	b.Bind(a, "carol", t0.Add(5*time.Minute))
	mustUser(t, b, "2001:db8::7", t0.Add(6*time.Minute), "", false)
	// A fourth user replaces the oldest slot (bob); still shared.
	b.Bind(a, "dave", t0.Add(7*time.Minute))
	mustUser(t, b, "2001:db8::7", t0.Add(8*time.Minute), "", false)
	// bob's and then alice's hour ends: carol and dave remain, 2 < 3.
	mustUser(t, b, "2001:db8::7", t0.Add(63*time.Minute), "dave", true)
	// Zones do not make another address.
	mustUser(t, b, "2001:db8::7%eth0", t0.Add(63*time.Minute), "dave", true)
	mustUser(t, b, "2001:db8::8", t0.Add(63*time.Minute), "", false)

	one := NewBindings(Options{SharedAfter: 1})
	one.Bind(a, "alice", t0)
	mustUser(t, one, "2001:db8::7", t0, "", false)
}

func TestBindingsIgnoresBadInput(t *testing.T) {
	b := NewBindings(Options{})
	b.Bind(netip.Addr{}, "alice", t0)
	b.Bind(netip.MustParseAddr("10.0.0.1"), "", t0)
	if st := b.Stats(); st.Addresses != 0 {
		t.Errorf("Stats after invalid binds = %+v", st)
	}
	if u, ok := b.User(netip.Addr{}, t0); ok || u != "" {
		t.Errorf("User(invalid) = %q, %v", u, ok)
	}
	// A binding from the future (a replica's clock ahead) does not
	// answer yet.
	b.Bind(netip.MustParseAddr("10.0.0.1"), "alice", t0.Add(time.Minute))
	mustUser(t, b, "10.0.0.1", t0, "", false)
}

func TestBindingsEviction(t *testing.T) {
	for _, max := range []int{10, 2048} {
		t.Run(fmt.Sprint(max), func(t *testing.T) {
			b := NewBindings(Options{MaxAddresses: max})
			n := max * 3
			for i := range n {
				a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
				b.Bind(a, "u", t0.Add(time.Duration(i)*time.Millisecond))
			}
			st := b.Stats()
			if st.Addresses > max || st.Addresses < max*9/10 {
				t.Errorf("Stats = %+v, want about %d addresses, at most %d", st, max, max)
			}
			if st.Evicted != uint64(n-st.Addresses) {
				t.Errorf("Evicted = %d, want %d", st.Evicted, n-st.Addresses)
			}
			// The last bound are kept, the first evicted.
			last := netip.AddrFrom4([4]byte{10, byte((n - 1) >> 16), byte((n - 1) >> 8), byte(n - 1)})
			if _, ok := b.User(last, t0.Add(time.Duration(n)*time.Millisecond)); !ok {
				t.Errorf("the last address bound was evicted")
			}
			if _, ok := b.User(netip.AddrFrom4([4]byte{10, 0, 0, 0}), t0.Add(time.Duration(n)*time.Millisecond)); ok {
				t.Errorf("the first address bound is still there")
			}
		})
	}
	// Expired addresses go before live ones are evicted.
	b := NewBindings(Options{MaxAddresses: 4, TTL: time.Minute})
	for i := range 4 {
		b.Bind(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), "u", t0)
	}
	b.Bind(netip.MustParseAddr("10.0.1.1"), "v", t0.Add(2*time.Minute))
	if st := b.Stats(); st.Evicted != 0 || st.Addresses != 1 {
		t.Errorf("Stats = %+v, want the expired addresses dropped, none evicted", st)
	}
}

func TestBindingsHookAndApply(t *testing.T) {
	var mu sync.Mutex
	var sent []Binding
	a := NewBindings(Options{OnBind: func(x Binding) { mu.Lock(); sent = append(sent, x); mu.Unlock() }})
	a.Bind(netip.MustParseAddr("::ffff:10.9.8.7"), "alice", t0)
	a.Bind(netip.MustParseAddr("10.9.8.7"), "", t0)
	if len(sent) != 1 || sent[0].Addr != netip.MustParseAddr("10.9.8.7") || sent[0].User != "alice" || !sent[0].At.Equal(t0) {
		t.Fatalf("OnBind got %+v", sent)
	}
	// Another replica applies it: same answer, and no echo.
	b := NewBindings(Options{OnBind: func(Binding) { t.Error("Apply called OnBind") }})
	b.Apply(sent[0])
	mustUser(t, b, "10.9.8.7", t0.Add(time.Minute), "alice", true)
	b.Apply(Binding{Addr: netip.MustParseAddr("10.9.8.7"), User: "bob", At: t0.Add(2 * time.Minute)})
	mustUser(t, b, "10.9.8.7", t0.Add(3*time.Minute), "", false)
}

func TestBindingsConcurrent(t *testing.T) {
	b := NewBindings(Options{MaxAddresses: 4096})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 5000 {
				a := netip.AddrFrom4([4]byte{10, byte(g), byte(i >> 8), byte(i)})
				if i%3 == 0 {
					b.Bind(a, "u", t0)
				}
				b.User(a, t0)
			}
		}()
	}
	wg.Wait()
	if st := b.Stats(); st.Addresses > 4096 {
		t.Errorf("Stats = %+v", st)
	}
}

func TestBindingsUserAllocs(t *testing.T) {
	b := NewBindings(Options{})
	a := netip.MustParseAddr("10.1.2.3")
	b.Bind(a, "alice", t0)
	v6 := netip.MustParseAddr("2001:db8::1")
	if n := testing.AllocsPerRun(1000, func() { b.User(a, t0); b.User(v6, t0) }); n != 0 {
		t.Errorf("User allocates %v times", n)
	}
}

// BenchmarkBindingsUser measures the DNS filter's read: a bound address,
// an unbound one, in parallel.
func BenchmarkBindingsUser(b *testing.B) {
	bs := NewBindings(Options{MaxAddresses: 1 << 16})
	for i := range 1 << 15 {
		bs.Bind(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), fmt.Sprint("user", i), t0)
	}
	addrs := make([]netip.Addr, 1024)
	for i := range addrs {
		addrs[i] = netip.AddrFrom4([4]byte{10, byte(i & 1), byte(i >> 2), byte(i * 7)})
	}
	now := t0.Add(time.Minute)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			bs.User(addrs[i&1023], now)
			i++
		}
	})
}

func TestBindingNeverLogged(t *testing.T) {
	var buf strings.Builder
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", "b", Binding{Addr: netip.MustParseAddr("10.1.2.3"), User: "alice", At: t0})
	if strings.Contains(buf.String(), "alice") || strings.Contains(buf.String(), "10.1.2.3") {
		t.Errorf("a binding shows in a log line: %s", buf.String())
	}
}
