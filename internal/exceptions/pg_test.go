package exceptions

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/balise-net/balise/internal/exceptions/pgtest"
	"github.com/balise-net/balise/internal/policy"
)

// pgNode is one Balise node's register on a shared database.
type pgNode struct {
	reg   *Register
	store *PGStore
	mu    sync.Mutex
	seen  []policy.Grant
}

func openNode(t *testing.T, url, name string, clock *fakeClock) *pgNode {
	t.Helper()
	st, err := OpenPostgres(context.Background(), PGOptions{URL: url, ApplicationName: name})
	if err != nil {
		t.Fatalf("OpenPostgres(%s): %v", name, err)
	}
	opt := Options{Store: st, CloseStore: true, Clock: clock.Now, MaxPendingPerClient: -1, MaxPerDayPerClient: -1}
	r, err := Open(context.Background(), opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return &pgNode{reg: r, store: st}
}

// follow runs Follow until the test ends, recording the grants applied.
func (n *pgNode) follow(t *testing.T, poll time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.reg.Follow(ctx, FollowOptions{Poll: poll, Apply: func(g []policy.Grant) {
			n.mu.Lock()
			n.seen = g
			n.mu.Unlock()
		}})
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// waitGrant waits until the node applied a grant for request id (or, with
// absent, until it dropped it) and returns how long that took.
func (n *pgNode) waitGrant(t *testing.T, id string, absent bool, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		n.mu.Lock()
		has := false
		for _, g := range n.seen {
			has = has || g.ID == id
		}
		n.mu.Unlock()
		if has != absent {
			return time.Since(start)
		}
		if time.Since(start) > within {
			t.Fatalf("grant %s not applied (absent=%v) within %s; applied: %v", id, absent, within, n.seen)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestPGMigrationsConcurrentAndIdempotent(t *testing.T) {
	srv := sharedPG(t)
	url := srv.CreateDB(t)
	const nodes = 4
	var wg sync.WaitGroup
	errs := make(chan error, nodes)
	for range nodes {
		wg.Go(func() {
			st, err := OpenPostgres(context.Background(), PGOptions{URL: url})
			if err == nil {
				st.Close()
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("OpenPostgres, %d nodes at once: %v", nodes, err)
		}
	}
	st := openPG(t, url) // once more: nothing to do
	defer st.Close()
	var rows, max int
	if err := st.pool.QueryRow(context.Background(), `SELECT count(*), max(version) FROM schema_migrations`).Scan(&rows, &max); err != nil {
		t.Fatal(err)
	}
	if rows != len(pgMigrations) || max != len(pgMigrations) {
		t.Fatalf("schema_migrations has %d rows up to %d, want %d", rows, max, len(pgMigrations))
	}
	ro, err := OpenPostgres(context.Background(), PGOptions{URL: url, ReadOnly: true})
	if err != nil {
		t.Fatalf("read-only open = %v", err)
	}
	if err := ro.Update(context.Background(), func(Tx) error { return nil }); err == nil {
		t.Fatal("Update on a read-only store succeeded")
	}
	ro.Close()
	if _, err := OpenPostgres(context.Background(), PGOptions{URL: srv.CreateDB(t), ReadOnly: true}); !errors.Is(err, ErrNoStore) {
		t.Fatalf("read-only open of an empty database = %v, want ErrNoStore", err)
	}
}

func TestPGChainCannotFork(t *testing.T) {
	// Two nodes, four writers each, append to one chain at once.
	srv := sharedPG(t)
	url := srv.CreateDB(t)
	clock := newClock()
	a, b := openNode(t, url, "node-a", clock), openNode(t, url, "node-b", clock)
	const per = 15
	var wg sync.WaitGroup
	errs := make(chan error, 8*per)
	for g := range 8 {
		r := a.reg
		if g%2 == 1 {
			r = b.reg
		}
		wg.Go(func() {
			for i := range per {
				rc, err := r.Submit(context.Background(), sub(fmt.Sprintf("10.%d.0.%d", g, i+1), "facebook", justification(i)))
				if err == nil && i%3 == 0 {
					_, err = r.Approve(context.Background(), rc.ID, Approval{By: "RSI", For: time.Hour})
				}
				if err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent write: %v", err)
	}
	if err := b.reg.Verify(context.Background()); err != nil {
		t.Fatalf("Verify = %v", err)
	}
	h, _ := a.reg.head(context.Background())
	if want := int64(8*per + 8*((per+2)/3)); h.Seq != want {
		t.Fatalf("chain head seq %d, want %d events", h.Seq, want)
	}
	// A fork is refused by the database itself: a second event with an
	// existing seq, written around the register, fails.
	err := a.store.Update(context.Background(), func(tx Tx) error {
		return tx.(chainTx).AppendEvent(1, zeroHash, strings.Repeat("a", 64), []byte(`{}`))
	})
	if err == nil {
		t.Fatal("a second event with seq 1 was stored")
	}
}

func TestPGVerifyDetectsEdits(t *testing.T) {
	srv := sharedPG(t)
	for _, tt := range []struct {
		name, sql string
		line      int
	}{
		{"edited line", `UPDATE audit_events SET line = replace(line, '10.0.0.2', '10.0.0.9') WHERE seq = 2`, 2},
		{"edited line and hash column", `UPDATE audit_events SET line = replace(line, '10.0.0.2', '10.0.0.9'), hash = encode(sha256(convert_to(replace(line, '10.0.0.2', '10.0.0.9'), 'UTF8')), 'hex') WHERE seq = 2`, 2},
		{"last event deleted", `DELETE FROM audit_events WHERE seq = 3`, 3},
		{"middle event deleted", `DELETE FROM audit_events WHERE seq = 2`, 2},
		{"request edited", `UPDATE requests SET justification = 'autre chose que le texte reçu' WHERE id = 'EX-0001'`, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			url := srv.CreateDB(t)
			n := openNode(t, url, "node", newClock())
			for i := range 3 {
				if _, err := n.reg.Submit(context.Background(), sub(fmt.Sprintf("10.0.0.%d", i+1), "facebook", justification(i))); err != nil {
					t.Fatal(err)
				}
			}
			if err := n.reg.Verify(context.Background()); err != nil {
				t.Fatalf("Verify before the edit = %v", err)
			}
			db := url[strings.LastIndex(url, "/")+1 : strings.Index(url, "?")]
			srv.Exec(t, db, tt.sql)
			err := n.reg.Verify(context.Background())
			var ce *ChainError
			if !errors.As(err, &ce) || ce.Line != tt.line {
				t.Fatalf("Verify after %s = %v, want a ChainError at event %d", tt.name, err, tt.line)
			}
			// An edit of the last event stops every write, as with the file.
			if tt.name == "last event deleted" {
				if _, err := n.reg.Submit(context.Background(), sub("10.0.0.9", "facebook", justification(9))); !errors.Is(err, ErrAudit) {
					t.Fatalf("Submit after %s = %v, want ErrAudit", tt.name, err)
				}
				if err := n.reg.Repair(context.Background()); !errors.Is(err, ErrAudit) {
					t.Fatalf("Repair after %s = %v, want ErrAudit", tt.name, err)
				}
			}
		})
	}
}

func TestPGLeaderOnlyExpiry(t *testing.T) {
	srv := sharedPG(t)
	url := srv.CreateDB(t)
	clock := newClock()
	a, b := openNode(t, url, "node-a", clock), openNode(t, url, "node-b", clock)
	ctx := context.Background()
	var ids []string
	for i := range 2 {
		rc, err := a.reg.Submit(ctx, sub(fmt.Sprintf("10.0.0.%d", i+1), "facebook", justification(i)))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.reg.Approve(ctx, rc.ID, Approval{By: "RSI", For: time.Hour}); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, rc.ID)
	}
	if !a.reg.leader(ctx) {
		t.Fatal("the first node to ask is not the leader")
	}
	clock.Add(2 * time.Hour)
	// b is not the leader: it drops the ended grants but writes nothing.
	grants, _, err := b.reg.Refresh(ctx, clock.Now())
	if err != nil || len(grants) != 0 {
		t.Fatalf("b.Refresh = %v, %v; want no grants", grants, err)
	}
	if q, _ := b.reg.Get(ctx, ids[0]); q.Status != StatusApproved {
		t.Fatalf("non-leader expired %s (status %s)", ids[0], q.Status)
	}
	if testCounter(b.reg.metrics.leader) != 0 {
		t.Fatal("balise_exceptions_leader = 1 on the node that is not the leader")
	}
	// Both refresh at once, again and again: one expired event per grant.
	var wg sync.WaitGroup
	for _, n := range []*pgNode{a, b, a, b} {
		wg.Go(func() { n.reg.Refresh(ctx, clock.Now()) })
	}
	wg.Wait()
	expired := 0
	a.reg.eachEvent(ctx, func(_ int, e Event) error {
		if e.Event == EventExpired {
			expired++
		}
		return nil
	})
	if expired != 2 {
		t.Fatalf("%d expired events, want 2", expired)
	}
	// The leader goes away: the other node takes over.
	a.reg.Close()
	for deadline := time.Now().Add(5 * time.Second); !b.reg.leader(ctx); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("b did not become the leader after a closed its store")
		}
	}
	if ids, err := b.reg.PurgeExpired(ctx, time.Minute); err != nil || len(ids) != 2 {
		t.Fatalf("leader's PurgeExpired = %v, %v; want both expired requests", ids, err)
	}
}

func TestPGPropagation(t *testing.T) {
	srv := sharedPG(t)
	url := srv.CreateDB(t)
	clock := newClock()
	a, b := openNode(t, url, "node-a", clock), openNode(t, url, "node-b", clock)
	ctx := context.Background()
	var ids []string
	for i := range 4 {
		rc, err := a.reg.Submit(ctx, sub(fmt.Sprintf("10.0.0.%d", i+1), "facebook", justification(i)))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, rc.ID)
	}
	// A long poll: only the doorbell can bring the grant within 2 s.
	b.follow(t, time.Minute)
	waitListening(t, srv, url, "node-b-listen")
	if _, err := a.reg.Approve(ctx, ids[0], Approval{By: "RSI", For: time.Hour}); err != nil {
		t.Fatal(err)
	}
	d := b.waitGrant(t, ids[0], false, 2*time.Second)
	t.Logf("approve on a → grant on b: %s (doorbell)", d)
	if _, err := a.reg.Revoke(ctx, ids[0], "RSI", "fin"); err != nil {
		t.Fatal(err)
	}
	d = b.waitGrant(t, ids[0], true, 2*time.Second)
	t.Logf("revoke on a → grant gone on b: %s", d)
}

func TestPGPropagationLostNotification(t *testing.T) {
	// The listening connection is killed and the approval committed
	// before it is back: the notification is lost, the re-read of what
	// changed since the last version seen still brings the grant.
	srv := sharedPG(t)
	url := srv.CreateDB(t)
	clock := newClock()
	a, b := openNode(t, url, "node-a", clock), openNode(t, url, "node-b", clock)
	ctx := context.Background()
	rc, err := a.reg.Submit(ctx, sub("10.0.0.1", "facebook", justification(0)))
	if err != nil {
		t.Fatal(err)
	}
	b.follow(t, time.Second)
	waitListening(t, srv, url, "node-b-listen")
	db := dbName(url)
	srv.Exec(t, db, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'node-b-listen'`)
	if _, err := a.reg.Approve(ctx, rc.ID, Approval{By: "RSI", For: time.Hour}); err != nil {
		t.Fatal(err)
	}
	d := b.waitGrant(t, rc.ID, false, 2*time.Second)
	t.Logf("grant on b after its listener was killed: %s", d)
	waitListening(t, srv, url, "node-b-listen") // and it listens again
}

func dbName(url string) string { return url[strings.LastIndex(url, "/")+1 : strings.Index(url, "?")] }

// waitListening waits until a connection named app LISTENs.
func waitListening(t *testing.T, srv *pgtest.Server, url, app string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, err := pgx.Connect(context.Background(), url)
		if err == nil {
			var n int
			conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND query LIKE 'LISTEN%'`, app).Scan(&n)
			conn.Close(context.Background())
			if n > 0 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection %s listening", app)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestPGDegradedMode(t *testing.T) {
	srv := pgtest.Start(t) // its own server: this test stops it
	url := srv.CreateDB(t)
	clock := newClock()
	a := openNode(t, url, "node-a", clock)
	ctx := context.Background()
	var ids []string
	for i := range 2 {
		rc, err := a.reg.Submit(ctx, sub(fmt.Sprintf("10.0.0.%d", i+1), "facebook", justification(i)))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, rc.ID)
	}
	if _, err := a.reg.Approve(ctx, ids[0], Approval{By: "RSI", For: time.Hour}); err != nil {
		t.Fatal(err)
	}
	a.follow(t, 500*time.Millisecond)
	a.waitGrant(t, ids[0], false, 2*time.Second)

	srv.Stop()
	// Fail static: the grant stays; a request is refused as unavailable.
	start := time.Now()
	sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	_, err := a.reg.Submit(sctx, sub("10.0.0.3", "facebook", justification(3)))
	cancel()
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Submit with PostgreSQL stopped = %v, want ErrUnavailable", err)
	}
	t.Logf("Submit refused as unavailable in %s", time.Since(start))
	deadline := time.Now().Add(5 * time.Second)
	for testCounter(a.reg.metrics.storeUp) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("balise_exceptions_store_up still 1 with PostgreSQL stopped")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if g := a.reg.Grants(clock.Now()); len(g) != 1 || g[0].ID != ids[0] {
		t.Fatalf("Grants with PostgreSQL stopped = %v, want the last known grant %s", g, ids[0])
	}
	a.waitGrant(t, ids[0], false, 0) // still applied
	if testCounter(a.reg.metrics.unavailable) < 1 {
		t.Fatal("balise_exceptions_store_unavailable_total did not count the refused request")
	}

	// PostgreSQL is back: a change made by another node is caught up
	// without a restart.
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	b := openNode(t, url, "node-b", clock)
	if _, err := b.reg.Approve(ctx, ids[1], Approval{By: "RSI", For: time.Hour}); err != nil {
		t.Fatal(err)
	}
	d := a.waitGrant(t, ids[1], false, 5*time.Second)
	t.Logf("after the restart, b's approval reached a in %s", d)
	if testCounter(a.reg.metrics.storeUp) != 1 {
		t.Fatal("balise_exceptions_store_up not back to 1")
	}
	if _, err := a.reg.Submit(ctx, sub("10.0.0.3", "facebook", justification(3))); err != nil {
		t.Fatalf("Submit after the restart = %v", err)
	}
	if err := a.reg.Verify(ctx); err != nil {
		t.Fatalf("Verify = %v", err)
	}
}

func TestPGMigrateFromSQLite(t *testing.T) {
	srv := sharedPG(t)
	ctx := context.Background()
	e := newEnv(t, nil)
	a := e.mustSubmit(t, sub("10.0.0.1", "facebook", justification(0))).ID
	b := e.mustSubmit(t, sub("10.0.0.2", "instagram", justification(1))).ID
	e.mustSubmit(t, sub("10.0.0.3", "tiktok", justification(2)))
	if _, err := e.reg.Approve(ctx, a, Approval{By: "RSI", For: 4 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.reg.Deny(ctx, b, "RSI", "non"); err != nil {
		t.Fatal(err)
	}
	url := srv.CreateDB(t)
	dst := openPG(t, url)
	defer dst.Close()
	res, err := e.reg.MigrateTo(ctx, dst)
	if err != nil {
		t.Fatalf("MigrateTo = %v", err)
	}
	srcHead, _ := e.reg.head(ctx)
	if res.Requests != 3 || res.Head != (Head{Seq: srcHead.Seq, Hash: srcHead.Hash}) {
		t.Fatalf("MigrateTo = %+v, want 3 requests and head %+v", res, srcHead)
	}
	// The copy is a working register: same requests, same grants, and the
	// chain goes on from the source's head.
	n := openNode(t, url, "node", e.clock)
	grants, _, err := n.reg.Refresh(ctx, e.clock.Now())
	if err != nil || len(grants) != 1 || grants[0].ID != a {
		t.Fatalf("grants in the copy = %v, %v; want %s", grants, err, a)
	}
	rc, err := n.reg.Submit(ctx, sub("10.0.0.4", "facebook", justification(4)))
	if err != nil || rc.ID != "EX-0004" {
		t.Fatalf("Submit in the copy = %+v, %v; want EX-0004", rc, err)
	}
	if err := n.reg.Verify(ctx); err != nil {
		t.Fatalf("Verify the copy after a new request = %v", err)
	}
	// A second migration into the same database is refused.
	if _, err := e.reg.MigrateTo(ctx, dst); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Fatalf("MigrateTo a non-empty target = %v, want a refusal", err)
	}
}

// A second shared table (as identity bindings will be) is stamped with
// the change version on write and read back as "changed since".
func TestPGChangedSinceHook(t *testing.T) {
	srv := sharedPG(t)
	url := srv.CreateDB(t)
	st := openPG(t, url)
	defer st.Close()
	ctx := context.Background()
	if _, err := st.pool.Exec(ctx, `CREATE TABLE bindings (addr text PRIMARY KEY, username text NOT NULL, version bigint NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	put := func(addr, user string) {
		t.Helper()
		err := st.Update(ctx, func(tx Tx) error {
			v, err := tx.(*pgTx).Stamp()
			if err != nil {
				return err
			}
			_, err = tx.(*pgTx).q.Exec(ctx, `INSERT INTO bindings VALUES ($1, $2, $3)
				ON CONFLICT (addr) DO UPDATE SET username = excluded.username, version = excluded.version`, addr, user, v)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	read := func(since int64) (int64, []string) {
		t.Helper()
		var got []string
		v, err := st.ChangedSince(ctx, "bindings", []string{"addr", "username"}, since, func(r pgx.Rows) error {
			var a, u string
			err := r.Scan(&a, &u)
			got = append(got, a+"="+u)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return v, got
	}
	put("10.0.0.1", "alice")
	put("10.0.0.2", "bob")
	v, got := read(0)
	if strings.Join(got, " ") != "10.0.0.1=alice 10.0.0.2=bob" {
		t.Fatalf("ChangedSince(0) = %v", got)
	}
	put("10.0.0.1", "carol")
	v2, got := read(v)
	if strings.Join(got, " ") != "10.0.0.1=carol" || v2 <= v {
		t.Fatalf("ChangedSince(%d) = %d, %v; want only the change", v, v2, got)
	}
	if v3, got := read(v2); v3 != v2 || len(got) != 0 {
		t.Fatalf("ChangedSince(latest) = %d, %v; want nothing", v3, got)
	}
}
