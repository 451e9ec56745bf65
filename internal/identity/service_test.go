package identity

import (
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/balise-net/balise/internal/adtest"
	"github.com/balise-net/balise/internal/directory"
)

var ad adtest.Shared

func TestMain(m *testing.M) {
	code := m.Run()
	ad.Close()
	os.Exit(code)
}

// TestServiceBoundLearnsGroups checks, against a real domain controller,
// that a binding whose user was never looked up here (one learnt from
// another node) gets its directory groups in the background: the first
// answer has the user alone, a later one has the groups, nested included.
func TestServiceBoundLearnsGroups(t *testing.T) {
	dc := ad.DC(t)
	if _, err := dc.AddUser("svcalice", "Passw0rd-alice!"); err != nil {
		t.Fatal(err)
	}
	for _, g := range []string{"svc-comms", "svc-web"} {
		if _, err := dc.AddGroup(g); err != nil {
			t.Fatal(err)
		}
	}
	if err := dc.AddMembers("svc-web", "svcalice"); err != nil {
		t.Fatal(err)
	}
	if err := dc.AddMembers("svc-comms", "svc-web"); err != nil { // nested
		t.Fatal(err)
	}
	dir, err := directory.New(directory.Config{URL: dc.LDAPSURL(), RootCAs: dc.CertPool(), BindDN: dc.AdminDN(),
		BindPassword: dc.AdminPassword(), BaseDN: dc.BaseDN()})
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	b := NewBindings(Options{})
	svc, err := NewService(ServiceOptions{Directory: dir, Bindings: b})
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddr("10.9.8.7")
	now := time.Now()
	b.Apply(Binding{Addr: addr, User: "svcalice", At: now})
	user, _, ok := svc.Bound(addr, now)
	if !ok || user != "svcalice" {
		t.Fatalf("Bound = %q, %v; want svcalice", user, ok)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, groups, _ := svc.Bound(addr, now)
		if slices.ContainsFunc(groups, func(g string) bool { return strings.EqualFold(g, "svc-comms") }) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("groups after 10 s: %v; want svc-comms (nested) among them", groups)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, _, ok := svc.Bound(netip.MustParseAddr("10.9.8.8"), now); ok {
		t.Error("an address nobody authenticated from is bound")
	}
	if _, err := svc.Verify("Negotiate abc", addr); err != ErrNoAuthentication {
		t.Errorf("Verify without a verifier = %v, want ErrNoAuthentication", err)
	}
}
