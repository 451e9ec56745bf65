package main

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/balise-net/balise/config"
	"github.com/balise-net/balise/internal/policy"
)

// testPolicy exercises every kind of decision explain must describe: a
// communications subnet, a lunch break, a window crossing midnight, the
// two DST days of America/Toronto, a local list with an IDN name.
const testPolicy = `timezone = "America/Toronto"
default_action = "block"

[[group]]
name = "communications"
networks = ["10.20.30.0/24", "2001:db8:30::/48"]

[[group]]
name = "personnel"
networks = ["10.20.0.0/16", "2001:db8::/32"]

[[schedule]]
name = "diner"
windows = ["mon-fri 12:00-13:00"]

[[schedule]]
name = "soir"
windows = ["sat 22:30-02:00"]

[[schedule]]
name = "automne"
windows = ["sun 01:00-02:00"]

[[schedule]]
name = "printemps"
windows = ["sun 02:00-03:00"]

[[list]]
name = "reseau-local"
category = "networking"
domains = ["réseau-social.example"]

[[rule]]
name = "communications"
groups = ["communications"]
services = ["*"]
action = "allow"

[[rule]]
name = "diner"
groups = ["personnel"]
categories = ["networking", "media-sharing", "microblogging"]
during = ["diner"]
action = "allow"

[[rule]]
name = "soir"
groups = ["personnel"]
services = ["tiktok"]
during = ["soir"]
action = "allow"

[[rule]]
name = "automne"
groups = ["personnel"]
services = ["youtube"]
during = ["automne"]
action = "allow"

[[rule]]
name = "printemps"
groups = ["personnel"]
services = ["pinterest"]
during = ["printemps"]
action = "allow"
`

// loadPolicy loads and compiles a configuration text.
func loadPolicy(t *testing.T, text string) (*config.Config, *policy.Policy) {
	t.Helper()
	cfg, err := config.Parse(writeConfig(t, text), []byte(text))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	p, err := cfg.Compile()
	if err != nil {
		t.Fatalf("compile: %v", err)
	}
	return cfg, p
}

func mustTime(t *testing.T, s string) time.Time {
	t.Helper()
	at, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Fatal(err)
	}
	return at
}

