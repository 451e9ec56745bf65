package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/balise-net/balise/config"
	"github.com/balise-net/balise/internal/exceptions"
	"github.com/balise-net/balise/internal/exceptions/pgtest"
	"github.com/balise-net/balise/internal/policy"
)

// The PostgreSQL server shared by this package's tests, started on first use.
var pgShared struct {
	once sync.Once
	srv  *pgtest.Server
	err  error
}

func sharedPG(t *testing.T) *pgtest.Server {
	t.Helper()
	pgShared.once.Do(func() { pgShared.srv, pgShared.err = pgtest.New() })
	if pgShared.err != nil {
		if pgShared.srv == nil && os.Getenv("BALISE_E2E") != "1" {
			t.Skipf("PostgreSQL not available: %v", pgShared.err)
		}
		t.Fatalf("PostgreSQL: %v", pgShared.err)
	}
	return pgShared.srv
}

func TestMain(m *testing.M) {
	code := m.Run()
	if pgShared.srv != nil {
		pgShared.srv.Close()
	}
	os.Exit(code)
}

// An embedded register is migrated into PostgreSQL with its chain; the
// commands then work on the PostgreSQL register as they did on the file.
func TestExceptionsMigrateAndCommandsOnPostgres(t *testing.T) {
	srv := sharedPG(t)
	dir := t.TempDir()
	sqliteCfg := filepath.Join(dir, "sqlite.toml")
	os.WriteFile(sqliteCfg, []byte(testPolicy+"\n[exceptions]\nstore = \"data/b.db\"\naudit_log = \"data/audit.jsonl\"\n"), 0o600)
	cfg, err := config.Load(sqliteCfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st, err := exceptions.OpenSQLite(ctx, cfg.Exceptions.Store)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := exceptions.Open(ctx, exceptions.Options{Store: st, CloseStore: true, AuditLog: cfg.Exceptions.AuditLog})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"10.20.1.5", "10.20.1.6"} {
		if _, err := reg.Submit(ctx, exceptions.Submission{Client: netip.MustParseAddr(c), Name: "Julie", Service: "facebook",
			Justification: "Publication des offres d'emploi de la campagne", Duration: 4 * time.Hour}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := reg.Approve(ctx, "EX-0001", exceptions.Approval{By: "RSI", For: time.Hour}); err != nil {
		t.Fatal(err)
	}
	reg.Close()

	url := srv.CreateDB(t)
	pw := filepath.Join(dir, "pg.pw")
	os.WriteFile(pw, []byte("not-needed-with-trust\n"), 0o600)
	out, errOut, code := runCmd("exceptions", "--config", sqliteCfg, "migrate", "--to", url, "--password-file", pw)
	if code != exitOK || !strings.Contains(out, "migrated 2 requests and 3 audit events") || !strings.Contains(out, "the copy verifies") {
		t.Fatalf("migrate = %d\n%s%s", code, out, errOut)
	}
	if _, errOut, code := runCmd("exceptions", "--config", sqliteCfg, "migrate", "--to", url); code != exitInvalid || !strings.Contains(errOut, "empty") {
		t.Fatalf("second migrate = %d %s, want a refusal of a non-empty target", code, errOut)
	}
	if _, errOut, code := runCmd("exceptions", "--config", sqliteCfg, "migrate", "--to", strings.Replace(url, "postgres@", "postgres:pw@", 1)); code != exitUsage || !strings.Contains(errOut, "password") {
		t.Fatalf("migrate to a URL with a password = %d %s, want a usage error", code, errOut)
	}

	pgCfg := filepath.Join(dir, "pg.toml")
	os.WriteFile(pgCfg, []byte(testPolicy+"\n[exceptions]\nstore = \""+url+"\"\nstore_password_file = \"pg.pw\"\n"), 0o600)
	ex := func(args ...string) (string, string, int) {
		return runCmd(append([]string{"exceptions", "--config", pgCfg}, args...)...)
	}
	out, errOut, code = ex("list", "--json")
	var list []exceptions.RequestJSON
	if code != exitOK || json.Unmarshal([]byte(out), &list) != nil || len(list) != 2 || list[0].Status != "approved" {
		t.Fatalf("list on PostgreSQL = %d %s %s", code, out, errOut)
	}
	if out, errOut, code = ex("approve", "EX-0002", "--for", "2h", "--by", "RSI"); code != exitOK {
		t.Fatalf("approve on PostgreSQL = %d %s %s", code, out, errOut)
	}
	if out, errOut, code = ex("revoke", "EX-0001", "--by", "RSI", "--reason", "fin"); code != exitOK {
		t.Fatalf("revoke on PostgreSQL = %d %s %s", code, out, errOut)
	}
	if out, errOut, code = ex("verify"); code != exitOK || !strings.Contains(out, "5 events") || !strings.Contains(out, "audit_events") {
		t.Fatalf("verify on PostgreSQL = %d %s %s", code, out, errOut)
	}
	out, errOut, code = ex("export", "--format", "json", "--by", "RSI")
	var events []exceptions.Event
	if code != exitOK || json.Unmarshal([]byte(out), &events) != nil || len(events) != 5 || events[0].Event != exceptions.EventReceived {
		t.Fatalf("export on PostgreSQL = %d %s %s", code, out, errOut)
	}
	if out, errOut, code = ex("purge", "--older-than", "1d", "--by", "RSI"); code != exitOK || !strings.Contains(out, "purged 0 requests") {
		t.Fatalf("purge on PostgreSQL = %d %s %s", code, out, errOut)
	}
	// explain reads the live grants from PostgreSQL too.
	pc, err := config.Load(pgCfg)
	if err != nil {
		t.Fatal(err)
	}
	grants, err := liveGrants(pc.Exceptions, time.Now())
	if err != nil || len(grants) != 1 || grants[0].ID != "EX-0002" {
		t.Fatalf("liveGrants on PostgreSQL = %v, %v; want EX-0002", grants, err)
	}
}

func TestReadPasswordFile(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		content, want string
		bad           bool
	}{
		{"s3cret\n", "s3cret", false},
		{"s3cret", "s3cret", false},
		{"s3cret\r\n", "s3cret", false},
		{"s3cret \n", "s3cret ", false},
		{"two\nlines\n", "", true},
	} {
		p := filepath.Join(dir, "pw")
		os.WriteFile(p, []byte(tc.content), 0o600)
		got, err := readPasswordFile(p)
		if (err != nil) != tc.bad || got != tc.want {
			t.Errorf("readPasswordFile(%q) = %q, %v; want %q (error: %v)", tc.content, got, err, tc.want, tc.bad)
		}
	}
	if _, err := readPasswordFile(filepath.Join(dir, "absent")); err == nil {
		t.Error("readPasswordFile(absent) succeeded")
	}
	if pw, err := readPasswordFile(""); pw != "" || err != nil {
		t.Errorf("readPasswordFile(\"\") = %q, %v; want none", pw, err)
	}
}

// Two serve runtimes share one PostgreSQL register: an approval made with
// the command line reaches the other node's policy within 2 s, and a
// revocation closes it as fast.
func TestServeTwoNodesShareGrants(t *testing.T) {
	srv := sharedPG(t)
	url := srv.CreateDB(t)
	ctx, cancel := context.WithCancel(context.Background())
	var nodes []*runtime
	for _, name := range []string{"a", "b"} {
		// A long poll: the doorbell brings the change.
		cfg, p := loadPolicy(t, testPolicy+"\n[exceptions]\nstore = \""+url+"\"\nstate_dir = \"state-"+name+"\"\ngrant_poll = \"30s\"\n")
		rt := newRuntime(cfg, p, newRegistry(), slog.New(slog.DiscardHandler), nil)
		if err := startExceptions(ctx, rt); err != nil {
			t.Fatalf("node %s: startExceptions: %v", name, err)
		}
		nodes = append(nodes, rt)
	}
	t.Cleanup(func() {
		cancel()
		for _, rt := range nodes {
			rt.wg.Wait()
		}
	})
	cfgA := filepath.Join(t.TempDir(), "cli.toml")
	os.WriteFile(cfgA, []byte(testPolicy+"\n[exceptions]\nstore = \""+url+"\"\n"), 0o600)
	client := netip.MustParseAddr("10.20.1.5")
	st, err := exceptions.OpenPostgres(ctx, exceptions.PGOptions{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := exceptions.Open(ctx, exceptions.Options{Store: st, CloseStore: true})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	if _, err := reg.Submit(ctx, exceptions.Submission{Client: client, Name: "Julie", Service: "facebook",
		Justification: "Publication des offres d'emploi de la campagne", Duration: 4 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	allowed := func(rt *runtime) bool {
		d := rt.policy.Load().Decide(policy.Query{Host: "www.facebook.com", Client: client, Time: time.Now()})
		return d.Reason == policy.ReasonGrant
	}
	wait := func(want bool, what string) {
		t.Helper()
		start := time.Now()
		for allowed(nodes[1]) != want {
			if time.Since(start) > 2*time.Second {
				t.Fatalf("%s: node b's policy did not follow within 2 s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Logf("%s: node b's policy followed in %s", what, time.Since(start))
	}
	if allowed(nodes[1]) {
		t.Fatal("allowed before any approval")
	}
	if out, errOut, code := runCmd("exceptions", "--config", cfgA, "approve", "EX-0001", "--for", "1h", "--by", "RSI"); code != exitOK {
		t.Fatalf("approve = %d %s %s", code, out, errOut)
	}
	wait(true, "approve")
	if out, errOut, code := runCmd("exceptions", "--config", cfgA, "revoke", "EX-0001", "--by", "RSI", "--reason", "fin"); code != exitOK {
		t.Fatalf("revoke = %d %s %s", code, out, errOut)
	}
	wait(false, "revoke")
}
