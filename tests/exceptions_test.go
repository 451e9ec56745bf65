package tests

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/balise-net/balise/internal/exceptions"
)

// exceptionsConfig is a register on files under the instance's directory,
// with one listed test service.
const exceptionsConfig = `
[exceptions]
store = "data/balise.db"
audit_log = "data/exceptions.jsonl"
state_dir = "data"
grant_poll = "1s"

[[list]]
name = "socialtest"
display_name = "Social Test"
category = "networking"
domains = ["social.test"]
`

// exRequestJSON is the contract of `exceptions list --json`.
type exRequestJSON struct {
	ID            string   `json:"id"`
	Status        string   `json:"status"`
	Client        string   `json:"client"`
	User          *string  `json:"user"`
	Services      []string `json:"services"`
	Justification string   `json:"justification"`
	CreatedAt     string   `json:"created_at"`
}

// exCLI runs `balise exceptions --config F args...`.
func exCLI(t *testing.T, cfg string, args ...string) (string, string, int) {
	t.Helper()
	return runBalise(t, append([]string{"exceptions", "--config", cfg}, args...)...)
}

func exList(t *testing.T, cfg string) []exRequestJSON {
	t.Helper()
	out, errOut, code := exCLI(t, cfg, "list", "--json")
	if code != 0 {
		t.Fatalf("exceptions list --json = %d\n%s", code, errOut)
	}
	var list []exRequestJSON
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("exceptions list --json: %v\n%s", err, out)
	}
	for _, q := range list {
		if q.ID == "" || q.Status == "" || q.Client == "" || q.User == nil || len(q.Services) == 0 || q.CreatedAt == "" {
			t.Fatalf("list --json entry lacks a contract field: %s", out)
		}
	}
	return list
}

// exWaitMetric waits up to 2 s for serve to report metric = n.
func exWaitMetric(t *testing.T, in *instance, metric string, n float64) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		v, ok := in.MetricValue(metric)
		if ok && v == n {
			return time.Since(start)
		}
		if time.Since(start) > 2*time.Second {
			t.Fatalf("%s = %v (present %v) after 2 s, want %v", metric, v, ok, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestExceptionsCommandUsage(t *testing.T) {
	dir := t.TempDir()
	noEx := filepath.Join(dir, "noex.toml")
	os.WriteFile(noEx, []byte(metricsOnly), 0o600)
	withEx := filepath.Join(dir, "ex.toml")
	os.WriteFile(withEx, []byte(metricsOnly+exceptionsConfig), 0o600)
	tests := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"exceptions"}, 2, "usage"},
		{[]string{"exceptions", "--config", withEx}, 2, "usage"},
		{[]string{"exceptions", "--config", withEx, "frobnicate"}, 2, "unknown command"},
		{[]string{"exceptions", "list"}, 2, "--config"},
		{[]string{"exceptions", "--config", noEx, "list"}, 1, "no [exceptions] table"},
		{[]string{"exceptions", "--config", filepath.Join(dir, "missing.toml"), "list"}, 1, "missing.toml"},
		{[]string{"exceptions", "--config", withEx, "list", "--status", "maybe"}, 2, "unknown status"},
		{[]string{"exceptions", "--config", withEx, "show"}, 2, "request ID"},
		{[]string{"exceptions", "--config", withEx, "show", "EX-0001"}, 1, "no such request"},
		{[]string{"exceptions", "--config", withEx, "approve", "EX-0001", "--by", "RSI"}, 2, "exactly one of --for"},
		{[]string{"exceptions", "--config", withEx, "approve", "EX-0001", "--for", "4h"}, 2, "--by"},
		{[]string{"exceptions", "--config", withEx, "approve", "EX-0001", "--for", "soon", "--by", "RSI"}, 2, "invalid duration"},
		{[]string{"exceptions", "--config", withEx, "approve", "EX-0001", "--for", "4h", "--by", "RSI", "--subject", "user"}, 1, "no such request"},
		{[]string{"exceptions", "--config", withEx, "deny", "EX-0001", "--by", "RSI"}, 2, "--reason"},
		{[]string{"exceptions", "--config", withEx, "export"}, 2, "--format"},
		{[]string{"exceptions", "--config", withEx, "export", "--format", "xml"}, 2, "--format"},
		{[]string{"exceptions", "--config", withEx, "purge", "--older-than", "-3d"}, 2, "invalid duration"},
		{[]string{"exceptions", "--config", withEx, "verify", "extra"}, 2, "unexpected argument"},
	}
	for _, tt := range tests {
		_, errOut, code := runBalise(t, tt.args...)
		if code != tt.code || !strings.Contains(errOut, tt.want) {
			t.Errorf("balise %s = %d\n%s\nwant %d mentioning %q", strings.Join(tt.args, " "), code, errOut, tt.code, tt.want)
		}
	}
}

