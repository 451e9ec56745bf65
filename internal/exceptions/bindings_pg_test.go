package exceptions

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/balise-net/balise/internal/exceptions/pgtest"
	"github.com/balise-net/balise/internal/identity"
)

// bindNode is one node's bindings shared through a PostgreSQL register.
type bindNode struct {
	*pgNode
	share *BindingShare
	b     *identity.Bindings
	clock *fakeClock
}

// openBindNode opens a register on url named name and shares its bindings
// until the test ends.
func openBindNode(t *testing.T, url, name string, clock *fakeClock, opt BindingShareOptions) *bindNode {
	t.Helper()
	n := &bindNode{pgNode: openNode(t, url, name, clock), clock: clock}
	if opt.Clock == nil {
		opt.Clock = clock.Now
	}
	if opt.TTL == 0 {
		opt.TTL = 30 * time.Minute
	}
	if opt.Refresh == 0 {
		opt.Refresh = -1 // every bind published: the tests count them
	}
	sh, err := n.reg.ShareBindings(opt)
	if err != nil || sh == nil {
		t.Fatalf("ShareBindings: %v, %v", sh, err)
	}
	n.share = sh
	n.b = identity.NewBindings(identity.Options{TTL: opt.TTL, SharedAfter: 2, OnBind: sh.Publish})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { sh.Run(ctx, n.b) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	return n
}

func (n *bindNode) bind(addr, user string) {
	n.b.Bind(netip.MustParseAddr(addr), user, n.clock.Now())
}

func (n *bindNode) user(addr string) (string, bool) {
	return n.b.User(netip.MustParseAddr(addr), n.clock.Now())
}

// waitUser waits until the node answers want (ok false: no one) for addr
// and returns how long that took.
func (n *bindNode) waitUser(t *testing.T, addr, want string, ok bool, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		u, k := n.user(addr)
		if u == want && k == ok {
			return time.Since(start)
		}
		if time.Since(start) > within {
			t.Fatalf("%s: User = %q, %v; want %q, %v within %s", addr, u, k, want, ok, within)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitStats waits until the node's figures satisfy ok (the writer counts
// a write when its commit returns, which may be after others read it).
func (n *bindNode) waitStats(t *testing.T, what string, ok func(BindingShareStats) bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for !ok(n.share.Stats()) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %+v", what, n.share.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// bindingRows counts the rows of identity_bindings.
func bindingRows(t *testing.T, st *PGStore) int {
	t.Helper()
	var n int
	if err := st.pool.QueryRow(context.Background(), `SELECT count(*) FROM identity_bindings`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestPGBindingsPropagate(t *testing.T) {
	srv := sharedPG(t)
	url := srv.CreateDB(t)
	clock := newClock()
	// Long polls: what arrives fast came by the doorbell, which both the
	// register and the bindings of node B hear.
	a := openBindNode(t, url, "node-a", clock, BindingShareOptions{Poll: 2 * time.Second})
	b := openBindNode(t, url, "node-b", clock, BindingShareOptions{Poll: 2 * time.Second})
	b.follow(t, 30*time.Second)
	waitListening(t, srv, url, "node-b-listen")

	var lat []time.Duration
	for i := range 100 {
		addr := fmt.Sprintf("10.1.%d.%d", i/200, i%200+1)
		if _, ok := b.user(addr); ok {
			t.Fatalf("%s bound on B before any bind", addr)
		}
		a.bind(addr, "alice")
		lat = append(lat, b.waitUser(t, addr, "alice", true, 2*time.Second))
	}
	slices.Sort(lat)
	p50, p99 := lat[len(lat)/2], lat[len(lat)*99/100]
	t.Logf("binding propagation A→B over %d binds: p50 %s, p99 %s, max %s", len(lat), p50, p99, lat[len(lat)-1])
	if p50 > 500*time.Millisecond {
		t.Errorf("p50 %s: the doorbell does not reach the bindings' follower", p50)
	}

	// The register on B still hears the same doorbell.
	rc, err := a.reg.Submit(context.Background(), sub("10.0.0.1", "facebook", justification(0)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.reg.Approve(context.Background(), rc.ID, Approval{By: "RSI", For: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if d := b.waitGrant(t, rc.ID, false, 2*time.Second); d > time.Second {
		t.Errorf("grant reached B's register in %s: its doorbell is not rung", d)
	}

	a.waitStats(t, "A", func(s BindingShareStats) bool { return s.Published == 100 && s.Dropped == 0 })
	b.waitStats(t, "B", func(s BindingShareStats) bool { return s.Applied >= 100 && s.Published == 0 })
	if n := bindingRows(t, a.store); n != 100 {
		t.Errorf("%d rows, want 100", n)
	}
	// Binding again upserts the row (no history of logins is kept).
	clock.Add(time.Minute)
	a.bind("10.1.0.1", "alice")
	b.waitUser(t, "10.1.0.1", "alice", true, 2*time.Second)
	a.waitStats(t, "A", func(s BindingShareStats) bool { return s.Published == 101 })
	if n := bindingRows(t, a.store); n != 100 {
		t.Errorf("%d rows after a second bind, want 100", n)
	}
}

func TestPGBindingsBurst(t *testing.T) {
	// A burst of binds (a shift change) goes in a few batched writes.
	srv := sharedPG(t)
	url := srv.CreateDB(t)
	clock := newClock()
	a := openBindNode(t, url, "node-a", clock, BindingShareOptions{})
	b := openBindNode(t, url, "node-b", clock, BindingShareOptions{})
	waitListening(t, srv, url, "node-b-listen")
	const n = 3000
	start := time.Now()
	for i := range n {
		a.bind(fmt.Sprintf("10.4.%d.%d", i/250, i%250+1), fmt.Sprintf("user%d", i))
	}
	publish := time.Since(start)
	for i := range n {
		b.waitUser(t, fmt.Sprintf("10.4.%d.%d", i/250, i%250+1), fmt.Sprintf("user%d", i), true, 2*time.Second-time.Since(start))
	}
	t.Logf("%d binds on A: %s to publish, all on B after %s", n, publish, time.Since(start))
	a.waitStats(t, "A", func(s BindingShareStats) bool { return s.Published == n && s.Dropped == 0 })
}

func TestPGBindingsSharedAcrossNodes(t *testing.T) {
	srv := sharedPG(t)
	url := srv.CreateDB(t)
	clock := newClock()
	a := openBindNode(t, url, "node-a", clock, BindingShareOptions{})
	b := openBindNode(t, url, "node-b", clock, BindingShareOptions{})

	a.bind("10.0.0.5", "alice")
	a.bind("10.0.0.6", "alice")
	b.waitUser(t, "10.0.0.5", "alice", true, 2*time.Second)
	clock.Add(5 * time.Minute)
	b.bind("10.0.0.5", "bob") // within binding_ttl of alice's, on the other node
	// Both nodes now count two users on 10.0.0.5: shared, no one for DNS.
	a.waitUser(t, "10.0.0.5", "", false, 2*time.Second)
	b.waitUser(t, "10.0.0.5", "", false, 0)
	// The other address is still alice's on both.
	a.waitUser(t, "10.0.0.6", "alice", true, 0)
	b.waitUser(t, "10.0.0.6", "alice", true, 0)
	// alice's bind ends binding_ttl after it: bob alone is left, on both.
	clock.Add(25*time.Minute + time.Second)
	a.waitUser(t, "10.0.0.5", "bob", true, 0)
	b.waitUser(t, "10.0.0.5", "bob", true, 0)
}

func TestPGBindingsExpiryLeaderPurge(t *testing.T) {
	srv := sharedPG(t)
	url := srv.CreateDB(t)
	clock := newClock()
	ttl := 10 * time.Minute
	// A is the leader and purges rarely; B, a follower, would purge
	// often but must not.
	a := openBindNode(t, url, "node-a", clock, BindingShareOptions{TTL: ttl, PurgeEvery: time.Hour})
	if !a.store.Leader(context.Background()) {
		t.Fatal("A did not take the leader's lock")
	}
	b := openBindNode(t, url, "node-b", clock, BindingShareOptions{TTL: ttl, PurgeEvery: 10 * time.Millisecond})

	a.bind("10.0.0.5", "alice")
	b.waitUser(t, "10.0.0.5", "alice", true, 2*time.Second)
	clock.Add(ttl)
	a.waitUser(t, "10.0.0.5", "", false, 0)
	b.waitUser(t, "10.0.0.5", "", false, 0)
	time.Sleep(1500 * time.Millisecond) // several of B's polls and purge periods
	if n := bindingRows(t, a.store); n != 1 {
		t.Fatalf("%d rows: a follower purged", n)
	}
	// A node that starts now does not take the expired row.
	c := openBindNode(t, url, "node-c", clock, BindingShareOptions{TTL: ttl})
	time.Sleep(1500 * time.Millisecond)
	if st := c.share.Stats(); st.Applied != 0 {
		t.Fatalf("C applied %d expired bindings", st.Applied)
	}
	c.waitUser(t, "10.0.0.5", "", false, 0)

	// A goes away: B takes the lead and purges.
	a.reg.Close()
	deadline := time.Now().Add(5 * time.Second)
	for bindingRows(t, b.store) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the expired binding was not purged by the new leader")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestPGBindingsStoreDown(t *testing.T) {
	srv := pgtest.Start(t)
	url := srv.CreateDB(t)
	clock := newClock()
	a := openBindNode(t, url, "node-a", clock, BindingShareOptions{Queue: 8})
	b := openBindNode(t, url, "node-b", clock, BindingShareOptions{})
	a.bind("10.0.0.1", "alice")
	b.waitUser(t, "10.0.0.1", "alice", true, 2*time.Second)

	srv.Stop()
	start := time.Now()
	for i := range 20 {
		a.bind(fmt.Sprintf("10.2.0.%d", i+1), "alice")
	}
	if d := time.Since(start); d > 500*time.Millisecond { // a blocked bind would wait for a connection
		t.Errorf("20 binds with the register down took %s", d)
	}
	for i := range 20 { // local binds still answer locally
		a.waitUser(t, fmt.Sprintf("10.2.0.%d", i+1), "alice", true, 0)
	}
	b.waitUser(t, "10.0.0.1", "alice", true, 0) // and the others keep theirs
	time.Sleep(1500 * time.Millisecond)         // a failed write or two
	if st := a.share.Stats(); st.Queued != 8 || st.Dropped != 12 || st.Published != 1 {
		t.Fatalf("with the register down: %+v, want the last 8 queued, the first 12 dropped", st)
	}

	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	// The last 8 reach B; the first 12 never do (until their next bind).
	for i := range 20 {
		addr := fmt.Sprintf("10.2.0.%d", i+1)
		if i >= 12 {
			b.waitUser(t, addr, "alice", true, 5*time.Second)
		} else if _, ok := b.user(addr); ok {
			t.Errorf("%s reached B although dropped", addr)
		}
	}
	t.Logf("queued binds on B %s after the restart", time.Since(restarted))
	a.waitStats(t, "A after the restart", func(s BindingShareStats) bool {
		return s.Published == 9 && s.Queued == 0 && s.Dropped == 12
	})
	a.bind("10.3.0.1", "alice")
	b.waitUser(t, "10.3.0.1", "alice", true, 2*time.Second)
	a.bind("10.2.0.1", "alice") // a dropped one, bound again
	b.waitUser(t, "10.2.0.1", "alice", true, 2*time.Second)
}

func TestPGBindingsLostNotification(t *testing.T) {
	// The listening connections are killed and the bind committed before
	// they are back (they reconnect a second later): the notification is
	// lost, the periodic re-read of what changed still brings it.
	srv := sharedPG(t)
	url := srv.CreateDB(t)
	clock := newClock()
	a := openBindNode(t, url, "node-a", clock, BindingShareOptions{})
	b := openBindNode(t, url, "node-b", clock, BindingShareOptions{Poll: 2 * time.Second})
	c := openBindNode(t, url, "node-c", clock, BindingShareOptions{Poll: 300 * time.Millisecond})
	waitListening(t, srv, url, "node-b-listen")
	waitListening(t, srv, url, "node-c-listen")
	srv.Exec(t, dbName(url), `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name IN ('node-b-listen', 'node-c-listen')`)
	a.bind("10.0.0.5", "alice")
	// C polls faster than the listener comes back: its poll brought it.
	dc := c.waitUser(t, "10.0.0.5", "alice", true, 900*time.Millisecond)
	db := b.waitUser(t, "10.0.0.5", "alice", true, 2*time.Second)
	t.Logf("binding after the listeners were killed: on C (poll 300 ms) %s, on B (poll 2 s) %s", dc, db)
	waitListening(t, srv, url, "node-b-listen") // and it listens again
	a.bind("10.0.0.6", "alice")
	if d := b.waitUser(t, "10.0.0.6", "alice", true, 2*time.Second); d > 500*time.Millisecond {
		t.Errorf("after the listener's return a binding took %s", d)
	}
}

func TestPGBindingsSQLiteHasNone(t *testing.T) {
	e := newEnv(t, nil)
	sh, err := e.reg.ShareBindings(BindingShareOptions{})
	if sh != nil || err != nil {
		t.Fatalf("ShareBindings on SQLite = %v, %v; want nil, nil", sh, err)
	}
	sh.Publish(identity.Binding{}) // a nil share does nothing
	sh.Run(context.Background(), identity.NewBindings(identity.Options{}))
	if st := sh.Stats(); st != (BindingShareStats{}) {
		t.Fatalf("Stats = %+v", st)
	}
}
