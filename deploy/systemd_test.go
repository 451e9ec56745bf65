package deploy

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// unitFile maps "Section.Key" to its values in order (a key may repeat).
type unitFile map[string][]string

// parseUnit reads a systemd unit file: sections, Key=Value lines,
// comments; continuation lines are not used by Balise's unit and are
// reported as errors.
func parseUnit(t *testing.T, data []byte) unitFile {
	t.Helper()
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
		case strings.HasSuffix(line, `\`):
			t.Fatalf("line %d: continuation lines are not supported by this test", n)
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("line %d: not Key=Value inside a section: %q", n, line)
			}
			u[section+"."+k] = append(u[section+"."+k], v)
		}
	}
	return u
}

func TestSystemdUnitDirectives(t *testing.T) {
	u := parseUnit(t, readFile(t, "systemd/balise.service"))
	tests := []struct {
		key  string
		want string // a value the key must have (among repeated ones)
	}{
		{"Service.Type", "notify"},
		{"Service.WatchdogSec", "30s"},
		{"Service.ExecReload", "/bin/kill -HUP $MAINPID"},
		{"Service.Restart", "on-failure"},
		{"Service.User", "balise"},
		{"Service.Group", "balise"},
		{"Service.StateDirectory", "balise"},
		{"Service.ConfigurationDirectory", "balise"},
		{"Service.AmbientCapabilities", "CAP_NET_BIND_SERVICE"},
		{"Service.CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"},
		{"Service.NoNewPrivileges", "yes"},
		{"Service.ProtectSystem", "strict"},
		{"Service.ProtectHome", "yes"},
		{"Service.PrivateTmp", "yes"},
		{"Service.SystemCallFilter", "@system-service"},
		{"Service.RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX AF_NETLINK"},
		{"Service.LimitNOFILE", "1048576"},
		{"Install.WantedBy", "multi-user.target"},
	}
	for _, tt := range tests {
		if got := u[tt.key]; !slices.Contains(got, tt.want) {
			t.Errorf("%s = %q, want %q among them", tt.key, got, tt.want)
		}
	}
	// The reload is checked first, so a bad policy fails `systemctl reload`
	// loudly instead of only in the log.
	if r := u["Service.ExecReload"]; len(r) != 2 || !strings.Contains(r[0], " check --config ") {
		t.Errorf("ExecReload = %q, want a `balise check` then the SIGHUP", r)
	}
	start := u["Service.ExecStart"]
	if len(start) != 1 || !strings.Contains(start[0], " serve ") || !strings.Contains(start[0], "--log-format json") {
		t.Errorf("ExecStart = %q, want one `balise serve ... --log-format json`", start)
	}
	if cfg := "--config /etc/balise/balise.toml"; !strings.Contains(start[0], cfg) || !strings.Contains(u["Service.ExecStartPre"][0], cfg) {
		t.Errorf("ExecStart and ExecStartPre must both use %s", cfg)
	}
}

// TestSystemdAnalyzeVerify runs `systemd-analyze verify` on the unit with
// its binary path pointing at an executable that exists (this test
// binary), and requires it to print nothing: verify exits 0 even for an
// unknown key, but warns about it.
func TestSystemdAnalyzeVerify(t *testing.T) {
	sa := requireTool(t, "systemd-analyze")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	unit := readFile(t, "systemd/balise.service")
	if !bytes.Contains(unit, []byte("/usr/local/bin/balise ")) {
		t.Fatal("unit does not run /usr/local/bin/balise")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "balise.service")
	if err := os.WriteFile(path, bytes.ReplaceAll(unit, []byte("/usr/local/bin/balise "), []byte(exe+" ")), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, dir, sa, "verify", path)
	if err != nil || out != "" {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}

	// The same check must catch a misspelt directive.
	bad := bytes.Replace(readFile(t, path), []byte("ProtectSystem="), []byte("ProtectSystm="), 1)
	if err := os.WriteFile(path, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := run(t, dir, sa, "verify", path); err == nil && out == "" {
		t.Error("systemd-analyze verify accepted a misspelt directive silently; the check above proves nothing")
	}
}

// TestSysusers has systemd-sysusers read the shipped user definition
// without applying it (--dry-run into an empty root): it must create the
// user the unit runs as.
func TestSysusers(t *testing.T) {
	su := requireTool(t, "systemd-sysusers")
	path, err := filepath.Abs("systemd/balise.sysusers")
	if err != nil {
		t.Fatal(err)
	}
	u := parseUnit(t, readFile(t, "systemd/balise.service"))
	user := u["Service.User"]
	if len(user) != 1 {
		t.Fatalf("unit User = %q, want one", user)
	}
	// An empty root, so the user is created even where it exists already.
	out, err := run(t, t.TempDir(), su, "--dry-run", "--root="+t.TempDir(), path)
	if err != nil || !strings.Contains(out, "user '"+user[0]+"'") {
		t.Errorf("systemd-sysusers --dry-run %s: %v\n%s\nwant it to create user %s", path, err, out, user[0])
	}
}
