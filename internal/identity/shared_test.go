package identity

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

func bind(addr, user string, at time.Time) Binding {
	return Binding{Addr: netip.MustParseAddr(addr), User: user, At: at}
}

func taken(q *Outbox) []string {
	var out []string
	for _, x := range q.Take() {
		out = append(out, x.Addr.String()+"="+x.User+"@"+x.At.Sub(t0).String())
	}
	slices.Sort(out)
	return out
}

func TestOutboxCoalesces(t *testing.T) {
	q := NewOutbox(OutboxOptions{Refresh: -1})
	q.Publish(bind("10.0.0.5", "alice", t0))
	q.Publish(bind("::ffff:10.0.0.5", "alice", t0.Add(time.Second))) // the same address
	q.Publish(bind("10.0.0.5", "bob", t0))
	q.Publish(bind("10.0.0.6", "alice", t0))
	select {
	case <-q.Ready():
	default:
		t.Fatal("Ready did not ring")
	}
	got := strings.Join(taken(q), " ")
	if want := "10.0.0.5=alice@1s 10.0.0.5=bob@0s 10.0.0.6=alice@0s"; got != want {
		t.Fatalf("Take = %s, want %s", got, want)
	}
	if got := q.Take(); got != nil {
		t.Fatalf("second Take = %v, want nothing", got)
	}
}

func TestOutboxRefresh(t *testing.T) {
	q := NewOutbox(OutboxOptions{Refresh: time.Minute})
	q.Publish(bind("10.0.0.5", "alice", t0))
	if got := taken(q); len(got) != 1 {
		t.Fatalf("Take = %v", got)
	}
	// Again within a minute: not published again; another user is.
	q.Publish(bind("10.0.0.5", "alice", t0.Add(30*time.Second)))
	q.Publish(bind("10.0.0.5", "bob", t0.Add(30*time.Second)))
	if got := strings.Join(taken(q), " "); got != "10.0.0.5=bob@30s" {
		t.Fatalf("Take = %s, want bob alone", got)
	}
	// A minute after the last publication: published again, across the
	// rotation of the remembered periods.
	q.Publish(bind("10.0.0.5", "alice", t0.Add(70*time.Second)))
	q.Publish(bind("10.0.0.5", "bob", t0.Add(80*time.Second)))
	if got := strings.Join(taken(q), " "); got != "10.0.0.5=alice@1m10s" {
		t.Fatalf("Take = %s, want alice alone", got)
	}
	if st := q.Stats(); st.Skipped != 2 {
		t.Fatalf("Skipped = %d, want 2", st.Skipped)
	}
	// The default is TTL/60 within [1 s, 1 min].
	for ttl, want := range map[time.Duration]time.Duration{30 * time.Minute: 30 * time.Second,
		10 * time.Second: time.Second, 24 * time.Hour: time.Minute} {
		if got := NewOutbox(OutboxOptions{TTL: ttl}).refresh; got != int64(want) {
			t.Errorf("TTL %s: refresh %s, want %s", ttl, time.Duration(got), want)
		}
	}
}

func TestOutboxBoundedAndCounted(t *testing.T) {
	q := NewOutbox(OutboxOptions{Max: 4, TTL: time.Minute, Refresh: -1})
	addr := func(c, d int) string { return netip.AddrFrom4([4]byte{10, 0, byte(c), byte(d)}).String() }
	start := time.Now()
	for i := range 10 {
		q.Publish(bind(addr(0, i), "alice", t0.Add(time.Duration(i)*time.Second)))
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("10 publications took %s", d)
	}
	if st := q.Stats(); st.Queued != 4 || st.Dropped != 6 {
		t.Fatalf("Stats = %+v, want 4 queued, 6 dropped", st)
	}
	// A bind of a queued user and address coalesces, drops nothing.
	q.Publish(bind(addr(0, 6), "alice", t0.Add(20*time.Second)))
	if st := q.Stats(); st.Dropped != 6 {
		t.Fatalf("Dropped = %d after a coalesced bind", st.Dropped)
	}
	// The last four binds are kept, in the order first queued.
	xs := q.Take()
	var got []string
	for _, x := range xs {
		got = append(got, x.Addr.String()+"@"+x.At.Sub(t0).String())
	}
	if want := []string{"10.0.0.6@20s", "10.0.0.7@7s", "10.0.0.8@8s", "10.0.0.9@9s"}; !slices.Equal(got, want) {
		t.Fatalf("Take = %v, want %v", got, want)
	}
	// The store failed meanwhile; two new binds came: they keep their
	// place, the first two requeued are dropped, the others go first.
	q.Publish(bind(addr(1, 1), "bob", t0.Add(30*time.Second)))
	q.Publish(bind(addr(0, 9), "alice", t0.Add(31*time.Second))) // also requeued: coalesces
	q.Publish(bind(addr(1, 2), "bob", t0.Add(32*time.Second)))
	q.Requeue(xs)
	got = got[:0]
	for _, x := range q.Take() {
		got = append(got, x.Addr.String()+"@"+x.At.Sub(t0).String())
	}
	if want := []string{"10.0.0.8@8s", "10.0.1.1@30s", "10.0.0.9@31s", "10.0.1.2@32s"}; !slices.Equal(got, want) {
		t.Fatalf("after Requeue: %v, want %v", got, want)
	}
	if st := q.Stats(); st.Queued != 0 || st.Dropped != 8 {
		t.Fatalf("after Requeue: %+v, want 8 dropped", st)
	}
	// The order survives many evictions.
	for i := range 1000 {
		q.Publish(bind(addr(2+i/200, i%200), "carol", t0.Add(time.Hour)))
	}
	xs = q.Take()
	if len(xs) != 4 || xs[0].Addr.String() != addr(6, 196) || xs[3].Addr.String() != addr(6, 199) {
		t.Fatalf("after 1000 binds: %v", xs)
	}
}

func TestOutboxIsOnBind(t *testing.T) {
	q := NewOutbox(OutboxOptions{Refresh: -1})
	b := NewBindings(Options{OnBind: q.Publish})
	b.Bind(netip.MustParseAddr("10.0.0.5"), "alice", t0)
	b.Apply(bind("10.0.0.6", "bob", t0)) // learnt from elsewhere: not published again
	b.Bind(netip.MustParseAddr("10.0.0.7"), "", t0)
	if got := strings.Join(taken(q), " "); got != "10.0.0.5=alice@0s" {
		t.Fatalf("published %s, want alice's bind alone", got)
	}
	var nilq *Outbox
	nilq.Publish(bind("10.0.0.5", "alice", t0)) // no panic
}