// TestExceptionsRegisterWithServe drives the register with the command
// line while serve runs on the same store: requests written by another
// process (as the form does), approval and revocation picked up by serve
// within 2 s, export, verify, and a tampered log.
func TestExceptionsRegisterWithServe(t *testing.T) {
	in := startBalise(t, metricsOnly+exceptionsConfig)
	cfg := in.ConfigPath
	data := filepath.Join(in.Dir, "data")
	if fi, err := os.Stat(filepath.Join(data, "csrf.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("csrf.key: %v, %v; want a 0600 file created by serve", fi, err)
	}

	// Another process records two requests, as the block page's form does.
	ctx := context.Background()
	st, err := exceptions.OpenSQLite(ctx, filepath.Join(data, "balise.db"))
	if err != nil {
		t.Fatal(err)
	}
	reg, err := exceptions.Open(ctx, exceptions.Options{Store: st, CloseStore: true, AuditLog: filepath.Join(data, "exceptions.jsonl")})
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range []string{"127.0.0.1", "127.0.0.2"} {
		_, err := reg.Submit(ctx, exceptions.Submission{Client: netip.MustParseAddr(c), Name: "Julie <b>Tremblay</b>",
			Service: "socialtest", Host: "www.social.test", Duration: 4 * time.Hour,
			Justification: fmt.Sprintf("Publication des offres d'emploi, campagne %d", i)})
		if err != nil {
			t.Fatal(err)
		}
	}
	reg.Close()

	list := exList(t, cfg)
	if len(list) != 2 || list[0].ID != "EX-0001" || list[0].Status != "pending" || list[0].Client != "127.0.0.1" ||
		list[0].Services[0] != "socialtest" || !strings.Contains(list[0].Justification, "campagne 0") {
		t.Fatalf("list --json = %+v", list)
	}
	exWaitMetric(t, in, "balise_exceptions_pending", 2)
	out, _, code := exCLI(t, cfg, "show", "EX-0001")
	if code != 0 || !strings.Contains(out, "Julie <b>Tremblay</b>") || !strings.Contains(out, "asked for:     4h") {
		t.Errorf("show EX-0001 = %d\n%s", code, out)
	}

	out, errOut, code := exCLI(t, cfg, "approve", "EX-0001", "--for", "4h", "--by", "RSI Dupont", "--note", "campagne")
	if code != 0 || !strings.Contains(out, "EX-0001 approved: 127.0.0.1/32 may reach socialtest") {
		t.Fatalf("approve = %d\n%s%s", code, out, errOut)
	}
	t.Logf("grant live in serve after %v", exWaitMetric(t, in, "balise_exceptions_grants_active", 1))
	if _, _, code := exCLI(t, cfg, "approve", "EX-0001", "--for", "4h", "--by", "RSI"); code != 1 {
		t.Errorf("second approve = %d, want 1", code)
	}
	if out, errOut, code := exCLI(t, cfg, "deny", "EX-0002", "--by", "RSI Dupont", "--reason", "pas lié au travail"); code != 0 {
		t.Fatalf("deny = %d\n%s%s", code, out, errOut)
	}
	if out, errOut, code := exCLI(t, cfg, "revoke", "EX-0001", "--by", "RSI Dupont", "--reason", "campagne terminée"); code != 0 {
		t.Fatalf("revoke = %d\n%s%s", code, out, errOut)
	}
	exWaitMetric(t, in, "balise_exceptions_grants_active", 0)
	for _, q := range exList(t, cfg) {
		if want := map[string]string{"EX-0001": "revoked", "EX-0002": "denied"}[q.ID]; q.Status != want {
			t.Errorf("%s status = %s, want %s", q.ID, q.Status, want)
		}
	}

	out, errOut, code = exCLI(t, cfg, "export", "--format", "csv", "--by", "RSI Dupont")
	rows, err := csv.NewReader(strings.NewReader(out)).ReadAll()
	if code != 0 || err != nil || len(rows) != 6 {
		t.Fatalf("export csv = %d, %v: %d rows\n%s%s\nwant header + 5 events", code, err, len(rows), out, errOut)
	}
	var events []string
	for _, r := range rows[1:] {
		events = append(events, r[2]+" "+r[3])
	}
	if got, want := strings.Join(events, ","), "request_received EX-0001,request_received EX-0002,approved EX-0001,denied EX-0002,revoked EX-0001"; got != want {
		t.Errorf("export events = %s, want %s", got, want)
	}
	out, _, code = exCLI(t, cfg, "export", "--format", "json", "--by", "RSI Dupont")
	var evs []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &evs) != nil || len(evs) != 6 || evs[5]["event"] != "exported" {
		t.Errorf("export json = %d\n%s\nwant 6 events ending with the csv export", code, out)
	}

	if out, errOut, code := exCLI(t, cfg, "verify"); code != 0 || !strings.Contains(out, "OK") {
		t.Fatalf("verify = %d\n%s%s", code, out, errOut)
	}
	// Tamper: change the grant's end in the approved line (line 3).
	logPath := filepath.Join(data, "exceptions.jsonl")
	raw, _ := os.ReadFile(logPath)
	lines := strings.SplitAfter(string(raw), "\n")
	if !strings.Contains(lines[2], `"event":"approved"`) {
		t.Fatalf("line 3 = %s, want the approval", lines[2])
	}
	lines[2] = regexp.MustCompile(`"not_after":"[^"]+"`).ReplaceAllString(lines[2], `"not_after":"2099-01-01T00:00:00.000Z"`)
	os.WriteFile(logPath, []byte(strings.Join(lines, "")), 0o600)
	_, errOut, code = exCLI(t, cfg, "verify")
	if code != 1 || !strings.Contains(errOut, "line 3:") {
		t.Fatalf("verify after tampering = %d\n%s\nwant 1 naming line 3", code, errOut)
	}
	// A tampered log stops every write (the server reports it) until the
	// officer restores it.
	os.WriteFile(logPath, raw, 0o600)
	if _, errOut, code := exCLI(t, cfg, "verify"); code != 0 {
		t.Fatalf("verify after restoring = %d\n%s", code, errOut)
	}
	if out, errOut, code := exCLI(t, cfg, "purge", "--older-than", "365d", "--by", "RSI Dupont"); code != 0 || !strings.Contains(out, "purged 0 requests") {
		t.Fatalf("purge = %d\n%s%s", code, out, errOut)
	}
}
