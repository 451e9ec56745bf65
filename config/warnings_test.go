package config

import (
	"strings"
	"testing"
)

// Settings that weaken a fail-closed default are valid but warned about,
// with the file, line and key, and "warning:" in the text.
func TestWarnings(t *testing.T) {
	src := `[proxy]
ip_literals = "allow"
no_sni = "allow"
allow_destinations = ["127.0.0.0/8"]
`
	c, err := Parse("w.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"w.toml:2:15: warning: proxy.ip_literals: ",
		"w.toml:3:10: warning: proxy.no_sni: ",
		"w.toml:4:23: warning: proxy.allow_destinations[0]: 127.0.0.0/8 is exempt",
	}
	if len(c.Warnings) != len(want) {
		t.Fatalf("warnings = %v, want %d", c.Warnings, len(want))
	}
	for i, w := range want {
		if got := c.Warnings[i].String(); !strings.HasPrefix(got, w) {
			t.Errorf("warning %d = %q, want prefix %q", i, got, w)
		}
	}
	d, err := Parse("d.toml", nil)
	if err != nil || len(d.Warnings) != 0 {
		t.Fatalf("empty config: %v, warnings %v", err, d.Warnings)
	}
}

// A DNS listener beyond loopback needs allowed_clients; on loopback the
// default (loopback only) is enough.
func TestDNSAllowedClientsRequired(t *testing.T) {
	for _, tc := range []struct {
		src string
		bad bool
	}{
		{"[dns]\nlisten = [\"127.0.0.1:53\", \"[::1]:53\", \"localhost:5353\"]\n", false},
		{"[dns]\nlisten = [\"0.0.0.0:53\"]\n", true},
		{"[dns]\nlisten = [\"[::]:53\"]\n", true},
		{"[dns]\nlisten = [\"10.1.2.3:53\"]\n", true},
		{"[dns]\nlisten = [\"10.1.2.3:53\"]\nallowed_clients = [\"10.0.0.0/8\"]\n", false},
		{"[dns]\nlisten = [\"10.1.2.3:53\"]\nallowed_clients = [\"0.0.0.0/0\"]\n", true},
	} {
		_, err := Parse("x.toml", []byte(tc.src))
		if (err != nil) != tc.bad {
			t.Errorf("%q: err = %v, want bad=%v", tc.src, err, tc.bad)
		}
		if err != nil && !strings.Contains(err.Error(), "dns.") {
			t.Errorf("%q: %v does not name the key", tc.src, err)
		}
	}
}
