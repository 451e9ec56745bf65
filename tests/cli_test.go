package tests

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// metricsOnly turns the DNS filter and the proxy off and puts the metrics
// listener on a free loopback port: the command's own behaviour, alone.
const metricsOnly = `
[metrics]
listen = "127.0.0.1:0"

[dns]
listen = []

[proxy]
listen = []
`

// policyText is a small policy: a communications group allowed at all
// times, a lunch break for everyone else.
const policyText = `timezone = "America/Toronto"
default_action = "block"

[[group]]
name = "communications"
networks = ["10.20.30.0/24"]

[[group]]
name = "personnel"
networks = ["10.20.0.0/16"]

[[schedule]]
name = "diner"
windows = ["mon-fri 12:00-13:00"]

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
`

func TestCheckExamples(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("../deploy/examples/*.toml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 4 {
		t.Fatalf("found %d example configurations in deploy/examples, want at least 4", len(files))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			stdout, stderr, code := runBalise(t, "check", "--config", f)
			if code != 0 {
				t.Fatalf("balise check --config %s: exit %d, want 0\nstderr:\n%s", f, code, stderr)
			}
			if !strings.Contains(stdout, ": ok") || !strings.Contains(stdout, "rules") {
				t.Errorf("balise check --config %s: stdout = %q, want a summary with \": ok\" and the rules", f, stdout)
			}
		})
	}
}

func TestCheckBadConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "bad.toml")
	text := "timezone = \"America/Toronto\"\nbogus_key = 1\n\n[[schedule]]\nname = \"pauses\"\nwindows = [\"mon 25:00-26:00\"]\n"
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, code := runBalise(t, "check", "--config", path)
	if code != 1 {
		t.Fatalf("check on a bad config: exit %d, want 1\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	if len(lines) < 2 {
		t.Fatalf("check on a config with 2 problems printed %d lines, want one per problem:\n%s", len(lines), stderr)
	}
	posLine := regexp.MustCompile("^" + regexp.QuoteMeta(path) + `:2:\d+: .*bogus_key`)
	if !posLine.MatchString(lines[0]) {
		t.Errorf("first problem = %q, want %s:2:COL: ... bogus_key ...", lines[0], path)
	}
	found := false
	for _, l := range lines {
		if strings.HasPrefix(l, path+":") && strings.Contains(l, "25:00") {
			found = true
		}
	}
	if !found {
		t.Errorf("no problem line names the bad window 25:00:\n%s", stderr)
	}
}

func TestCheckUsage(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"check"},
		{"check", "--config"},
		{"check", "--nope", "x"},
		{"explain", "--config", "x.toml"},
		{"frobnicate"},
		{},
	} {
		_, _, code := runBalise(t, args...)
		if code != 2 {
			t.Errorf("balise %s: exit %d, want 2 (usage)", strings.Join(args, " "), code)
		}
	}
	_, stderr, code := runBalise(t, "check", "--config", filepath.Join(t.TempDir(), "missing.toml"))
	if code != 1 {
		t.Errorf("check on a missing file: exit %d, want 1; stderr %q", code, stderr)
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	stdout, _, code := runBalise(t, "version")
	if code != 0 || !strings.HasPrefix(stdout, "balise ") {
		t.Errorf("balise version = %q, exit %d; want \"balise ...\", exit 0", stdout, code)
	}
}

