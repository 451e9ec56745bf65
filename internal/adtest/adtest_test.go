package adtest

import (
	"crypto/tls"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// TestTwoDCs starts two DCs at once (as two test binaries would), checks
// that each answers on its own address with its own realm, exercises the
// helpers, and stops and restarts one while the other keeps serving.
func TestTwoDCs(t *testing.T) {
	Require(t)
	opts := []Options{{Realm: "ONE.TEST"}, {Realm: "TWO.TEST"}}
	dcs := make([]*DC, len(opts))
	errs := make([]error, len(opts))
	var wg sync.WaitGroup
	start := time.Now()
	for i := range opts {
		wg.Go(func() { dcs[i], errs[i] = New(opts[i]) })
	}
	wg.Wait()
	t.Logf("two DCs provisioned and started in parallel in %v", time.Since(start))
	for i := range dcs {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		t.Cleanup(func() { dcs[i].Close() })
	}
	one, two := dcs[0], dcs[1]
	if one.Addr() == two.Addr() {
		t.Fatalf("both DCs on %s", one.Addr())
	}
	if one.BaseDN() != "DC=one,DC=test" || one.Domain() != "ONE" {
		t.Errorf("BaseDN, Domain = %q, %q, want DC=one,DC=test, ONE", one.BaseDN(), one.Domain())
	}

	for _, dc := range dcs {
		if _, err := dc.AddUser("alice", "alice-pw"); err != nil {
			t.Fatal(err)
		}
		if _, err := dc.AddGroup("nurses"); err != nil {
			t.Fatal(err)
		}
		if _, err := dc.AddGroup("clinical"); err != nil {
			t.Fatal(err)
		}
		if err := dc.AddMembers("nurses", "alice"); err != nil {
			t.Fatal(err)
		}
		if err := dc.AddMembers("clinical", "nurses"); err != nil {
			t.Fatal(err)
		}
		cr, err := dc.Kinit("alice", "alice-pw")
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("klist", "-c", cr.CCache).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "krbtgt/"+dc.Realm()) {
			t.Fatalf("klist: %v\n%s", err, out)
		}
		if _, err := dc.Kinit("alice", "wrong"); err == nil {
			t.Errorf("%s: kinit with a wrong password succeeded", dc.Realm())
		}
		checkMemberOf(t, dc, "alice", "CN=nurses,CN=Users,"+dc.BaseDN())
		checkMemberOf(t, dc, "nurses", "CN=clinical,CN=Users,"+dc.BaseDN())
	}

	// A service keytab, usable by MIT's kvno to check a ticket.
	kt := one.Dir() + "/proxy.keytab"
	spn := "HTTP/proxy.one.test"
	if err := one.AddService("proxysvc", spn, kt); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("klist", "-ke", kt).CombinedOutput()
	if err != nil || !strings.Contains(string(out), spn+"@ONE.TEST (aes256-cts-hmac-sha1-96)") {
		t.Fatalf("klist -ke: %v\n%s", err, out)
	}
	cr, _ := one.Kinit("alice", "alice-pw")
	cmd := exec.Command("kvno", "-k", kt, spn)
	cmd.Env = append(os.Environ(), cr.Env()...)
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "keytab entry valid") {
		t.Fatalf("kvno -k: %v\n%s", err, out)
	}

	// Stop one: its LDAPS and KDC go away, the other DC keeps serving.
	one.Stop()
	if c, err := net.DialTimeout("tcp", net.JoinHostPort(one.Addr(), "636"), time.Second); err == nil {
		c.Close()
		t.Fatal("LDAPS still answers after Stop")
	}
	if _, err := one.Kinit("alice", "alice-pw"); err == nil {
		t.Fatal("kinit succeeded after Stop")
	}
	if _, err := two.Kinit("alice", "alice-pw"); err != nil {
		t.Fatalf("the other DC: %v", err)
	}
	start = time.Now()
	if err := one.Start(); err != nil {
		t.Fatal(err)
	}
	t.Logf("restart took %v", time.Since(start))
	if _, err := one.Kinit("alice", "alice-pw"); err != nil {
		t.Fatalf("after Start: %v", err)
	}
}

func checkMemberOf(t *testing.T, dc *DC, name, group string) {
	t.Helper()
	c, err := ldap.DialURL(dc.LDAPSURL(), ldap.DialWithTLSConfig(&tls.Config{RootCAs: dc.CertPool()}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Bind(dc.AdminDN(), dc.AdminPassword()); err != nil {
		t.Fatal(err)
	}
	res, err := c.Search(ldap.NewSearchRequest(dc.BaseDN(), ldap.ScopeWholeSubtree, ldap.NeverDerefAliases, 0, 0, false,
		"(sAMAccountName="+name+")", []string{"memberOf"}, nil))
	if err != nil || len(res.Entries) != 1 {
		t.Fatalf("search %s: %v", name, err)
	}
	got := res.Entries[0].GetAttributeValues("memberOf")
	for _, g := range got {
		if strings.EqualFold(g, group) {
			return
		}
	}
	t.Errorf("%s memberOf = %q, want %s", name, got, group)
}

// TestProvisioningTime measures what one DC costs a test binary.
func TestProvisioningTime(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	Require(t)
	start := time.Now()
	dc, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("provision + start + ready: %v on %s", time.Since(start), dc.Addr())
	dc.Close()
	if _, err := os.Stat(dc.Dir()); !os.IsNotExist(err) {
		t.Errorf("Close left %s", dc.Dir())
	}
}
