package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/balise-net/balise/internal/policy"
)

func mustParse(t *testing.T, path, data string) *Config {
	t.Helper()
	c, err := Parse(path, []byte(data))
	if err != nil {
		t.Fatalf("Parse(%s):\n%v", path, err)
	}
	return c
}

func TestParseDefaults(t *testing.T) {
	c := mustParse(t, "/etc/balise/balise.toml", "")
	checks := []struct {
		name      string
		got, want any
	}{
		{"Timezone", c.Timezone, "America/Toronto"},
		{"Location", c.Location.String(), "America/Toronto"},
		{"DefaultAction", c.DefaultAction, "block"},
		{"BlockCanaries", c.BlockCanaries, true},
		{"Log.DecisionWindow", c.Log.DecisionWindow, time.Minute},
		{"ListCache.CacheDir", c.ListCache.CacheDir, "/etc/balise/balise-data/lists"},
		{"Proxy.Listen", c.Proxy.Listen, []string{"127.0.0.1:3128"}},
		{"Proxy.AllowedClients", c.Proxy.AllowedClients, []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}},
		{"Proxy.ConnectPorts", c.Proxy.ConnectPorts, []uint16{443}},
		{"Proxy.IPLiterals", c.Proxy.IPLiterals, "sni"},
		{"Proxy.TransparentMode", c.Proxy.TransparentMode, "redirect"},
		{"Proxy.NoSNI", c.Proxy.NoSNI, "deny"},
		{"Proxy.AllowNoSNI", c.Proxy.AllowNoSNI, false},
		{"Proxy.TPROXY", c.Proxy.TPROXY, false},
		{"Proxy.ParentURL", c.Proxy.ParentURL == nil, true},
		{"Proxy.DialTimeout", c.Proxy.DialTimeout, 10 * time.Second},
		{"Proxy.IdleTimeout", c.Proxy.IdleTimeout, 5 * time.Minute},
		{"Proxy.MaxTunnelLifetime", c.Proxy.MaxTunnelLifetime, 12 * time.Hour},
		{"Proxy.HeaderTimeout", c.Proxy.HeaderTimeout, 10 * time.Second},
		{"Proxy.MaxHeaderBytes", c.Proxy.MaxHeaderBytes, 65536},
		{"Proxy.MaxTunnelsPerClient", c.Proxy.MaxTunnelsPerClient, 256},
		{"Proxy.TLS.LeafValidity", c.Proxy.TLS.LeafValidity, 24 * time.Hour},
		{"Proxy.TLS.CertCacheSize", c.Proxy.TLS.CertCacheSize, 1024},
		{"DNS.Listen", c.DNS.Listen, []string{"127.0.0.1:5353"}},
		{"DNS.Upstreams", c.DNS.Upstreams, []string{"9.9.9.9:53", "149.112.112.112:53"}},
		{"DNS.Timeout", c.DNS.Timeout, time.Second},
		{"DNS.BlockResponse", c.DNS.BlockResponse, "nxdomain"},
		{"DNS.KeepECH", c.DNS.KeepECH, false},
		{"DNS.CacheSize", c.DNS.CacheSize, 100000},
		{"DNS.MaxTTL", c.DNS.MaxTTL, 24 * time.Hour},
		{"DNS.BlockedTTL", c.DNS.BlockedTTL, time.Minute},
		{"DNS.NegativeTTL", c.DNS.NegativeTTL, time.Hour},
		{"DNS.DisableStale", c.DNS.DisableStale, false},
		{"DNS.StaleTTL", c.DNS.StaleTTL, 30 * time.Second},
		{"DNS.StaleMaxAge", c.DNS.StaleMaxAge, 24 * time.Hour},
		{"DNS.RateLimit", c.DNS.RateLimit, 200.0},
		{"DNS.RateBurst", c.DNS.RateBurst, 400},
		{"DNS.AllowedClients", c.DNS.AllowedClients, []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}},
		{"DNS.MaxTCPPerClient", c.DNS.MaxTCPPerClient, 16},
		{"DNS.TCPIdleTimeout", c.DNS.TCPIdleTimeout, 10 * time.Second},
		{"DNS.ForwardAny", c.DNS.ForwardAny, false},
		{"Proxy.OpaquePorts", len(c.Proxy.OpaquePorts), 0},
		{"Warnings", len(c.Warnings), 0},
		{"Metrics.Listen", c.Metrics.Listen, []string{"127.0.0.1:9464"}},
		{"Exceptions", c.Exceptions == nil, true},
		{"Groups", len(c.Groups), 0},
		{"Rules", len(c.Rules), 0},
	}
	for _, ck := range checks {
		if !reflect.DeepEqual(ck.got, ck.want) {
			t.Errorf("empty config: %s = %#v, want %#v", ck.name, ck.got, ck.want)
		}
	}
}

