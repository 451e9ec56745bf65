package directory

import (
	"context"
	"crypto/x509"
	"errors"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/balise-net/balise/internal/adtest"
)

var ad adtest.Shared

func TestMain(m *testing.M) {
	code := m.Run()
	ad.Close()
	os.Exit(code)
}

var fixtureOnce sync.Once

// fixture returns the shared DC holding:
//
//	alice ∈ nurses ∈ clinical; bob in no group of his own;
//	carol, dave, erin: users never looked up before the test that uses them.
func fixture(t *testing.T) *adtest.DC {
	t.Helper()
	dc := ad.DC(t)
	fixtureOnce.Do(func() {
		for _, u := range []string{"alice", "bob", "carol", "dave", "erin"} {
			if _, err := dc.AddUser(u, u+"-pw"); err != nil {
				t.Fatal(err)
			}
		}
		for _, g := range []string{"nurses", "clinical"} {
			if _, err := dc.AddGroup(g); err != nil {
				t.Fatal(err)
			}
		}
		if err := dc.AddMembers("nurses", "alice"); err != nil {
			t.Fatal(err)
		}
		if err := dc.AddMembers("clinical", "nurses"); err != nil {
			t.Fatal(err)
		}
	})
	return dc
}

func config(dc *adtest.DC) Config {
	return Config{
		URL:          dc.LDAPSURL(),
		RootCAs:      dc.CertPool(),
		BindDN:       dc.AdminDN(),
		BindPassword: dc.AdminPassword(),
		BaseDN:       dc.BaseDN(),
	}
}

func newDirectory(t *testing.T, cfg Config) *Directory {
	t.Helper()
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func TestConfigErrors(t *testing.T) {
	ok := Config{URL: "ldaps://dc1.chus.local", BindDN: "svc@chus.local", BindPassword: "x", BaseDN: "DC=chus,DC=local"}
	tests := []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"plain ldap", func(c *Config) { c.URL = "ldap://dc1.chus.local" }, "plain ldap:// is refused"},
		{"ldaps with start_tls", func(c *Config) { c.StartTLS = true }, "start_tls applies to ldap:// only"},
		{"other scheme", func(c *Config) { c.URL = "http://dc1.chus.local" }, "scheme must be ldaps or ldap"},
		{"no url", func(c *Config) { c.URL = "" }, "url is required"},
		{"path", func(c *Config) { c.URL = "ldaps://dc1/DC=x" }, "want ldaps://host[:port]"},
		{"no bind dn", func(c *Config) { c.BindDN = "" }, "bind_dn is required"},
		{"empty bind password", func(c *Config) { c.BindPassword = "" }, "unauthenticated bind"},
		{"no base", func(c *Config) { c.BaseDN = "" }, "base_dn is required"},
		{"kind", func(c *Config) { c.Kind = "novell" }, `kind "novell"`},
		{"attribute", func(c *Config) { c.UserAttribute = "uid)(x" }, "not an attribute name"},
		{"ca file", func(c *Config) { c.CAFile = "/nonexistent/ca.pem" }, "ca_file"},
		{"negative ttl", func(c *Config) { c.CacheTTL = -time.Second }, "cache_ttl -1s is negative"},
	}
	for _, tt := range tests {
		cfg := ok
		tt.edit(&cfg)
		_, err := New(cfg)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: New = %v, want an error containing %q", tt.name, err, tt.want)
		}
	}
	if _, err := New(ok); err != nil {
		t.Errorf("New(%+v) = %v", ok, err)
	}
	cfg := ok
	cfg.URL, cfg.StartTLS = "ldap://dc1.chus.local", true
	if _, err := New(cfg); err != nil {
		t.Errorf("ldap:// with StartTLS: %v", err)
	}
}

func TestDefaults(t *testing.T) {
	s, err := Config{URL: "ldaps://dc1", BindDN: "a", BindPassword: "b", BaseDN: "c"}.settings()
	if err != nil {
		t.Fatal(err)
	}
	if s.Kind != KindAD || s.UserAttribute != "sAMAccountName" || s.CacheTTL != 10*time.Minute ||
		s.Timeout != 2*time.Second || s.NegativeTTL != time.Minute || s.CacheSize != 10000 || s.addr != "dc1:636" {
		t.Errorf("defaults = %+v", s)
	}
	s, _ = Config{URL: "ldap://[::1]", StartTLS: true, BindDN: "a", BindPassword: "b", BaseDN: "c", Kind: KindOpenLDAP, CacheTTL: time.Second}.settings()
	if s.UserAttribute != "uid" || s.addr != "[::1]:389" || s.NegativeTTL != time.Second || s.RetryAfter != time.Second {
		t.Errorf("openldap defaults = %+v", s)
	}
}

