package adtest

import (
	"os"
	"sync"
	"testing"
)

// Require skips the test when a DC cannot run here (see Available), or
// fails it when BALISE_E2E=1.
func Require(tb testing.TB) {
	tb.Helper()
	if err := Available(); err != nil {
		if os.Getenv("BALISE_E2E") == "1" {
			tb.Fatalf("BALISE_E2E=1 but %v", err)
		}
		tb.Skipf("%v (set BALISE_E2E=1 to make this a failure)", err)
	}
}

// Shared is one DC for a whole test binary, started by the first test that
// asks for it. Declare one in the test package and close it in TestMain:
//
//	var ad adtest.Shared
//
//	func TestMain(m *testing.M) {
//		code := m.Run()
//		ad.Close()
//		os.Exit(code)
//	}
//
//	func TestSomething(t *testing.T) {
//		dc := ad.DC(t)
//		...
//	}
type Shared struct {
	// Options are used by the first DC call.
	Options Options

	once sync.Once
	dc   *DC
	err  error
}

// DC returns the shared DC, starting it on the first call. It skips or
// fails tb as Require does, and fails tb when the DC did not start.
func (s *Shared) DC(tb testing.TB) *DC {
	tb.Helper()
	Require(tb)
	s.once.Do(func() { s.dc, s.err = New(s.Options) })
	if s.err != nil {
		tb.Fatal(s.err)
	}
	return s.dc
}

// Close stops and removes the shared DC, if one was started.
func (s *Shared) Close() {
	s.once.Do(func() {})
	if s.dc != nil {
		s.dc.Close()
	}
}
