package main

import (
	"context"
	"encoding/json"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/balise-net/balise/internal/exceptions"
	"github.com/balise-net/balise/internal/policy"
)

// explain reads the live grants of the exceptions register (read-only),
// so it answers what serve answers; --offline decides on the file alone.
func TestExplainLiveGrants(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "balise.db")
	text := testPolicy + `
[exceptions]
store = "` + db + `"
audit_log = "` + filepath.Join(dir, "exceptions.jsonl") + `"
state_dir = "` + dir + `"
`
	path := writeConfig(t, text)
	args := []string{"explain", "--config", path, "--client", "10.20.1.5", "--host", "www.facebook.com", "--json"}

	// No register yet: no grants, and explain creates nothing.
	out, stderr, code := runCmd(args...)
	if code != 0 {
		t.Fatalf("explain = %d: %s", code, stderr)
	}
	if r := decodeExplain(t, out); r.Verdict != "block" || r.Grants != "none" {
		t.Fatalf("before any request: %+v", r)
	}
	if m, _ := filepath.Glob(db + "*"); len(m) != 0 {
		t.Fatalf("explain created %v", m)
	}

	ctx := context.Background()
	st, err := exceptions.OpenSQLite(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := exceptions.Open(ctx, exceptions.Options{Store: st, CloseStore: true, AuditLog: filepath.Join(dir, "exceptions.jsonl")})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := reg.Submit(ctx, exceptions.Submission{Client: netip.MustParseAddr("10.20.1.5"), Name: "Julie Tremblay",
		Service: "facebook", Host: "www.facebook.com", Duration: 4 * time.Hour, Justification: "Page de la fondation"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Approve(ctx, rc.ID, exceptions.Approval{By: "rsi", For: time.Hour}); err != nil {
		t.Fatal(err)
	}
	// serve would see exactly these grants.
	grants, err := reg.ActiveGrants(ctx, time.Now())
	if err != nil || len(grants) != 1 {
		t.Fatalf("active grants = %v, %v", grants, err)
	}

	// The register is still open (as under a running serve).
	out, stderr, code = runCmd(args...)
	if code != 0 {
		t.Fatalf("explain = %d: %s", code, stderr)
	}
	r := decodeExplain(t, out)
	if r.Verdict != "allow" || r.Reason != "grant" || r.Grant != rc.ID || r.Grants != "register" || r.LiveGrants != 1 {
		t.Errorf("with an approved grant: %+v", r)
	}
	_, p := loadPolicy(t, text)
	d := p.WithGrants(grants).Decide(policy.Query{Host: "www.facebook.com", Client: netip.MustParseAddr("10.20.1.5"), Time: time.Now()})
	if d.Verdict.String() != r.Verdict || d.Grant != r.Grant || d.Reason.String() != r.Reason {
		t.Errorf("explain %+v disagrees with Decide %+v", r, d)
	}

	out, _, code = runCmd(append(args, "--offline")...)
	if r := decodeExplain(t, out); code != 0 || r.Verdict != "block" || r.Grants != "offline" {
		t.Errorf("--offline = %d %+v, want block without grants", code, r)
	}
	// Another client is not covered by the grant.
	out, _, _ = runCmd("explain", "--config", path, "--client", "10.20.1.6", "--host", "www.facebook.com")
	if !strings.Contains(out, "verdict   block") || !strings.Contains(out, "grants    1 live in the exceptions register") {
		t.Errorf("other client:\n%s", out)
	}
	if _, err := reg.Revoke(ctx, rc.ID, "rsi", "fin"); err != nil {
		t.Fatal(err)
	}
	reg.Close()
	out, _, _ = runCmd(args...)
	if r := decodeExplain(t, out); r.Verdict != "block" || r.LiveGrants != 0 {
		t.Errorf("after revoke: %+v", r)
	}
}

func decodeExplain(t *testing.T, out string) explainResult {
	t.Helper()
	var r explainResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("explain --json: %v\n%s", err, out)
	}
	return r
}
