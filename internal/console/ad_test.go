package console

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/balise-net/balise/internal/directory"
)

// countingAD counts the binds the console asks of the real directory.
type countingAD struct {
	*directory.Directory
	binds atomic.Int64
}

func (d *countingAD) Authenticate(ctx context.Context, user, pw string) error {
	d.binds.Add(1)
	return d.Directory.Authenticate(ctx, user, pw)
}

// TestSignInActiveDirectory signs in against a real Samba domain
// controller: roles from a group by name and a group by DN, nested
// membership, a user with no role, wrong passwords, and the throttle that
// stops binding before the directory's lockout could count.
func TestSignInActiveDirectory(t *testing.T) {
	dc := ad.DC(t)
	for _, u := range [][2]string{{"alice", "Alice-pw-2026!"}, {"bob", "Bob-pw-2026!"}, {"carol", "Carol-pw-2026!"}} {
		if _, err := dc.AddUser(u[0], u[1]); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := dc.AddGroup("RSI"); err != nil {
		t.Fatal(err)
	}
	if _, err := dc.AddGroup("Securite-Info"); err != nil {
		t.Fatal(err)
	}
	auditDN, err := dc.AddGroup("Verificateurs")
	if err != nil {
		t.Fatal(err)
	}
	// alice ∈ Securite-Info ∈ RSI (nested); bob ∈ Verificateurs.
	if err := dc.AddMembers("Securite-Info", "alice"); err != nil {
		t.Fatal(err)
	}
	if err := dc.AddMembers("RSI", "Securite-Info"); err != nil {
		t.Fatal(err)
	}
	if err := dc.AddMembers("Verificateurs", "bob"); err != nil {
		t.Fatal(err)
	}
	d, err := directory.New(directory.Config{URL: dc.LDAPSURL(), CAFile: dc.CAFile(), BindDN: dc.AdminDN(),
		BindPassword: dc.AdminPassword(), BaseDN: dc.BaseDN()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	cd := &countingAD{Directory: d}
	e := newEnv(t, func(o *Options) {
		o.Directory = cd
		o.Officers = []string{"rsi"}
		o.Auditors = []string{strings.ToUpper(auditDN)}
		o.MaxAccountFailures = 3
	})
	a := e.client(t).mustLogin("ALICE", "Alice-pw-2026!")
	if _, body := a.do("GET", "/api/v1/session", nil, ""); !strings.Contains(body, `"user":"alice","role":"officer"`) {
		t.Fatalf("alice = %s", body)
	}
	b := e.client(t).mustLogin("bob", "Bob-pw-2026!")
	if _, body := b.do("GET", "/api/v1/session", nil, ""); !strings.Contains(body, `"role":"auditor"`) {
		t.Fatalf("bob = %s", body)
	}
	if code := e.client(t).login("carol", "Carol-pw-2026!"); code != 401 {
		t.Fatalf("carol (no role) = %d, want 401", code)
	}
	// Local accounts still work beside the directory.
	e.client(t).mustLogin("rsi", officerPW)
	// Decisions carry the directory name.
	id := e.submit(t, "10.0.0.9", "", why)
	if code, body := a.do("POST", "/api/v1/requests/"+id+"/approve", map[string]string{"duration": "4h"}, a.csrf); code != 200 || !strings.Contains(body, `"decided_by":"alice"`) {
		t.Fatalf("alice approves = %d %s", code, body)
	}
	if code, _ := b.do("POST", "/api/v1/requests/"+id+"/revoke", map[string]string{"reason": "x"}, b.csrf); code != 403 {
		t.Fatalf("bob (auditor) revokes = %d, want 403", code)
	}
	// Guessing alice's password: 3 binds, then none.
	c := e.client(t)
	for i := 0; i < 3; i++ {
		if code := c.login("alice", "guess"); code != 401 {
			t.Fatalf("guess %d = %d", i, code)
		}
	}
	before := cd.binds.Load()
	for i := 0; i < 10; i++ {
		if code := c.login("alice", "guess"); code != 429 {
			t.Fatalf("throttled guess = %d, want 429", code)
		}
	}
	if cd.binds.Load() != before {
		t.Fatalf("throttled guesses reached the directory %d times", cd.binds.Load()-before)
	}
}
