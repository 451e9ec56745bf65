package console

import (
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/balise-net/balise/internal/directory"
	"github.com/balise-net/balise/internal/negotiate"
)

// TestSignInKerberos signs an officer in with a real Kerberos ticket from
// the real domain controller, sent by real curl (--negotiate): the role
// comes from the directory, a user without a role is refused, and a
// request without a ticket gets 401 Negotiate.
func TestSignInKerberos(t *testing.T) {
	dc := ad.DC(t)
	curl, err := exec.LookPath("curl")
	if err != nil {
		if os.Getenv("BALISE_E2E") == "1" {
			t.Fatal("BALISE_E2E=1 but curl is not installed")
		}
		t.Skip("curl is not installed")
	}
	for _, u := range [][2]string{{"ssoofficer", "Sso-officer-2026!"}, {"ssonobody", "Sso-nobody-2026!"}} {
		if _, err := dc.AddUser(u[0], u[1]); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := dc.AddGroup("RSI-SSO"); err != nil {
		t.Fatal(err)
	}
	if err := dc.AddMembers("RSI-SSO", "ssoofficer"); err != nil {
		t.Fatal(err)
	}
	host := "console." + strings.ToLower(dc.Realm())
	kt := filepath.Join(t.TempDir(), "console.keytab")
	if err := dc.AddService("svc-console", "HTTP/"+host, kt); err != nil {
		t.Fatal(err)
	}
	v, err := negotiate.New(negotiate.Options{Keytab: kt, ServicePrincipal: "HTTP/" + host})
	if err != nil {
		t.Fatal(err)
	}
	d, err := directory.New(directory.Config{URL: dc.LDAPSURL(), CAFile: dc.CAFile(), BindDN: dc.AdminDN(),
		BindPassword: dc.AdminPassword(), BaseDN: dc.BaseDN()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	e := newEnv(t, func(o *Options) {
		o.Directory = d
		o.Officers = []string{"rsi-sso"}
		o.Negotiate = func(h string, c netip.Addr) (string, error) {
			r, err := v.Verify(h, c)
			return r.User, err
		}
	})
	u, _ := url.Parse(e.url)
	port := u.Port()
	get := func(user, pw string) string {
		t.Helper()
		args := []string{"-s", "-o", "/dev/null", "-D", "-", "--resolve", host + ":" + port + ":127.0.0.1",
			"http://" + host + ":" + port + "/login/sso?next=/requests"}
		var env []string
		if user != "" {
			cr, err := dc.Kinit(user, pw)
			if err != nil {
				t.Fatal(err)
			}
			env = cr.Env()
			args = append([]string{"--negotiate", "-u", ":"}, args...)
		}
		cmd := exec.Command(curl, args...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("curl: %v", err)
		}
		return strings.ToLower(string(out))
	}
	if h := get("", ""); !strings.Contains(h, " 401") || !strings.Contains(h, "www-authenticate: negotiate") {
		t.Errorf("no ticket: headers\n%s\nwant 401 with WWW-Authenticate: Negotiate", h)
	}
	h := get("ssoofficer", "Sso-officer-2026!")
	if !strings.Contains(h, " 303") || !strings.Contains(h, "location: /requests") || !strings.Contains(h, "set-cookie: ") {
		t.Errorf("officer's ticket: headers\n%s\nwant 303 to /requests with a session cookie", h)
	}
	if h := get("ssonobody", "Sso-nobody-2026!"); !strings.Contains(h, " 403") || strings.Contains(h, "set-cookie: ") {
		t.Errorf("ticket of a user without a role: headers\n%s\nwant 403 and no session", h)
	}
}
