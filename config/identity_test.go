package config

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// An empty file: no directory, authentication off, the identity defaults,
// the pseudonym key next to the register's state or the lists' cache.
func TestIdentityDefaults(t *testing.T) {
	c := mustParse(t, "/etc/balise/balise.toml", "")
	checks := []struct {
		name      string
		got, want any
	}{
		{"Directory", c.Directory == nil, true},
		{"Proxy.Auth.Mode", c.Proxy.Auth.Mode, "off"},
		{"Proxy.Auth.Challenge", c.Proxy.Auth.Challenge, "listed"},
		{"Proxy.Auth.Clients", c.Proxy.Auth.Clients, c.Proxy.AllowedClients},
		{"Proxy.Auth.Keytab", c.Proxy.Auth.Keytab, ""},
		{"Identity.BindingTTL", c.Identity.BindingTTL, 30 * time.Minute},
		{"Identity.SharedAfter", c.Identity.SharedAfter, 2},
		{"Identity.Log", c.Identity.Log, "pseudonym"},
		{"Identity.KeyFile", c.Identity.KeyFile, "/etc/balise/balise-data/identity.key"},
	}
	for _, ck := range checks {
		if !reflect.DeepEqual(ck.got, ck.want) {
			t.Errorf("%s = %v, want %v", ck.name, ck.got, ck.want)
		}
	}
	// The clients default follows proxy.allowed_clients.
	c = mustParse(t, "/etc/balise/balise.toml", "[proxy]\nallowed_clients = [\"10.0.0.0/8\"]\n[exceptions]\nstate_dir = \"/var/lib/balise\"\n")
	if want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}; !reflect.DeepEqual(c.Proxy.Auth.Clients, want) {
		t.Errorf("Proxy.Auth.Clients = %v, want %v", c.Proxy.Auth.Clients, want)
	}
	if c.Identity.KeyFile != "/var/lib/balise/identity.key" {
		t.Errorf("Identity.KeyFile = %q, want it in exceptions.state_dir", c.Identity.KeyFile)
	}
}

// writeFile writes a file in dir and returns its path.
func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// A complete identity setup: paths resolved from the configuration's
// directory, the password read (its final newline dropped), defaults of
// the keys left out.
func TestIdentityFull(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "directory-password", "s3cr3t pass\r\n")
	src := `[proxy]
allowed_clients = ["10.0.0.0/8", "::ffff:172.16.0.0/108"]
[proxy.auth]
mode = "negotiate"
keytab = "proxy.keytab"
service_principal = "HTTP/proxy.chus.local@CHUS.LOCAL"
clients = ["10.20.0.0/16", "172.16.4.0/24"]
[directory]
url = "ldaps://dc1.chus.local:636"
ca_file = "ad-ca.pem"
bind_dn = "svc-balise@chus.local"
bind_password_file = "directory-password"
base_dn = "DC=chus,DC=local"
[identity]
binding_ttl = "1h"
shared_after = 3
log = "none"
key_file = "keys/identity.key"
`
	c := mustParse(t, filepath.Join(dir, "balise.toml"), src)
	d := c.Directory
	if d == nil {
		t.Fatal("Directory is nil")
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"Directory.URL", d.URL, "ldaps://dc1.chus.local:636"},
		{"Directory.CAFile", d.CAFile, filepath.Join(dir, "ad-ca.pem")},
		{"Directory.BindPasswordFile", d.BindPasswordFile, filepath.Join(dir, "directory-password")},
		{"Directory.BindPassword", d.BindPassword.Value(), "s3cr3t pass"},
		{"Directory.Kind", d.Kind, "ad"},
		{"Directory.UserAttribute", d.UserAttribute, "sAMAccountName"},
		{"Directory.CacheTTL", d.CacheTTL, 10 * time.Minute},
		{"Directory.Timeout", d.Timeout, 2 * time.Second},
		{"Proxy.Auth.Keytab", c.Proxy.Auth.Keytab, filepath.Join(dir, "proxy.keytab")},
		{"Proxy.Auth.ServicePrincipal", c.Proxy.Auth.ServicePrincipal, "HTTP/proxy.chus.local@CHUS.LOCAL"},
		{"Proxy.Auth.Clients", len(c.Proxy.Auth.Clients), 2},
		{"Identity.BindingTTL", c.Identity.BindingTTL, time.Hour},
		{"Identity.SharedAfter", c.Identity.SharedAfter, 3},
		{"Identity.Log", c.Identity.Log, "none"},
		{"Identity.KeyFile", c.Identity.KeyFile, filepath.Join(dir, "keys", "identity.key")},
		{"Warnings", len(c.Warnings), 0},
	}
	for _, ck := range checks {
		if !reflect.DeepEqual(ck.got, ck.want) {
			t.Errorf("%s = %v, want %v", ck.name, ck.got, ck.want)
		}
	}
	// OpenLDAP: StartTLS on ldap://, anonymous, uid by default.
	c = mustParse(t, filepath.Join(dir, "b.toml"), "[directory]\nurl = \"ldap://ldap.example\"\nstart_tls = true\nbase_dn = \"dc=example\"\nkind = \"openldap\"\n")
	if c.Directory.UserAttribute != "uid" || !c.Directory.StartTLS || !c.Directory.BindPassword.IsZero() {
		t.Errorf("openldap directory = %+v", c.Directory)
	}
}