func has(groups []string, want ...string) bool {
	for _, w := range want {
		if !slices.ContainsFunc(groups, func(g string) bool { return strings.EqualFold(g, w) }) {
			return false
		}
	}
	return true
}

func TestGroupsNested(t *testing.T) {
	dc := fixture(t)
	reg := prometheus.NewRegistry()
	cfg := config(dc)
	cfg.Registerer = reg
	d := newDirectory(t, cfg)
	ctx := context.Background()
	base := dc.BaseDN()
	g, err := d.Groups(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"nurses", "CN=nurses,CN=Users," + base, "clinical", "CN=clinical,CN=Users," + base, "Domain Users", "CN=Domain Users,CN=Users," + base}
	if !has(g, want...) {
		t.Errorf("Groups(alice) = %q, want %q", g, want)
	}
	if !slices.IsSorted(g) {
		t.Errorf("Groups(alice) = %q, not sorted", g)
	}
	// Case-insensitive user names share one entry.
	g2, err := d.Groups(ctx, "ALICE")
	if err != nil || !slices.Equal(g, g2) {
		t.Errorf("Groups(ALICE) = %q, %v, want %q", g2, err, g)
	}
	g, err = d.Groups(ctx, "bob")
	if err != nil || has(g, "nurses") || has(g, "clinical") || !has(g, "Domain Users") {
		t.Errorf("Groups(bob) = %q, %v, want Domain Users only", g, err)
	}
	if st := d.Stats(); st.Misses != 2 || st.Hits != 1 || !st.Up || st.Entries != 2 || st.LastContact.IsZero() {
		t.Errorf("Stats = %+v, want 2 misses, 1 hit, up, 2 entries", st)
	}
	if c, ok := d.Cached("Alice"); !ok || !has(c, "clinical") {
		t.Errorf("Cached(Alice) = %q, %v", c, ok)
	}
	if c, ok := d.Cached("carol"); ok {
		t.Errorf("Cached(carol) = %q, true before any lookup", c)
	}
	if n := testutil.ToFloat64(d.m.lookups[resultMiss]); n != 2 {
		t.Errorf("lookups{result=miss} = %v, want 2", n)
	}
	out, err := testutil.CollectAndLint(reg)
	if err != nil || len(out) > 0 {
		t.Errorf("metrics lint: %v %v", err, out)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if strings.Contains(strings.ToLower(mf.String()), "alice") {
			t.Errorf("metric %s names a user: %v", mf.GetName(), mf)
		}
	}
}

func TestStartTLS(t *testing.T) {
	dc := fixture(t)
	cfg := config(dc)
	cfg.URL, cfg.StartTLS = dc.LDAPURL(), true
	d := newDirectory(t, cfg)
	g, err := d.Groups(context.Background(), "alice")
	if err != nil || !has(g, "clinical") {
		t.Errorf("Groups(alice) over StartTLS = %q, %v", g, err)
	}
}

func TestUntrustedCertificate(t *testing.T) {
	dc := fixture(t)
	for _, url := range []string{dc.LDAPSURL(), dc.LDAPURL()} {
		cfg := config(dc)
		cfg.URL, cfg.StartTLS = url, strings.HasPrefix(url, "ldap:")
		cfg.RootCAs = x509.NewCertPool() // trusts nothing
		d := newDirectory(t, cfg)
		_, err := d.Groups(context.Background(), "alice")
		if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "certificate") {
			t.Errorf("%s with an untrusted certificate: %v, want a certificate error", url, err)
		}
	}
}

func TestOpenLDAPKind(t *testing.T) {
	dc := fixture(t)
	cfg := config(dc)
	cfg.Kind, cfg.UserAttribute = KindOpenLDAP, "sAMAccountName"
	d := newDirectory(t, cfg)
	g, err := d.Groups(context.Background(), "alice")
	// memberOf lists direct groups only.
	if err != nil || !has(g, "nurses", "CN=nurses,CN=Users,"+dc.BaseDN()) || has(g, "clinical") {
		t.Errorf("Groups(alice) by memberOf = %q, %v, want nurses only", g, err)
	}
}