func writeFile(t *testing.T, name, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestExplainJSON(t *testing.T) {
	t.Parallel()
	cfg := writeFile(t, "policy.toml", policyText)
	tests := []struct {
		client, host, at                         string
		verdict, service, category, rule, reason string
		until                                    string
	}{
		// A staff workstation during lunch, then after it.
		{"10.20.1.5", "www.facebook.com", "2026-05-12T12:30:00-04:00", "allow", "facebook", "networking", "diner", "rule", "2026-05-12T13:00:00-04:00"},
		{"10.20.1.5", "WWW.FaceBook.COM.", "2026-05-12T14:00:00-04:00", "block", "facebook", "networking", "", "default", "2026-05-13T12:00:00-04:00"},
		// The communications team, at any time (bounded to 24 h).
		{"10.20.30.7", "facebook.com", "2026-05-12T14:00:00-04:00", "allow", "facebook", "networking", "communications", "rule", "2026-05-13T14:00:00-04:00"},
		// Not a listed host.
		{"10.20.1.5", "notfacebook.com", "2026-05-12T14:00:00-04:00", "allow", "", "", "", "unlisted", ""},
	}
	for _, tt := range tests {
		stdout, stderr, code := runBalise(t, "explain", "--config", cfg, "--client", tt.client, "--host", tt.host, "--at", tt.at, "--json")
		if code != 0 {
			t.Fatalf("explain %s %s: exit %d\n%s", tt.client, tt.host, code, stderr)
		}
		var got map[string]any
		if err := json.Unmarshal([]byte(stdout), &got); err != nil {
			t.Fatalf("explain --json printed invalid JSON: %v\n%s", err, stdout)
		}
		want := map[string]string{"verdict": tt.verdict, "service": tt.service, "category": tt.category, "rule": tt.rule, "reason": tt.reason, "until": tt.until}
		for k, w := range want {
			if g, ok := got[k].(string); !ok || g != w {
				t.Errorf("explain --client %s --host %s --at %s: %s = %v, want %q", tt.client, tt.host, tt.at, k, got[k], w)
			}
		}
	}
}

func TestExplainInvalidInput(t *testing.T) {
	t.Parallel()
	cfg := writeFile(t, "policy.toml", policyText)
	for _, args := range [][]string{
		{"--client", "10.20.1.300", "--host", "facebook.com"},
		{"--client", "not-an-ip", "--host", "facebook.com"},
		{"--client", "10.20.1.5", "--host", "bad host!.com"},
		{"--client", "10.20.1.5", "--host", "facebook.com", "--at", "tuesday"},
	} {
		args = append([]string{"explain", "--config", cfg}, args...)
		_, stderr, code := runBalise(t, args...)
		if code != 1 || stderr == "" {
			t.Errorf("balise %s: exit %d, stderr %q; want exit 1 with a message", strings.Join(args, " "), code, stderr)
		}
	}
}

func TestServeEndpoints(t *testing.T) {
	t.Parallel()
	in := startBalise(t, policyText+metricsOnly)
	if code, body := in.Get("/healthz"); code != http.StatusOK || strings.TrimSpace(body) != "ok" {
		t.Errorf("GET /healthz = %d %q, want 200 \"ok\"", code, body)
	}
	if code, body := in.Get("/readyz"); code != http.StatusOK {
		t.Errorf("GET /readyz = %d %q, want 200", code, body)
	}
	m := in.Metrics()
	for _, want := range []string{"balise_build_info{", "go_goroutines", "process_start_time_seconds", "balise_config_reloads_total"} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if v, ok := metricValue(m, "balise_config_last_reload_successful"); !ok || v != 1 {
		t.Errorf("balise_config_last_reload_successful = %v (found %v), want 1", v, ok)
	}
	if v, ok := metricValue(m, "balise_policy_domains"); !ok || v < 100 {
		t.Errorf("balise_policy_domains = %v (found %v), want the catalog's domains", v, ok)
	}
	if code := in.Stop(); code != 0 {
		t.Errorf("exit code after SIGTERM = %d, want 0", code)
	}
}

func TestServeReload(t *testing.T) {
	t.Parallel()
	in := startBalise(t, policyText+metricsOnly)
	before, ok := in.MetricValue("balise_policy_domains")
	if !ok {
		t.Fatal("no balise_policy_domains")
	}

	// A broken configuration: the running one stays, the failure is
	// logged and counted.
	in.WriteConfig(policyText + metricsOnly + "\n[[rule]]\nname = \"broken\"\nduring = [\"nope\"]\naction = \"allow\"\n")
	l := in.Reload()
	if !strings.HasPrefix(l.Msg(), "reload failed") || !strings.Contains(l.Str("error"), "nope") {
		t.Fatalf("reload of a broken config logged %v, want reload failed naming the unknown schedule", l)
	}
	if v, _ := in.MetricValue("balise_config_reloads_total", "result=failure"); v != 1 {
		t.Errorf("balise_config_reloads_total{result=failure} = %v, want 1", v)
	}
	if v, _ := in.MetricValue("balise_config_last_reload_successful"); v != 0 {
		t.Errorf("balise_config_last_reload_successful = %v after a failed reload, want 0", v)
	}
	if code, _ := in.Get("/healthz"); code != http.StatusOK {
		t.Errorf("GET /healthz after a failed reload = %d, want 200", code)
	}
	if exited, code := in.Exited(); exited {
		t.Fatalf("balise exited (%d) after a failed reload", code)
	}
	if v, _ := in.MetricValue("balise_policy_domains"); v != before {
		t.Errorf("balise_policy_domains = %v after a failed reload, want %v (the running policy)", v, before)
	}

	// A changed configuration: three more listed domains.
	in.WriteConfig(policyText + metricsOnly + "\n[[list]]\nname = \"locale\"\ncategory = \"networking\"\ndomains = [\"a.example\", \"b.example\", \"c.example\"]\n")
	l = in.Reload()
	if l.Msg() != "configuration reloaded" {
		t.Fatalf("reload of a valid config logged %v, want configuration reloaded", l)
	}
	if v, _ := in.MetricValue("balise_policy_domains"); v != before+3 {
		t.Errorf("balise_policy_domains = %v after adding 3 domains, want %v", v, before+3)
	}
	if v, _ := in.MetricValue("balise_config_reloads_total", "result=success"); v != 1 {
		t.Errorf("balise_config_reloads_total{result=success} = %v, want 1", v)
	}
	if v, _ := in.MetricValue("balise_config_last_reload_successful"); v != 1 {
		t.Errorf("balise_config_last_reload_successful = %v, want 1", v)
	}
}

func TestServeBadConfig(t *testing.T) {
	t.Parallel()
	cfg := writeFile(t, "bad.toml", "timezone = \"Mars/Olympus\"\n")
	_, stderr, code := runBalise(t, "serve", "--config", cfg, "--log-format", "json")
	if code != 1 || !strings.Contains(stderr, "Mars/Olympus") {
		t.Errorf("serve with an invalid config: exit %d, stderr %q; want exit 1 naming the zone", code, stderr)
	}
}

func TestServeBindFailure(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	text := policyText + fmt.Sprintf("\n[metrics]\nlisten = %q\n\n[dns]\nlisten = []\n\n[proxy]\nlisten = []\n", ln.Addr().String())
	cfg := writeFile(t, "busy.toml", text)
	_, stderr, code := runBalise(t, "serve", "--config", cfg, "--log-format", "json")
	if code != 1 || !strings.Contains(stderr, "cannot listen") {
		t.Errorf("serve on a busy port: exit %d, stderr %q; want exit 1 with \"cannot listen\"", code, stderr)
	}
}

// TestServeDefault starts `balise serve` without --config: the embedded
// default listens on loopback at fixed ports, so the test skips when one
// of them is taken.
func TestServeDefault(t *testing.T) {
	for _, a := range []string{"127.0.0.1:9464", "127.0.0.1:3128", "127.0.0.1:5353"} {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			t.Skipf("port of the default configuration busy: %v", err)
		}
		ln.Close()
	}
	if pc, err := net.ListenPacket("udp", "127.0.0.1:5353"); err != nil {
		t.Skipf("port of the default configuration busy: %v", err)
	} else {
		pc.Close()
	}
	in := startBaliseWith(t, startOptions{NoConfig: true})
	for _, l := range in.Lines() {
		if l.Msg() != "listening" {
			continue
		}
		host, _, err := net.SplitHostPort(l.Str("addr"))
		if err != nil || !net.ParseIP(host).IsLoopback() {
			t.Errorf("default configuration listens on %q for %s, want loopback only", l.Str("addr"), l.Str("service"))
		}
	}
	if got := in.Addr("metrics"); got != "127.0.0.1:9464" {
		t.Errorf("default metrics address = %s, want 127.0.0.1:9464", got)
	}
	if code, body := in.Get("/healthz"); code != http.StatusOK {
		t.Errorf("GET /healthz = %d %q, want 200", code, body)
	}
	if code := in.Stop(); code != 0 {
		t.Errorf("exit code after SIGTERM = %d, want 0", code)
	}
}

// TestServeSystemdNotify runs balise as systemd would with Type=notify and
// a watchdog, and reads its notifications from a real unixgram socket.
func TestServeSystemdNotify(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msgs := make(chan string, 100)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	want := func(prefix string) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case m, ok := <-msgs:
				if !ok {
					t.Fatalf("notify socket closed before %q", prefix)
				}
				if strings.HasPrefix(m, prefix) {
					return
				}
			case <-deadline:
				t.Fatalf("no %q notification within 10 s", prefix)
			}
		}
	}
	in := startBaliseWith(t, startOptions{
		Config: policyText + metricsOnly,
		Env:    []string{"NOTIFY_SOCKET=" + sock, "WATCHDOG_USEC=200000"},
	})
	want("READY=1")
	want("WATCHDOG=1")
	in.Reload()
	want("RELOADING=1\nMONOTONIC_USEC=")
	want("READY=1")
	in.Stop()
	want("STOPPING=1")
}