// The password never shows: not with %v, %+v, %#v, in JSON or in slog,
// nor in the configuration's problems when the file is wrong.
func TestDirectoryPasswordNeverPrinted(t *testing.T) {
	dir := t.TempDir()
	const pw = "Tr0ub4dor&3"
	writeFile(t, dir, "pw", pw+"\n")
	c := mustParse(t, filepath.Join(dir, "b.toml"), "[directory]\nurl = \"ldaps://dc\"\nbind_dn = \"svc\"\nbind_password_file = \"pw\"\nbase_dn = \"DC=x\"\n")
	var b strings.Builder
	fmt.Fprintf(&b, "%v %+v %#v %s", c.Directory, *c.Directory, *c.Directory, c.Directory.BindPassword)
	j, _ := json.Marshal(c.Directory)
	b.Write(j)
	slog.New(slog.NewTextHandler(&b, nil)).Info("x", "directory", *c.Directory, "pw", c.Directory.BindPassword)
	if strings.Contains(b.String(), pw) {
		t.Errorf("the password shows in %s", b.String())
	}
	if !strings.Contains(b.String(), "[redacted]") {
		t.Errorf("no [redacted] in %s", b.String())
	}
	writeFile(t, dir, "pw2", pw+"\nsecond line\n")
	_, err := Parse(filepath.Join(dir, "b.toml"), []byte("[directory]\nurl = \"ldaps://dc\"\nbind_dn = \"svc\"\nbind_password_file = \"pw2\"\nbase_dn = \"DC=x\"\n"))
	if err == nil || strings.Contains(err.Error(), pw) || !strings.Contains(err.Error(), "b.toml:4:22: directory.bind_password_file: ") {
		t.Errorf("two-line password file: %v", err)
	}
}

