package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestExplainReport checks that explain shows a rule in report mode that
// would have matched, and that the rule after it decides.
func TestExplainReport(t *testing.T) {
	path := writeConfig(t, testPolicy+`
[[rule]]
name = "essai"
groups = ["personnel"]
services = ["facebook"]
action = "block"
mode = "report"
`)
	// The report rule comes last: the diner rule decides first and the
	// report is never reached.
	stdout, stderr, code := runCmd("explain", "--config", path, "--client", "10.20.1.5", "--host", "facebook.com", "--at", "2026-05-12T12:30:00-04:00", "--json")
	if code != 0 {
		t.Fatalf("explain = %d: %s", code, stderr)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(stdout), &got); err != nil {
		t.Fatal(err)
	}
	if got["rule"] != "diner" || got["would"] != "" || got["would_rule"] != "" {
		t.Errorf("explain --json = %v, want rule diner and no report", got)
	}

	path = writeConfig(t, strings.Replace(testPolicy, "[[rule]]\nname = \"communications\"", `[[rule]]
name = "essai"
groups = ["personnel"]
services = ["facebook"]
action = "block"
mode = "report"

[[rule]]
name = "communications"`, 1))
	stdout, stderr, code = runCmd("explain", "--config", path, "--client", "10.20.1.5", "--host", "facebook.com", "--at", "2026-05-12T12:30:00-04:00")
	if code != 0 {
		t.Fatalf("explain = %d: %s", code, stderr)
	}
	for _, want := range []string{"verdict   allow\n", "rule      diner\n", "would     block — règle \"essai\" en mode rapport"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("explain output lacks %q:\n%s", want, stdout)
		}
	}
}