func TestUnknownUser(t *testing.T) {
	dc := fixture(t)
	d := newDirectory(t, config(dc))
	ctx := context.Background()
	if _, err := d.Groups(ctx, "frank"); !errors.Is(err, ErrUnknownUser) {
		t.Fatalf("Groups(frank) = %v, want ErrUnknownUser", err)
	}
	// frank now exists, but the negative answer is cached.
	if _, err := dc.AddUser("frank", "frank-pw"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Groups(ctx, "frank"); !errors.Is(err, ErrUnknownUser) {
		t.Errorf("Groups(frank) again = %v, want the cached ErrUnknownUser", err)
	}
	if g, ok := d.Cached("frank"); !ok || g != nil {
		t.Errorf("Cached(frank) = %q, %v, want nil, true", g, ok)
	}
	if st := d.Stats(); st.Negative != 2 || st.Misses != 0 {
		t.Errorf("Stats = %+v, want 2 negative, 0 misses", st)
	}
	for _, bad := range []string{"", "a\x00b", strings.Repeat("x", 300), "*"} {
		if _, err := d.Groups(ctx, bad); !errors.Is(err, ErrUnknownUser) {
			t.Errorf("Groups(%q) = %v, want ErrUnknownUser", bad, err)
		}
	}
	// After the negative TTL, frank is asked again.
	cfg := config(dc)
	cfg.NegativeTTL = 50 * time.Millisecond
	d = newDirectory(t, cfg)
	d.Groups(ctx, "grace")
	if _, err := dc.AddUser("grace", "grace-pw"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if g, err := d.Groups(ctx, "grace"); err != nil || !has(g, "Domain Users") {
		t.Errorf("Groups(grace) after the negative TTL = %q, %v", g, err)
	}
}

func TestCoalesced(t *testing.T) {
	dc := fixture(t)
	d := newDirectory(t, config(dc))
	var wg sync.WaitGroup
	results := make([][]string, 20)
	for i := range results {
		wg.Go(func() {
			g, err := d.Groups(context.Background(), "alice")
			if err != nil {
				t.Error(err)
			}
			results[i] = g
		})
	}
	wg.Wait()
	for _, g := range results {
		if !has(g, "clinical") {
			t.Errorf("Groups(alice) = %q", g)
		}
	}
	// One exchange with the directory for twenty callers.
	if n := testutil.CollectAndCount(d.m.duration.(prometheus.Collector)); n != 1 {
		t.Fatalf("histogram series = %d", n)
	}
	if c := sampleCount(t, d); c != 1 {
		t.Errorf("directory exchanges = %d, want 1", c)
	}
}

func sampleCount(t *testing.T, d *Directory) uint64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(d.m.duration.(prometheus.Collector))
	mfs, err := reg.Gather()
	if err != nil || len(mfs) != 1 {
		t.Fatalf("gather: %v", err)
	}
	return mfs[0].GetMetric()[0].GetHistogram().GetSampleCount()
}

// TestDirectoryDown stops the DC: known users keep their last known
// memberships (counted stale), a user never seen fails within the
// timeout, and lookups recover when the DC is back.
func TestDirectoryDown(t *testing.T) {
	dc := fixture(t)
	cfg := config(dc)
	cfg.CacheTTL = 200 * time.Millisecond
	cfg.RetryAfter = 100 * time.Millisecond
	cfg.Timeout = time.Second
	d := newDirectory(t, cfg)
	ctx := context.Background()
	before, err := d.Groups(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	dc.Stop()
	t.Cleanup(func() {
		if err := dc.Start(); err != nil {
			t.Fatal(err)
		}
	})
	time.Sleep(250 * time.Millisecond) // past CacheTTL
	g, err := d.Groups(ctx, "alice")
	if err != nil || !slices.Equal(g, before) {
		t.Fatalf("Groups(alice) with the DC down = %q, %v, want the last known %q", g, err, before)
	}
	g, err = d.Groups(ctx, "alice") // within RetryAfter: not asked again
	if err != nil || !slices.Equal(g, before) {
		t.Fatalf("Groups(alice) again = %q, %v", g, err)
	}
	st := d.Stats()
	if st.Stale != 2 || st.Up {
		t.Errorf("Stats = %+v, want 2 stale, down", st)
	}
	start := time.Now()
	_, err = d.Groups(ctx, "carol")
	if !errors.Is(err, ErrUnavailable) {
		t.Errorf("Groups(carol) with the DC down = %v, want ErrUnavailable", err)
	}
	if el := time.Since(start); el > cfg.Timeout+500*time.Millisecond {
		t.Errorf("Groups(carol) took %v, timeout %v", el, cfg.Timeout)
	}
	if c, ok := d.Cached("alice"); !ok || !slices.Equal(c, before) {
		t.Errorf("Cached(alice) = %q, %v", c, ok)
	}
	if age := d.contactAge(); age < 250*time.Millisecond {
		t.Errorf("contact age = %v, want the time since the DC stopped", age)
	}

	if err := dc.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(150 * time.Millisecond) // past RetryAfter
	misses := d.Stats().Misses
	if g, err := d.Groups(ctx, "carol"); err != nil || !has(g, "Domain Users") {
		t.Errorf("Groups(carol) after the DC came back = %q, %v", g, err)
	}
	if st := d.Stats(); st.Misses != misses+1 || !st.Up {
		t.Errorf("Stats = %+v, want a fresh answer and up", st)
	}
}

// TestDirectoryHangs freezes the DC: connections open but nothing
// answers; lookups still return within the timeout.
func TestDirectoryHangs(t *testing.T) {
	dc := fixture(t)
	cfg := config(dc)
	cfg.Timeout = 500 * time.Millisecond
	cfg.CacheTTL = 100 * time.Millisecond
	d := newDirectory(t, cfg)
	ctx := context.Background()
	before, err := d.Groups(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	dc.Pause()
	defer dc.Resume()
	time.Sleep(150 * time.Millisecond)
	for _, user := range []string{"dave", "alice"} {
		start := time.Now()
		g, err := d.Groups(ctx, user)
		if el := time.Since(start); el > cfg.Timeout+500*time.Millisecond {
			t.Errorf("Groups(%s) took %v with the DC frozen, timeout %v", user, el, cfg.Timeout)
		}
		switch user {
		case "dave":
			if !errors.Is(err, ErrUnavailable) {
				t.Errorf("Groups(dave) = %v, want ErrUnavailable", err)
			}
		case "alice":
			if err != nil || !slices.Equal(g, before) {
				t.Errorf("Groups(alice) = %q, %v, want the last known", g, err)
			}
		}
	}
	// A caller's own deadline is honoured too.
	cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := d.Groups(cctx, "erin"); !errors.Is(err, ErrUnavailable) || time.Since(start) > 500*time.Millisecond {
		t.Errorf("Groups(erin) with a 100ms context = %v after %v", err, time.Since(start))
	}
}

func TestAuthenticate(t *testing.T) {
	dc := fixture(t)
	reg := prometheus.NewRegistry()
	cfg := config(dc)
	cfg.Registerer = reg
	for _, url := range []string{dc.LDAPSURL(), dc.LDAPURL()} {
		cfg.URL, cfg.StartTLS = url, strings.HasPrefix(url, "ldap:")
		cfg.Registerer = nil
		d := newDirectory(t, cfg)
		ctx := context.Background()
		tests := []struct {
			user, password string
			want           error
		}{
			{"alice", "alice-pw", nil},
			{"ALICE", "alice-pw", nil},
			{"alice", "wrong", ErrInvalidCredentials},
			{"alice", "", ErrInvalidCredentials},
			{"nobody", "x", ErrInvalidCredentials},
			{"", "x", ErrInvalidCredentials},
			{"alice*", "alice-pw", ErrInvalidCredentials},
		}
		for _, tt := range tests {
			if err := d.Authenticate(ctx, tt.user, tt.password); !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
				t.Errorf("%s: Authenticate(%q, %q) = %v, want %v", url, tt.user, tt.password, err, tt.want)
			}
		}
		if n := testutil.ToFloat64(d.m.auths[authOK]); n != 2 {
			t.Errorf("authentications{ok} = %v, want 2", n)
		}
	}
	d := newDirectory(t, config(dc))
	dc.Stop()
	defer func() {
		if err := dc.Start(); err != nil {
			t.Fatal(err)
		}
	}()
	if err := d.Authenticate(context.Background(), "alice", "alice-pw"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Authenticate with the DC down = %v, want ErrUnavailable", err)
	}
}

// TestUsers lists the directory's users (for identity reveal): every
// user made by the fixture, by login name, groups not among them, and
// stopping when asked.
func TestUsers(t *testing.T) {
	dc := fixture(t)
	d := newDirectory(t, config(dc))
	var names []string
	if err := d.Users(context.Background(), func(n string) bool { names = append(names, strings.ToLower(n)); return true }); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"alice", "bob", "carol", "dave", "erin"} {
		if !slices.Contains(names, want) {
			t.Errorf("Users lacks %s: %v", want, names)
		}
	}
	for _, not := range []string{"nurses", "clinical"} {
		if slices.Contains(names, not) {
			t.Errorf("Users lists the group %s", not)
		}
	}
	n := 0
	d.Users(context.Background(), func(string) bool { n++; return n < 2 })
	if n != 2 {
		t.Errorf("yield called %d times after returning false at 2", n)
	}
}
