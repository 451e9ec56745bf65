package exceptions

import (
	"context"
	"os"
	"sync"
	"testing"

	"github.com/balise-net/balise/internal/exceptions/pgtest"
)

// The server shared by the tests that do not stop it, started on first use.
var shared struct {
	once sync.Once
	srv  *pgtest.Server
	err  error
}

// sharedPG returns the shared server (see startPG for skips).
func sharedPG(t testing.TB) *pgtest.Server {
	t.Helper()
	shared.once.Do(func() { shared.srv, shared.err = pgtest.New() })
	if shared.err != nil {
		if shared.srv == nil && os.Getenv("BALISE_E2E") != "1" {
			t.Skipf("PostgreSQL not available: %v", shared.err)
		}
		t.Fatalf("PostgreSQL: %v", shared.err)
	}
	return shared.srv
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.srv != nil {
		shared.srv.Close()
	}
	os.Exit(code)
}

// openPG opens a store on url, failing the test on error.
func openPG(t testing.TB, url string) *PGStore {
	t.Helper()
	st, err := OpenPostgres(context.Background(), PGOptions{URL: url})
	if err != nil {
		t.Fatalf("OpenPostgres: %v", err)
	}
	return st
}

// envFunc opens a test environment (see newEnv).
type envFunc = func(testing.TB, func(*Options)) *testEnv

// eachStore runs fn once on SQLite and once on PostgreSQL.
func eachStore(t *testing.T, fn func(t *testing.T, newEnv envFunc)) {
	t.Run("sqlite", func(t *testing.T) { fn(t, newEnv) })
	t.Run("postgres", func(t *testing.T) {
		srv := sharedPG(t)
		fn(t, func(tb testing.TB, mod func(*Options)) *testEnv {
			e := &testEnv{dir: tb.TempDir(), url: srv.CreateDB(tb), clock: newClock()}
			e.reg = e.open(tb, mod)
			return e
		})
	})
}
