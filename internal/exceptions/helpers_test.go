package exceptions

import (
	"context"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 11, 20, 14, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type testEnv struct {
	dir, db, log string
	url          string // a PostgreSQL store's URL ("" for SQLite)
	clock        *fakeClock
	reg          *Register
}

// newEnv opens a register on a fresh SQLite store in a temporary directory.
func newEnv(t testing.TB, mod func(*Options)) *testEnv {
	t.Helper()
	dir := t.TempDir()
	e := &testEnv{dir: dir, db: filepath.Join(dir, "balise.db"), log: filepath.Join(dir, "exceptions.jsonl"), clock: newClock()}
	e.reg = e.open(t, mod)
	return e
}

// open opens another Register on the same files (another "process").
func (e *testEnv) open(t testing.TB, mod func(*Options)) *Register {
	t.Helper()
	var st Store
	if e.url != "" {
		st = openPG(t, e.url)
	} else {
		s, err := OpenSQLite(context.Background(), e.db)
		if err != nil {
			t.Fatalf("OpenSQLite: %v", err)
		}
		st = s
	}
	opt := Options{Store: st, CloseStore: true, AuditLog: e.log, Clock: e.clock.Now}
	if mod != nil {
		mod(&opt)
	}
	r, err := Open(context.Background(), opt)
	if err != nil {
		st.Close()
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func sub(client, service, why string) Submission {
	return Submission{
		Client: netip.MustParseAddr(client), Name: "Julie Tremblay", Contact: "poste 4321",
		Service: service, Host: "www." + service + ".com", Justification: why, Duration: 4 * time.Hour,
	}
}

func justification(n int) string {
	return "Campagne de recrutement " + strings.Repeat("x", n)
}

// mustSubmit submits and fails the test on error.
func (e *testEnv) mustSubmit(t *testing.T, s Submission) Receipt {
	t.Helper()
	rc, err := e.reg.Submit(context.Background(), s)
	if err != nil {
		t.Fatalf("Submit(%+v) = %v", s, err)
	}
	return rc
}

func newRegistry() *prometheus.Registry { return prometheus.NewRegistry() }

// events returns the register's audit events (from the file or the store).
func (e *testEnv) events(t testing.TB) []Event {
	t.Helper()
	var out []Event
	if err := e.reg.eachEvent(context.Background(), func(_ int, ev Event) error { out = append(out, ev); return nil }); err != nil {
		t.Fatalf("reading the audit events: %v", err)
	}
	return out
}