func TestParseValues(t *testing.T) {
	tests := []struct {
		name  string
		path  string
		toml  string
		check func(t *testing.T, c *Config)
	}{
		{
			name: "listen as one string",
			toml: `[proxy]
listen = "0.0.0.0:3128"`,
			check: func(t *testing.T, c *Config) {
				if want := []string{"0.0.0.0:3128"}; !slices.Equal(c.Proxy.Listen, want) {
					t.Errorf("Proxy.Listen = %q, want %q", c.Proxy.Listen, want)
				}
			},
		},
		{
			name: "listen as an array",
			toml: `[dns]
listen = ["127.0.0.1:53", "[::1]:53"]
[metrics]
listen = []`,
			check: func(t *testing.T, c *Config) {
				if want := []string{"127.0.0.1:53", "[::1]:53"}; !slices.Equal(c.DNS.Listen, want) {
					t.Errorf("DNS.Listen = %q, want %q", c.DNS.Listen, want)
				}
				if len(c.Metrics.Listen) != 0 {
					t.Errorf("Metrics.Listen = %q, want none", c.Metrics.Listen)
				}
			},
		},
		{
			name: "empty listen string turns a listener off",
			toml: `[proxy]
listen = ""`,
			check: func(t *testing.T, c *Config) {
				if len(c.Proxy.Listen) != 0 {
					t.Errorf("Proxy.Listen = %q, want none", c.Proxy.Listen)
				}
			},
		},
		{
			name: "relative paths resolve from the file's directory",
			path: "/etc/balise/balise.toml",
			toml: `[exceptions]
store = "data/balise.db"
audit_log = "/var/log/balise/audit.jsonl"
[lists]
cache_dir = "cache"`,
			check: func(t *testing.T, c *Config) {
				ex := c.Exceptions
				if ex == nil {
					t.Fatal("Exceptions = nil, want the section")
				}
				for _, ck := range []struct{ got, want string }{
					{ex.Store, "/etc/balise/data/balise.db"},
					{ex.AuditLog, "/var/log/balise/audit.jsonl"},
					{ex.StateDir, "/etc/balise/balise-data"},
					{c.ListCache.CacheDir, "/etc/balise/cache"},
				} {
					if ck.got != ck.want {
						t.Errorf("path = %q, want %q", ck.got, ck.want)
					}
				}
			},
		},
		{
			name: "exceptions defaults and list cache under its state_dir",
			path: "/srv/b/c.toml",
			toml: `[exceptions]
state_dir = "/var/lib/balise"`,
			check: func(t *testing.T, c *Config) {
				ex := c.Exceptions
				want := []time.Duration{time.Hour, 4 * time.Hour, 24 * time.Hour, 7 * 24 * time.Hour, 30 * 24 * time.Hour}
				if !slices.Equal(ex.Durations, want) {
					t.Errorf("Durations = %v, want %v", ex.Durations, want)
				}
				if ex.MaxPendingPerClient != 3 || ex.MaxPerDayPerClient != 10 || ex.GrantPoll != time.Second ||
					ex.NotifyTimeout != 5*time.Second || ex.PendingAlertAfter != 24*time.Hour || ex.Retention != 365*24*time.Hour {
					t.Errorf("Exceptions = %+v, want the documented defaults", ex)
				}
				if c.ListCache.CacheDir != "/var/lib/balise/lists" {
					t.Errorf("CacheDir = %q, want /var/lib/balise/lists", c.ListCache.CacheDir)
				}
			},
		},
		{
			name: "durations with days",
			toml: `[exceptions]
durations = ["90m", "1d12h", "7d"]
retention = "30d"`,
			check: func(t *testing.T, c *Config) {
				want := []time.Duration{90 * time.Minute, 36 * time.Hour, 7 * 24 * time.Hour}
				if !slices.Equal(c.Exceptions.Durations, want) {
					t.Errorf("Durations = %v, want %v", c.Exceptions.Durations, want)
				}
				if c.Exceptions.Retention != 30*24*time.Hour {
					t.Errorf("Retention = %v, want 720h", c.Exceptions.Retention)
				}
			},
		},
		{
			name: "upstreams in canonical form",
			toml: `[dns]
upstreams = ["10.0.0.53", "[2620:fe::fe]:53", "tls://dns.quad9.net", "tls://9.9.9.9#dns.quad9.net", "tls://[2620:fe::fe]:853"]
[[dns.forward]]
zone = "CISSS.Local."
upstreams = ["10.0.0.10"]`,
			check: func(t *testing.T, c *Config) {
				want := []string{"10.0.0.53:53", "[2620:fe::fe]:53", "tls://dns.quad9.net:853#dns.quad9.net", "tls://9.9.9.9:853#dns.quad9.net", "tls://[2620:fe::fe]:853"}
				if !slices.Equal(c.DNS.Upstreams, want) {
					t.Errorf("Upstreams = %q, want %q", c.DNS.Upstreams, want)
				}
				if len(c.DNS.Forward) != 1 || c.DNS.Forward[0].Zone != "cisss.local" || c.DNS.Forward[0].Upstreams[0] != "10.0.0.10:53" {
					t.Errorf("Forward = %+v, want zone cisss.local to 10.0.0.10:53", c.DNS.Forward)
				}
			},
		},
		{
			name: "sinkhole addresses",
			toml: `[dns]
block_response = "sinkhole"
sinkhole = ["10.0.0.5", "fd00::5"]`,
			check: func(t *testing.T, c *Config) {
				want := []netip.Addr{netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("fd00::5")}
				if !slices.Equal(c.DNS.Sinkhole, want) {
					t.Errorf("Sinkhole = %v, want %v", c.DNS.Sinkhole, want)
				}
			},
		},
		{
			name: "a file with only rules",
			toml: `[[rule]]
name = "tout"
groups = ["*"]
services = ["*"]
action = "allow"`,
			check: func(t *testing.T, c *Config) {
				want := []Rule{{Name: "tout", Groups: []string{"*"}, Services: []string{"*"}, Action: "allow", Mode: "enforce"}}
				if !reflect.DeepEqual(c.Rules, want) {
					t.Errorf("Rules = %+v, want %+v", c.Rules, want)
				}
			},
		},
		{
			name: "groups, schedules, lists and rules",
			path: "/etc/balise/b.toml",
			toml: `timezone = "Europe/Paris"
default_action = "allow"
block_canaries = false
[[group]]
name = "communications"
networks = ["10.20.30.0/24", "10.20.31.7", "fd00:20::/48"]
directory_groups = ["GRP-Communications"]
[[schedule]]
name = "pauses"
windows = ["mon-fri 12:00-13:00", "sat 22:30-02:00"]
[[list]]
name = "jeux"
display_name = "Jeux en ligne"
category = "games"
domains = ["Games.Example.", "jeu.example"]
refresh = "12h"
[[list]]
name = "formation"
allow = true
domains = ["player.vimeo.com"]
[[rule]]
name = "comms"
groups = ["communications"]
services = ["x", "jeux"]
categories = ["games", "networking"]
during = ["pauses"]
action = "block"`,
			check: func(t *testing.T, c *Config) {
				if c.Location.String() != "Europe/Paris" || c.DefaultAction != "allow" || c.BlockCanaries {
					t.Errorf("top = %v %q %v, want Europe/Paris allow false", c.Location, c.DefaultAction, c.BlockCanaries)
				}
				wantG := []Group{{Name: "communications", Networks: []netip.Prefix{
					netip.MustParsePrefix("10.20.30.0/24"), netip.MustParsePrefix("10.20.31.7/32"), netip.MustParsePrefix("fd00:20::/48"),
				}, DirectoryGroups: []string{"GRP-Communications"}}}
				if !reflect.DeepEqual(c.Groups, wantG) {
					t.Errorf("Groups = %+v, want %+v", c.Groups, wantG)
				}
				wantS := []Schedule{{Name: "pauses", Windows: []string{"mon-fri 12:00-13:00", "sat 22:30-02:00"}}}
				for _, w := range wantS[0].Windows {
					pw, err := policy.ParseWindow(w)
					if err != nil {
						t.Fatal(err)
					}
					wantS[0].Parsed = append(wantS[0].Parsed, pw)
				}
				if !reflect.DeepEqual(c.Schedules, wantS) {
					t.Errorf("Schedules = %+v, want %+v", c.Schedules, wantS)
				}
				if len(c.Lists) != 2 {
					t.Fatalf("Lists = %+v, want 2", c.Lists)
				}
				l := c.Lists[0]
				if l.DisplayName != "Jeux en ligne" || l.Category != "games" || !slices.Equal(l.Domains, []string{"games.example", "jeu.example"}) || l.Refresh != 12*time.Hour {
					t.Errorf("Lists[0] = %+v", l)
				}
				if !c.Lists[1].Allow {
					t.Errorf("Lists[1].Allow = false, want true")
				}
				wantR := []Rule{{Name: "comms", Groups: []string{"communications"}, Services: []string{"twitter", "jeux"},
					Categories: []string{"games", "networking"}, During: []string{"pauses"}, Action: "block", Mode: "enforce"}}
				if !reflect.DeepEqual(c.Rules, wantR) {
					t.Errorf("Rules = %+v, want %+v", c.Rules, wantR)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.check(t, mustParse(t, tt.path, tt.toml))
		})
	}
}

func TestProblemString(t *testing.T) {
	tests := []struct {
		p    Problem
		want string
	}{
		{Problem{File: "b.toml", Line: 3, Col: 7, Key: "dns.listen", Msg: "bad"}, "b.toml:3:7: dns.listen: bad"},
		{Problem{File: "b.toml", Line: 3, Col: 7, Msg: "syntax"}, "b.toml:3:7: syntax"},
		{Problem{File: "b.toml", Key: "rule[2].during[0]", Msg: `unknown schedule "pause"`}, `b.toml: rule[2].during[0]: unknown schedule "pause"`},
		{Problem{Key: "timezone", Msg: "x"}, "(default): timezone: x"},
	}
	for _, tt := range tests {
		if got := tt.p.String(); got != tt.want {
			t.Errorf("Problem%+v.String() = %q, want %q", tt.p, got, tt.want)
		}
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "absent.toml"))
	var ps Problems
	if !errors.As(err, &ps) || len(ps) != 1 {
		t.Fatalf("Load(absent) = %v, want one problem", err)
	}
}

