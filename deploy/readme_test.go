package deploy

import (
	"regexp"
	"strings"
	"testing"
)

// TestReadmeDecisionKeys checks that the operations guide documents every
// key of the decision log line, as the decision logger writes them.
func TestReadmeDecisionKeys(t *testing.T) {
	src := string(readFile(t, "../internal/decisionlog/decisionlog.go"))
	re := regexp.MustCompile(`slog\.(?:String|Int|Time|Bool|Duration)\("([a-z_]+)"`)
	keys := re.FindAllStringSubmatch(src, -1)
	if len(keys) < 10 {
		t.Fatalf("found %d keys in decisionlog.go, want the decision line's keys", len(keys))
	}
	readme := string(readFile(t, "README.md"))
	for _, k := range keys {
		if !regexp.MustCompile("\\| `" + k[1] + "`[ ,|]").MatchString(readme) {
			t.Errorf("README.md: decision log key %q is not in the keys table", k[1])
		}
	}
}

// TestReadmeBrowserPolicies checks that the guide names the policies that
// stop browsers from bypassing Balise with their own DNS over HTTPS.
func TestReadmeBrowserPolicies(t *testing.T) {
	readme := string(readFile(t, "README.md"))
	for _, want := range []string{
		"`DnsOverHttpsMode`", "`off`", // Chrome and Edge
		"`DNSOverHTTPS`", `"Enabled": false`, `"Locked": true`, // Firefox
		"use-application-dns.net", // the canary
		"ImportEnterpriseRoots",   // the CA in Firefox
		"/proxy.pac",              // the PAC URL
		"externalTrafficPolicy: Local",
		"VACUUM INTO", ".backup",
	} {
		if !strings.Contains(readme, want) {
			t.Errorf("README.md does not mention %s", want)
		}
	}
}

// TestReadmeMetrics checks that the guide's metrics table lists exactly
// the metrics the alerts and dashboard may use.
func TestReadmeMetrics(t *testing.T) {
	readme := string(readFile(t, "README.md"))
	rows := regexp.MustCompile("(?m)^\\| `(balise_[a-z0-9_]+)` \\|").FindAllStringSubmatch(readme, -1)
	documented := map[string]bool{}
	for _, r := range rows {
		documented[r[1]] = true
	}
	for name := range knownMetrics {
		if name != "up" && !documented[name] {
			t.Errorf("README.md metrics table lacks %s", name)
		}
	}
	for name := range documented {
		if !knownMetrics[name] {
			t.Errorf("README.md documents %s, which is not a known metric", name)
		}
	}
}
