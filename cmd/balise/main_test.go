package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runCmd runs the command line in-process and returns stdout, stderr and
// the exit code.
func runCmd(args ...string) (string, string, int) {
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return out.String(), errb.String(), code
}

// writeConfig writes text to a file in a temporary directory.
func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "balise.toml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestExitCodes(t *testing.T) {
	good := writeConfig(t, testPolicy)
	bad := writeConfig(t, "timezone = \"Nowhere/Land\"\nunknown = true\n")
	tests := []struct {
		args []string
		want int
	}{
		{nil, exitUsage},
		{[]string{"nope"}, exitUsage},
		{[]string{"help"}, exitOK},
		{[]string{"version"}, exitOK},
		{[]string{"version", "extra"}, exitUsage},
		{[]string{"check"}, exitUsage},
		{[]string{"check", "--config", good}, exitOK},
		{[]string{"check", "--config", good, "stray"}, exitUsage},
		{[]string{"check", "--config", bad}, exitInvalid},
		{[]string{"check", "--config", filepath.Join(t.TempDir(), "absent.toml")}, exitInvalid},
		{[]string{"check", "-h"}, exitOK},
		{[]string{"explain", "--config", good, "--client", "10.20.1.5"}, exitUsage},
		{[]string{"explain", "--config", good, "--host", "facebook.com"}, exitUsage},
		{[]string{"explain", "--config", good, "--client", "10.20.1.5", "--host", "facebook.com"}, exitOK},
		{[]string{"explain", "--config", good, "--client", "10.20.1.5", "--host", "facebook.com", "--user", "alice", "--groups", "a,b"}, exitOK},
		{[]string{"explain", "--config", good, "--client", "300.1.1.1", "--host", "facebook.com"}, exitInvalid},
		{[]string{"explain", "--config", good, "--client", "fe80::1%eth0", "--host", "facebook.com"}, exitInvalid},
		{[]string{"explain", "--config", good, "--client", "10.20.1.5", "--host", "bad_host!"}, exitInvalid},
		{[]string{"explain", "--config", good, "--client", "10.20.1.5", "--host", "a..b"}, exitInvalid},
		{[]string{"explain", "--config", good, "--client", "10.20.1.5", "--host", "x.com", "--at", "noon"}, exitInvalid},
		{[]string{"explain", "--config", bad, "--client", "10.20.1.5", "--host", "x.com"}, exitInvalid},
		{[]string{"explain", "--config", good, "--client", "10.20.1.5", "--host", "x.com", "--bogus"}, exitUsage},
		{[]string{"serve", "--log-format", "yaml"}, exitUsage},
		{[]string{"serve", "--log-level", "loud"}, exitUsage},
		{[]string{"serve", "--config", bad, "--log-format", "text"}, exitInvalid},
	}
	for _, tt := range tests {
		_, stderr, code := runCmd(tt.args...)
		if code != tt.want {
			t.Errorf("run(%q) = %d, want %d; stderr:\n%s", tt.args, code, tt.want, stderr)
		}
	}
}

func TestCheckOutput(t *testing.T) {
	good := writeConfig(t, testPolicy)
	stdout, stderr, code := runCmd("check", "--config", good)
	if code != 0 {
		t.Fatalf("check = %d; stderr %s", code, stderr)
	}
	for _, want := range []string{good + ": ok", "groups     2: communications, personnel", "schedules  4: diner, soir, automne, printemps", "rules      5: communications, diner, soir, automne, printemps"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("check output lacks %q:\n%s", want, stdout)
		}
	}

	bad := writeConfig(t, "timezone = \"Nowhere/Land\"\nunknown = true\n")
	stdout, stderr, code = runCmd("check", "--config", bad)
	if code != 1 || stdout != "" {
		t.Fatalf("check bad = %d, stdout %q; want 1 and nothing on stdout", code, stdout)
	}
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	if len(lines) != 2 {
		t.Fatalf("check bad printed %d problem lines, want 2:\n%s", len(lines), stderr)
	}
	for _, l := range lines {
		if !strings.HasPrefix(l, bad+":") {
			t.Errorf("problem line %q does not start with the file name", l)
		}
	}
	if !strings.Contains(stderr, "Nowhere/Land") || !strings.Contains(stderr, "unknown") {
		t.Errorf("problems do not name the zone and the unknown key:\n%s", stderr)
	}
}

func TestDefaultLogFormat(t *testing.T) {
	tests := []struct {
		env   map[string]string
		files []string
		want  string
	}{
		{nil, nil, "text"},
		{map[string]string{"INVOCATION_ID": "abc"}, nil, "json"},
		{map[string]string{"JOURNAL_STREAM": "8:1234"}, nil, "json"},
		{map[string]string{"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, nil, "json"},
		{nil, []string{"/.dockerenv"}, "json"},
		{nil, []string{"/run/.containerenv"}, "json"},
	}
	for _, tt := range tests {
		got := defaultLogFormat(func(k string) string { return tt.env[k] }, func(f string) bool {
			for _, x := range tt.files {
				if x == f {
					return true
				}
			}
			return false
		})
		if got != tt.want {
			t.Errorf("defaultLogFormat(env %v, files %v) = %q, want %q", tt.env, tt.files, got, tt.want)
		}
	}
}