// Each refused setting is reported with file, line, column and key.
func TestIdentityErrors(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "empty", "\n")
	for _, tc := range []struct {
		src, want string
	}{
		{"[directory]\nurl = \"ldaps://dc\"\nstart_tls = true\nbind_dn = \"svc\"\nbind_password_file = \"empty\"\nbase_dn = \"DC=x\"\n",
			"x.toml:3:13: directory.start_tls: start_tls is for ldap:// URLs"},
		{"[directory]\nurl = \"ldaps://dc\"\nbind_dn = \"svc\"\nbind_password_file = \"empty\"\nbase_dn = \"DC=x\"\n",
			"x.toml:4:22: directory.bind_password_file: empty is empty"},
		{"[directory]\nurl = \"ldaps://dc\"\nbind_dn = \"svc\"\nbind_password_file = \"missing\"\nbase_dn = \"DC=x\"\n",
			"x.toml:4:22: directory.bind_password_file: open: no such file or directory"},
		{"[directory]\nurl = \"http://dc\"\nbase_dn = \"DC=x\"\nkind = \"openldap\"\n",
			"x.toml:2:7: directory.url: invalid directory URL \"http://dc\""},
		{"[directory]\nbase_dn = \"DC=x\"\nkind = \"openldap\"\n",
			"x.toml:1:1: directory: url is required"},
		{"[directory]\nurl = \"ldaps://dc\"\nbase_dn = \"DC=x\"\n",
			"x.toml:1:1: directory: bind_dn and bind_password_file are required"},
		{"[directory]\nurl = \"ldaps://dc\"\nkind = \"openldap\"\n",
			"x.toml:1:1: directory: base_dn is required"},
		{"[proxy.auth]\nmode = \"negotiate\"\nkeytab = \"k\"\n",
			"x.toml:1:1: proxy.auth: service_principal is required with mode = \"negotiate\""},
		{"[proxy.auth]\nclients = [\"0.0.0.0/0\"]\n",
			"x.toml:2:12: proxy.auth.clients[0]: 0.0.0.0/0 is not inside proxy.allowed_clients"},
		{"[proxy.auth]\nclients = [\"::/127\"]\n",
			"x.toml:2:12: proxy.auth.clients[0]: ::/127 is not inside proxy.allowed_clients"},
		{"[identity]\nshared_after = 17\n",
			"x.toml:2:16: identity.shared_after: 17 is out of range (1 to 16)"},
		{"[identity]\nbinding_ttl = \"0s\"\n",
			"x.toml:2:15: identity.binding_ttl: must be more than 0s"},
		{"[identity]\nkeyfile = \"k\"\n",
			"x.toml:2:1: identity.keyfile: unknown key (did you mean \"key_file\"?)"},
	} {
		_, err := Parse(filepath.Join(dir, "x.toml"), []byte(tc.src))
		if err == nil {
			t.Errorf("%q: no error, want %q", tc.src, tc.want)
			continue
		}
		got := strings.ReplaceAll(err.Error(), dir+string(filepath.Separator), "")
		if !strings.Contains(got, tc.want) {
			t.Errorf("%q:\n%s\nwant a line starting %q", tc.src, got, tc.want)
		}
	}
	// A client inside allowed_clients (and an IPv4-mapped form of one) is fine.
	mustParse(t, "x.toml", "[proxy]\nallowed_clients = [\"10.0.0.0/8\"]\n[proxy.auth]\nclients = [\"10.1.2.3\", \"::ffff:10.9.0.0/112\"]\n")
}

// Risky but valid settings are warned about, with their position.
func TestIdentityWarnings(t *testing.T) {
	src := `[proxy.auth]
mode = "negotiate"
keytab = "k"
service_principal = "HTTP/proxy.example"
challenge = "always"
clients = []
[identity]
log = "name"
`
	c, err := Parse("w.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"w.toml:2:8: warning: proxy.auth.mode: no [directory]",
		"w.toml:5:13: warning: proxy.auth.challenge: \"always\" asks every request",
		"w.toml:6:11: warning: proxy.auth.clients: is empty",
		"w.toml:8:7: warning: identity.log: \"name\" writes users' names",
	}
	if len(c.Warnings) != len(want) {
		t.Fatalf("warnings = %v, want %d", c.Warnings, len(want))
	}
	for i, w := range want {
		if got := c.Warnings[i].String(); !strings.HasPrefix(got, w) {
			t.Errorf("warning %d = %q, want prefix %q", i, got, w)
		}
	}
	if !strings.Contains(c.Warnings[1].Msg, "Law 25") {
		t.Errorf("challenge warning %q does not name Law 25", c.Warnings[1].Msg)
	}
}