func TestExplain(t *testing.T) {
	cfg, p := loadPolicy(t, testPolicy)
	const staff, comms = "10.20.1.5", "10.20.30.7"
	tests := []struct {
		name          string
		client, host  string
		at            string
		verdict       string
		normalized    string
		service, rule string
		reason, until string
		ip            bool
		groups        string
	}{
		{"communications subnet", comms, "www.facebook.com", "2026-05-12T14:00:00-04:00",
			"allow", "www.facebook.com", "facebook", "communications", "rule", "2026-05-13T14:00:00-04:00", false, "communications,personnel"},
		{"communications subnet v6", "2001:db8:30::7", "facebook.com", "2026-05-12T14:00:00-04:00",
			"allow", "facebook.com", "facebook", "communications", "rule", "2026-05-13T14:00:00-04:00", false, "communications,personnel"},
		{"staff in the lunch break", staff, "www.facebook.com", "2026-05-12T12:30:00-04:00",
			"allow", "www.facebook.com", "facebook", "diner", "rule", "2026-05-12T13:00:00-04:00", false, "personnel"},
		{"staff at the break's first second", staff, "facebook.com", "2026-05-12T12:00:00-04:00",
			"allow", "facebook.com", "facebook", "diner", "rule", "2026-05-12T13:00:00-04:00", false, "personnel"},
		{"staff at the break's end", staff, "facebook.com", "2026-05-12T13:00:00-04:00",
			"block", "facebook.com", "facebook", "", "default", "2026-05-13T12:00:00-04:00", false, "personnel"},
		{"staff outside the break", staff, "www.facebook.com", "2026-05-12T14:00:00-04:00",
			"block", "www.facebook.com", "facebook", "", "default", "2026-05-13T12:00:00-04:00", false, "personnel"},
		{"staff friday afternoon (until bounded to 24 h)", staff, "facebook.com", "2026-05-15T14:00:00-04:00",
			"block", "facebook.com", "facebook", "", "default", "2026-05-16T14:00:00-04:00", false, "personnel"},
		{"staff v6 outside the break", "2001:db8:1::5", "facebook.com", "2026-05-12T14:00:00-04:00",
			"block", "facebook.com", "facebook", "", "default", "2026-05-13T12:00:00-04:00", false, "personnel"},
		{"IPv4-mapped client", "::ffff:10.20.30.7", "facebook.com", "2026-05-12T14:00:00-04:00",
			"allow", "facebook.com", "facebook", "communications", "rule", "2026-05-13T14:00:00-04:00", false, "communications,personnel"},

		{"midnight window, friday night", staff, "www.tiktok.com", "2026-05-15T23:00:00-04:00",
			"block", "www.tiktok.com", "tiktok", "", "default", "2026-05-16T22:30:00-04:00", false, "personnel"},
		{"midnight window, saturday night", staff, "www.tiktok.com", "2026-05-16T23:00:00-04:00",
			"allow", "www.tiktok.com", "tiktok", "soir", "rule", "2026-05-17T02:00:00-04:00", false, "personnel"},
		{"midnight window, after midnight", staff, "www.tiktok.com", "2026-05-17T01:00:00-04:00",
			"allow", "www.tiktok.com", "tiktok", "soir", "rule", "2026-05-17T02:00:00-04:00", false, "personnel"},
		{"midnight window, at its end", staff, "www.tiktok.com", "2026-05-17T02:00:00-04:00",
			"block", "www.tiktok.com", "tiktok", "", "default", "2026-05-18T02:00:00-04:00", false, "personnel"},
		{"midnight window, sunday night (window starts saturdays only)", staff, "www.tiktok.com", "2026-05-17T23:00:00-04:00",
			"block", "www.tiktok.com", "tiktok", "", "default", "2026-05-18T12:00:00-04:00", false, "personnel"},

		// 2026-11-01: clocks go back at 02:00 EDT; 01:00-02:00 lasts two hours.
		{"DST fall, before the window", staff, "youtube.com", "2026-11-01T00:59:00-04:00",
			"block", "youtube.com", "youtube", "", "default", "2026-11-01T01:00:00-04:00", false, "personnel"},
		{"DST fall, first 01:30 (EDT)", staff, "youtube.com", "2026-11-01T01:30:00-04:00",
			"allow", "youtube.com", "youtube", "automne", "rule", "2026-11-01T02:00:00-05:00", false, "personnel"},
		{"DST fall, second 01:30 (EST)", staff, "youtube.com", "2026-11-01T01:30:00-05:00",
			"allow", "youtube.com", "youtube", "automne", "rule", "2026-11-01T02:00:00-05:00", false, "personnel"},
		{"DST fall, at 02:00 EST", staff, "youtube.com", "2026-11-01T02:00:00-05:00",
			"block", "youtube.com", "youtube", "", "default", "2026-11-02T02:00:00-05:00", false, "personnel"},
		// 2026-03-08: clocks jump from 02:00 EST to 03:00 EDT; 02:00-03:00 does not occur.
		{"DST spring, just before the jump", staff, "pinterest.com", "2026-03-08T01:59:00-05:00",
			"block", "pinterest.com", "pinterest", "", "default", "2026-03-09T02:59:00-04:00", false, "personnel"},
		{"DST spring, just after the jump", staff, "pinterest.com", "2026-03-08T03:00:00-04:00",
			"block", "pinterest.com", "pinterest", "", "default", "2026-03-09T03:00:00-04:00", false, "personnel"},
		{"DST spring, the next sunday", staff, "pinterest.com", "2026-03-15T02:30:00-04:00",
			"allow", "pinterest.com", "pinterest", "printemps", "rule", "2026-03-15T03:00:00-04:00", false, "personnel"},

		{"mixed case and trailing dot", staff, "WWW.FaceBook.COM.", "2026-05-12T14:00:00-04:00",
			"block", "www.facebook.com", "facebook", "", "default", "2026-05-13T12:00:00-04:00", false, "personnel"},
		{"not on a label boundary", staff, "notfacebook.com", "2026-05-12T14:00:00-04:00",
			"allow", "notfacebook.com", "", "", "unlisted", "", false, "personnel"},
		{"x.com is not webex.com", staff, "www.webex.com", "2026-05-12T14:00:00-04:00",
			"allow", "www.webex.com", "", "", "unlisted", "", false, "personnel"},
		{"IDN name", staff, "WWW.Réseau-Social.example", "2026-05-12T14:00:00-04:00",
			"block", "www.xn--rseau-social-beb.example", "reseau-local", "", "default", "2026-05-13T12:00:00-04:00", false, "personnel"},
		{"IDN name in the break", staff, "réseau-social.example.", "2026-05-12T12:15:00-04:00",
			"allow", "xn--rseau-social-beb.example", "reseau-local", "diner", "rule", "2026-05-12T13:00:00-04:00", false, "personnel"},
		{"IPv4 literal", staff, "192.0.2.10", "2026-05-12T14:00:00-04:00",
			"allow", "192.0.2.10", "", "", "unlisted", "", true, "personnel"},
		{"bracketed IPv6 literal", staff, "[2001:DB8::1]", "2026-05-12T14:00:00-04:00",
			"allow", "2001:db8::1", "", "", "unlisted", "", true, "personnel"},
		{"Firefox canary, staff", staff, "use-application-dns.net", "2026-05-12T12:30:00-04:00",
			"block", "use-application-dns.net", "", "", "canary", "", false, "personnel"},
		{"Firefox canary, communications", comms, "use-application-dns.net.", "2026-05-12T14:00:00-04:00",
			"block", "use-application-dns.net", "", "", "canary", "", false, "communications,personnel"},
		{"catalog exception under a listed domain", staff, "platform.linkedin.com", "2026-05-12T14:00:00-04:00",
			"allow", "platform.linkedin.com", "linkedin", "", "allowlist", "", false, "personnel"},
		{"outside every group", "192.0.2.77", "facebook.com", "2026-05-12T12:30:00-04:00",
			"block", "facebook.com", "facebook", "", "default", "2026-05-13T12:30:00-04:00", false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := explainInput{Client: netip.MustParseAddr(tt.client), Host: tt.host, At: mustTime(t, tt.at)}
			r, err := explain(cfg, p, in)
			if err != nil {
				t.Fatalf("explain(%s, %s) error %v", tt.client, tt.host, err)
			}
			got := []string{r.Verdict, r.Host, r.Service, r.Rule, r.Reason, r.Until, strings.Join(r.Groups, ",")}
			want := []string{tt.verdict, tt.normalized, tt.service, tt.rule, tt.reason, tt.until, tt.groups}
			names := []string{"verdict", "host", "service", "rule", "reason", "until", "groups"}
			for i := range got {
				if got[i] != want[i] {
					t.Errorf("explain(%s, %q, %s): %s = %q, want %q", tt.client, tt.host, tt.at, names[i], got[i], want[i])
				}
			}
			if r.IP != tt.ip {
				t.Errorf("explain(%s, %q): ip = %v, want %v", tt.client, tt.host, r.IP, tt.ip)
			}
		})
	}
}

