package tests

import (
	"bufio"
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/balise-net/balise/internal/exceptions"
	"github.com/balise-net/balise/internal/identity"
)

// revealConfig is a register, a group naming a user, and the default
// pseudonym key (data/identity.key, next to the register).
const revealConfig = exceptionsConfig + `
[[group]]
name = "editeurs"
users = ["Carol"]

[[rule]]
name = "editeurs"
groups = ["editeurs"]
services = ["socialtest"]
action = "allow"
`

// auditEvents reads the audit log's events.
func auditEvents(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e map[string]any
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		out = append(out, e)
	}
	return out
}

// `balise identity reveal` finds a pseudonym's user among the register's
// users, the configuration's users and the names given; refuses without
// an officer and a reason; records every reveal, found or not, in the
// audit chain (pseudonym, never the name), which still verifies.
func TestIdentityReveal(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "balise.toml")
	if err := os.WriteFile(cfg, []byte(metricsOnly+revealConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	auditLog := filepath.Join(data, "exceptions.jsonl")

	// Without the key (serve never ran) nothing can be revealed.
	_, errOut, code := runBalise(t, "identity", "reveal", "--config", cfg, "--by", "RSI", "--reason", "plainte 114", "u-aaaaaaaaaaaaaaaa")
	if code != 1 || !strings.Contains(errOut, "no pseudonym key") {
		t.Fatalf("reveal without a key = %d\n%s", code, errOut)
	}

	// The key, as serve creates it; a request made by alice over an
	// authenticated connection.
	key, err := identity.LoadOrCreateKey(filepath.Join(data, "identity.key"))
	if err != nil {
		t.Fatal(err)
	}
	ps, err := identity.NewPseudonyms(key, identity.LogPseudonym)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st, err := exceptions.OpenSQLite(ctx, filepath.Join(data, "balise.db"))
	if err != nil {
		t.Fatal(err)
	}
	reg, err := exceptions.Open(ctx, exceptions.Options{Store: st, CloseStore: true, AuditLog: auditLog})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Submit(ctx, exceptions.Submission{Client: netip.MustParseAddr("10.1.2.3"), User: "Alice",
		Name: "Alice Tremblay", Service: "socialtest", Host: "www.social.test", Duration: 4 * time.Hour,
		Justification: "Publication des offres d'emploi"}); err != nil {
		t.Fatal(err)
	}
	reg.Close()
	lines := len(auditEvents(t, auditLog))

	reveal := func(args ...string) (string, string, int) {
		t.Helper()
		return runBalise(t, append([]string{"identity", "reveal", "--config", cfg}, args...)...)
	}
	alice := ps.Pseudonym("alice")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--reason", "plainte 114", alice}, "--by"},
		{[]string{"--by", "RSI", alice}, "--reason"},
		{[]string{"--by", "RSI", "--reason", " ", alice}, "--reason"},
		{[]string{"--by", "RSI", "--reason", "plainte 114"}, "PSEUDONYM"},
		{[]string{"--by", "RSI", "--reason", "plainte 114", "alice"}, "not a pseudonym"},
	} {
		out, errOut, code := reveal(tc.args...)
		if code != 2 || !strings.Contains(errOut, tc.want) || out != "" {
			t.Errorf("reveal %q = %d, stdout %q\n%s\nwant 2 and %q", tc.args, code, out, errOut, tc.want)
		}
	}
	if n := len(auditEvents(t, auditLog)); n != lines {
		t.Fatalf("refused reveals wrote %d audit lines", n-lines)
	}

	names := filepath.Join(dir, "names.txt")
	os.WriteFile(names, []byte("# agents\nerin\n\n"), 0o600)
	for _, tc := range []struct {
		name  string
		args  []string
		found string
	}{
		{"register's user", []string{alice}, "alice"},
		{"configuration's user", []string{ps.Pseudonym("carol")}, "carol"},
		{"--candidate", []string{"--candidate", "bob", "--candidate", "Dave", ps.Pseudonym("dave")}, "dave"},
		{"--candidates", []string{"--candidates", names, ps.Pseudonym("erin")}, "erin"},
		{"not found", []string{ps.Pseudonym("frank")}, ""},
	} {
		args := append([]string{"--by", "RSI Gagnon", "--reason", "enquête " + tc.name}, tc.args...)
		out, errOut, code := reveal(args...)
		pseudo := tc.args[len(tc.args)-1]
		if tc.found == "" {
			if code != 1 || out != "" || !strings.Contains(errOut, "no candidate name matches") {
				t.Errorf("%s: reveal = %d, stdout %q\n%s", tc.name, code, out, errOut)
			}
			continue
		}
		if code != 0 || out != pseudo+"\t"+tc.found+"\n" {
			t.Errorf("%s: reveal = %d, stdout %q\n%s\nwant %q", tc.name, code, out, errOut, pseudo+"\t"+tc.found)
		}
	}

	// The chain verifies and holds one identity_reveal per reveal made,
	// with the officer, the reason, the pseudonym and the count, and
	// never the revealed name.
	if out, errOut, code := runBalise(t, "exceptions", "--config", cfg, "verify"); code != 0 {
		t.Fatalf("exceptions verify = %d\n%s%s", code, out, errOut)
	}
	var reveals []map[string]any
	for _, e := range auditEvents(t, auditLog)[lines:] {
		if e["event"] != "identity_reveal" {
			t.Errorf("unexpected event %v", e)
			continue
		}
		reveals = append(reveals, e)
	}
	if len(reveals) != 5 {
		t.Fatalf("identity_reveal events = %d, want 5", len(reveals))
	}
	for i, name := range []string{"alice", "carol", "dave", "erin", "frank"} {
		e := reveals[i]
		wantCount := 1.0
		if name == "frank" {
			wantCount = 0
		}
		if e["actor"] != "RSI Gagnon" || !strings.HasPrefix(e["reason"].(string), "enquête ") ||
			e["subject"] != ps.Pseudonym(name) || e["count"] != wantCount {
			t.Errorf("reveal %d = %v", i, e)
		}
		b, _ := json.Marshal(e)
		if strings.Contains(strings.ToLower(string(b)), name) {
			t.Errorf("reveal %d records the name %q: %s", i, name, b)
		}
	}
	// The export carries the reveals too.
	out, errOut, code := runBalise(t, "exceptions", "--config", cfg, "export", "--format", "csv", "--by", "RSI")
	if code != 0 || strings.Count(out, "identity_reveal") != 5 {
		t.Errorf("export = %d, %d identity_reveal rows\n%s", code, strings.Count(out, "identity_reveal"), errOut)
	}

	// Without a register there is nowhere to record a reveal: refused.
	noEx := filepath.Join(dir, "noex.toml")
	os.WriteFile(noEx, []byte(metricsOnly), 0o600)
	if _, errOut, code := runBalise(t, "identity", "reveal", "--config", noEx, "--by", "RSI", "--reason", "x", alice); code != 1 || !strings.Contains(errOut, "[exceptions]") {
		t.Errorf("reveal without [exceptions] = %d\n%s", code, errOut)
	}
}