// TestLoadWritesNothing: check and explain load configurations anywhere;
// Load and Spec must not create stores, caches or directories.
func TestLoadWritesNothing(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "b.toml")
	data := `[exceptions]
store = "data/b.db"
[[list]]
name = "remote"
category = "networking"
urls = ["https://lists.example/l.txt"]
[[rule]]
name = "r"
groups = ["*"]
services = ["remote"]
action = "block"
`
	if err := os.WriteFile(cfg, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Spec(); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("after Load and Spec the directory holds %d entries, want only the config", len(entries))
	}
}

func TestProblemsSorted(t *testing.T) {
	ps := Problems{
		{File: "list", Line: 1, Col: 1, Msg: "list"},
		{File: "a", Key: "k", Msg: "no position"},
		{File: "a", Line: 9, Col: 1, Msg: "nine"},
		{File: "a", Line: 2, Col: 5, Msg: "two-five"},
		{File: "a", Line: 2, Col: 1, Msg: "two-one"},
	}
	ps.sort("a")
	var got []string
	for _, p := range ps {
		got = append(got, p.Msg)
	}
	want := []string{"two-one", "two-five", "nine", "no position", "list"}
	if !slices.Equal(got, want) {
		t.Errorf("sorted = %q, want %q", got, want)
	}
}