func TestExplainInvalidHost(t *testing.T) {
	cfg, p := loadPolicy(t, testPolicy)
	for _, h := range []string{"", "bad host", "a..b", "exa mple.com", strings.Repeat("a", 64) + ".com"} {
		if _, err := explain(cfg, p, explainInput{Client: netip.MustParseAddr("10.20.1.5"), Host: h, At: time.Now()}); err == nil {
			t.Errorf("explain(host %q) = nil error, want invalid host", h)
		}
	}
}

func TestExplainUserAndGroups(t *testing.T) {
	text := testPolicy + `
[[group]]
name = "edimestres"
directory_groups = ["GG-Edimestres"]
users = ["alice"]

[[rule]]
name = "edimestres"
groups = ["edimestres"]
services = ["*"]
action = "allow"
`
	// The edimestres rule comes last: place a client outside every other
	// group so it can match.
	cfg, p := loadPolicy(t, text)
	at := mustTime(t, "2026-05-12T14:00:00-04:00")
	client := netip.MustParseAddr("192.0.2.77")

	r, err := explain(cfg, p, explainInput{Client: client, Host: "facebook.com", User: "alice", At: at})
	if err != nil {
		t.Fatal(err)
	}
	if r.Verdict != "allow" || r.Rule != "edimestres" || r.User != "alice" || strings.Join(r.Groups, ",") != "edimestres" {
		t.Errorf("explain --user alice = %s rule %q user %q groups %v; want allow by rule edimestres, as Decide matches users", r.Verdict, r.Rule, r.User, r.Groups)
	}

	// Directory group names match case-insensitively, as in Decide.
	r, err = explain(cfg, p, explainInput{Client: client, Host: "facebook.com", DirectoryGroups: []string{"gg-edimestres"}, At: at})
	if err != nil {
		t.Fatal(err)
	}
	if r.Verdict != "allow" || r.Rule != "edimestres" || strings.Join(r.Groups, ",") != "edimestres" {
		t.Errorf("explain --groups GG-Edimestres = %s rule %q groups %v; want allow by rule edimestres", r.Verdict, r.Rule, r.Groups)
	}
}

func TestExplainOutput(t *testing.T) {
	path := writeConfig(t, testPolicy)
	stdout, stderr, code := runCmd("explain", "--config", path, "--client", "10.20.1.5", "--host", "WWW.FaceBook.COM.", "--at", "2026-05-12T14:00:00-04:00")
	if code != 0 {
		t.Fatalf("explain = %d: %s", code, stderr)
	}
	for _, want := range []string{
		"verdict   block\n",
		"host      www.facebook.com (given as \"WWW.FaceBook.COM.\")\n",
		"client    10.20.1.5 (groups: personnel)\n",
		"at        Tue 2026-05-12 14:00:00 EDT (2026-05-12T14:00:00-04:00)\n",
		"service   facebook (Facebook)\n",
		"category  networking\n",
		"rule      -\n",
		"reason    default: no rule matches; default_action is block\n",
		"until     Wed 2026-05-13 12:00:00 EDT (2026-05-13T12:00:00-04:00)\n",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("explain output lacks %q:\n%s", want, stdout)
		}
	}

	stdout, stderr, code = runCmd("explain", "--config", path, "--client", "10.20.30.7", "--host", "facebook.com", "--at", "2026-05-12T09:00:00Z", "--json")
	if code != 0 {
		t.Fatalf("explain --json = %d: %s", code, stderr)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(stdout), &got); err != nil {
		t.Fatalf("explain --json: %v\n%s", err, stdout)
	}
	want := map[string]any{
		"verdict": "allow", "service": "facebook", "category": "networking", "rule": "communications",
		"reason": "rule", "until": "2026-05-13T05:00:00-04:00", "host": "facebook.com", "client": "10.20.30.7",
		"grant": "", "ip": false, "at": "2026-05-12T05:00:00-04:00",
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("explain --json: %s = %#v, want %#v", k, got[k], w)
		}
	}
	if g, _ := got["groups"].([]any); len(g) != 2 || g[0] != "communications" || g[1] != "personnel" {
		t.Errorf("explain --json: groups = %#v, want [communications personnel]", got["groups"])
	}
}
