package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"sigs.k8s.io/yaml"

	"github.com/balise-net/balise/internal/exceptions"
)

// opsPolicy is the policy of the operations tests: the default one
// (every listed service blocked for everyone) with every listener on
// loopback. Its upstream does not answer; blocked names never reach it.
const opsPolicy = `default_action = "block"
` + listeners

// opsStartFull starts Balise with every part on: DNS filter, proxy,
// exception register, and a URL list served over https by the test
// (trusted through SSL_CERT_FILE), so that every metric family, the
// per-list ones included, has series. It returns once the list's first
// download is done.
func opsStartFull(t *testing.T) *instance {
	t.Helper()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("example-social.test\n"))
	}))
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	// The directory client registers its metrics at start and connects
	// only when a user is looked up: a directory nobody answers for is
	// enough to expose them.
	if err := os.WriteFile(filepath.Join(dir, "directory-password"), []byte("not-used\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	in := startBaliseWith(t, startOptions{
		Dir: dir,
		Env: []string{"SSL_CERT_FILE=" + ca},
		Config: opsPolicy + `
[directory]
url = "ldaps://127.0.0.1:1"
bind_dn = "svc-balise@balise.test"
bind_password_file = "directory-password"
base_dn = "DC=balise,DC=test"

[exceptions]
store = "balise-data/balise.db"
audit_log = "balise-data/exceptions.jsonl"
state_dir = "balise-data"

[[list]]
name = "local-social"
category = "networking"
domains = ["example-social.test"]
urls = ["` + srv.URL + `/list.txt"]
`})
	opsEventually(t, 15*time.Second, "first download of the URL list", func() error {
		if v, ok := in.MetricValue("balise_list_last_refresh_timestamp_seconds", "list=local-social"); !ok || v <= 0 {
			return fmt.Errorf("balise_list_last_refresh_timestamp_seconds{list=\"local-social\"} = %v, %v", v, ok)
		}
		return nil
	})
	return in
}

// opsRunTool runs an external program (bounded by a minute) with stdin and
// returns its combined output.
func opsRunTool(t *testing.T, stdin []byte, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return strings.TrimSpace(out.String()), err
}

// TestPromtoolCheckMetrics feeds a running Balise's /metrics to
// `promtool check metrics`, which lints names, suffixes, units and help.
func TestPromtoolCheckMetrics(t *testing.T) {
	promtool := requireTool(t, "promtool")
	in := opsStartFull(t)
	opsQueryBlocked(t, in) // so the DNS series carry samples
	body := in.Metrics()
	if !strings.Contains(body, "balise_build_info") {
		t.Fatalf("/metrics has no balise_build_info:\n%s", body)
	}
	if out, err := opsRunTool(t, []byte(body), promtool, "check", "metrics"); err != nil || out != "" {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// opsQueryBlocked asks the instance's DNS filter for a listed name the
// default policy blocks and checks the block answer (NXDOMAIN, the
// default block_response).
func opsQueryBlocked(t *testing.T, in *instance) {
	t.Helper()
	addr := in.Addr("dns-udp")
	m := new(dns.Msg)
	m.SetQuestion("www.facebook.com.", dns.TypeA)
	c := &dns.Client{Timeout: 5 * time.Second}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("DNS query to %s: %v", addr, err)
	}
	if r.Rcode != dns.RcodeNameError || len(r.Answer) != 0 {
		t.Fatalf("www.facebook.com: rcode %s, %d answers; want NXDOMAIN (blocked)", dns.RcodeToString[r.Rcode], len(r.Answer))
	}
}

// opsFreePort returns a loopback TCP port that was free a moment ago (for
// programs that cannot listen on port 0 and report it).
func opsFreePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// opsPrometheusConfig derives a configuration from deploy/prometheus's: the
// same rule files and job, with Balise's metrics address as the only
// target and one-second intervals.
func opsPrometheusConfig(t *testing.T, target string) []byte {
	t.Helper()
	b, err := os.ReadFile("../deploy/prometheus/prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatalf("deploy/prometheus/prometheus.yml: %v", err)
	}
	cfg["global"] = map[string]any{"scrape_interval": "1s", "evaluation_interval": "1s"}
	scs, _ := cfg["scrape_configs"].([]any)
	if len(scs) != 1 {
		t.Fatalf("deploy/prometheus/prometheus.yml has %d scrape configs, want 1", len(scs))
	}
	sc := scs[0].(map[string]any)
	sc["scrape_interval"], sc["scrape_timeout"] = "1s", "1s"
	sc["static_configs"] = []any{map[string]any{"targets": []any{target}}}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// opsPromAPI queries a Prometheus HTTP API endpoint and decodes its data.
func opsPromAPI(base, path string, params url.Values, data any) error {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(base + path + "?" + params.Encode())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var env struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&env); err != nil {
		return fmt.Errorf("%s: %v", path, err)
	}
	if env.Status != "success" {
		return fmt.Errorf("%s: %s", path, env.Error)
	}
	return json.Unmarshal(env.Data, data)
}

// opsPromValue evaluates an instant query and returns the value of its single
// sample.
func opsPromValue(base, query string) (float64, error) {
	var data struct {
		Result []struct {
			Value [2]any `json:"value"`
		} `json:"result"`
	}
	if err := opsPromAPI(base, "/api/v1/query", url.Values{"query": {query}}, &data); err != nil {
		return 0, err
	}
	if len(data.Result) != 1 {
		return 0, fmt.Errorf("%s: %d samples, want 1", query, len(data.Result))
	}
	s, _ := data.Result[0].Value[1].(string)
	return strconv.ParseFloat(s, 64)
}

// opsEventually retries f every 250 ms for up to timeout.
func opsEventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// opsSubmitRequest records a pending exception request in the register
// of a running instance, from this process, as the block page's form
// would; it returns the request's id.
func opsSubmitRequest(t *testing.T, store, auditLog string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := exceptions.OpenSQLite(ctx, store)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := exceptions.Open(ctx, exceptions.Options{Store: st, CloseStore: true, AuditLog: auditLog})
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	defer reg.Close()
	rc, err := reg.Submit(ctx, exceptions.Submission{
		Client:        netip.MustParseAddr("10.20.1.7"),
		Name:          "Infirmière de garde",
		Service:       "facebook",
		Host:          "www.facebook.com",
		Justification: "Publier l'avis de fermeture de la clinique sur la page de l'établissement.",
		Duration:      4 * time.Hour,
	})
	if err != nil {
		t.Fatalf("Submit: %v", err)
	}
	return rc.ID
}

// opsDeployExprs returns the PromQL expressions of the shipped alerts and
// dashboard, keyed by where they are.
func opsDeployExprs(t *testing.T) map[string]string {
	t.Helper()
	exprs := map[string]string{}
	b, err := os.ReadFile("../deploy/prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var rf struct {
		Groups []struct {
			Rules []struct {
				Alert string `json:"alert"`
				Expr  string `json:"expr"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := yaml.Unmarshal(b, &rf); err != nil {
		t.Fatal(err)
	}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			exprs["alert "+r.Alert] = r.Expr
		}
	}
	b, err = os.ReadFile("../deploy/grafana/balise.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				RefID string `json:"refId"`
				Expr  string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			exprs[fmt.Sprintf("panel %q %s", p.Title, tg.RefID)] = tg.Expr
		}
	}
	return exprs
}

// TestPrometheusScrape starts a real Prometheus with the shipped scrape
// configuration and alert rules pointed at a running Balise, waits for the
// target to be up, causes events, and reads them back through
// Prometheus's API: counters the test moved, an alert the test caused,
// and every dashboard query evaluated without error.
func TestPrometheusScrape(t *testing.T) {
	promBin := requireTool(t, "prometheus")
	// pending_alert_after = "1s": a request is overdue, and
	// BaliseExceptionRequestsWaiting fires, one second after it arrives.
	in := startBalise(t, opsPolicy+`
[exceptions]
store = "balise-data/balise.db"
audit_log = "balise-data/exceptions.jsonl"
state_dir = "balise-data"
pending_alert_after = "1s"
`)
	target := in.Addr("metrics")

	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), opsPrometheusConfig(t, target), 0o644); err != nil {
		t.Fatal(err)
	}
	rules, err := os.ReadFile("../deploy/prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "alerts.yml"), rules, 0o644); err != nil {
		t.Fatal(err)
	}
	web := opsFreePort(t)
	var plog bytes.Buffer
	cmd := exec.Command(promBin,
		"--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+web,
		"--log.level=warn",
	)
	cmd.Stdout, cmd.Stderr = &plog, &plog
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting prometheus: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("prometheus log:\n%s", plog.String())
		}
	})
	base := "http://" + web

	// The shipped rules load in a real Prometheus.
	opsEventually(t, 30*time.Second, "prometheus loads alerts.yml", func() error {
		var data struct {
			Groups []struct {
				Rules []struct {
					Name   string `json:"name"`
					Health string `json:"health"`
				} `json:"rules"`
			} `json:"groups"`
		}
		if err := opsPromAPI(base, "/api/v1/rules", url.Values{"type": {"alert"}}, &data); err != nil {
			return err
		}
		n := 0
		for _, g := range data.Groups {
			for _, r := range g.Rules {
				n++
				if r.Health == "err" {
					return fmt.Errorf("alert %s: health %s", r.Name, r.Health)
				}
			}
		}
		if want := bytes.Count(rules, []byte("- alert: ")); n != want {
			return fmt.Errorf("%d alert rules loaded, want %d", n, want)
		}
		return nil
	})

	// The target is scraped successfully under job "balise".
	opsEventually(t, 30*time.Second, "target up", func() error {
		var data struct {
			ActiveTargets []struct {
				Labels    map[string]string `json:"labels"`
				Health    string            `json:"health"`
				LastError string            `json:"lastError"`
			} `json:"activeTargets"`
		}
		if err := opsPromAPI(base, "/api/v1/targets", url.Values{"state": {"active"}}, &data); err != nil {
			return err
		}
		for _, tg := range data.ActiveTargets {
			if tg.Labels["job"] == "balise" && tg.Labels["instance"] == target && tg.Health == "up" {
				return nil
			}
		}
		return fmt.Errorf("targets %+v", data.ActiveTargets)
	})

	// Events the test causes reach Prometheus: a reload, an exception
	// request and a blocked DNS query.
	if got := in.Reload(); got.Msg() != "configuration reloaded" {
		t.Fatalf("reload: %v", got)
	}
	opsSubmitRequest(t, filepath.Join(in.Dir, "balise-data", "balise.db"), filepath.Join(in.Dir, "balise-data", "exceptions.jsonl"))
	opsQueryBlocked(t, in)
	for _, q := range []string{
		`balise_config_reloads_total{job="balise", result="success"}`,
		`balise_exceptions_pending{job="balise"}`,
		`sum(balise_dns_queries_total{job="balise", verdict="block", reason="default"})`,
	} {
		opsEventually(t, 30*time.Second, q+" > 0 in Prometheus", func() error {
			v, err := opsPromValue(base, q)
			if err == nil && v <= 0 {
				err = fmt.Errorf("value %v", v)
			}
			return err
		})
	}
	if v, err := opsPromValue(base, `up{job="balise"}`); err != nil || v != 1 {
		t.Errorf(`up{job="balise"} = %v, %v; want 1`, v, err)
	}

	// The overdue request fires the shipped alert, for this instance.
	opsEventually(t, 30*time.Second, "BaliseExceptionRequestsWaiting firing", func() error {
		var data struct {
			Alerts []struct {
				Labels map[string]string `json:"labels"`
				State  string            `json:"state"`
			} `json:"alerts"`
		}
		if err := opsPromAPI(base, "/api/v1/alerts", nil, &data); err != nil {
			return err
		}
		for _, a := range data.Alerts {
			if a.Labels["alertname"] == "BaliseExceptionRequestsWaiting" && a.Labels["instance"] == target && a.State == "firing" {
				return nil
			}
		}
		return fmt.Errorf("alerts %+v", data.Alerts)
	})

	// Every dashboard and alert query evaluates on real data: no error
	// (label clashes, many-to-many matches), whatever the result.
	vars := strings.NewReplacer("$__rate_interval", "1m", "$job", "balise", "$instance", ".+")
	for where, expr := range opsDeployExprs(t) {
		var data json.RawMessage
		if err := opsPromAPI(base, "/api/v1/query", url.Values{"query": {vars.Replace(expr)}}, &data); err != nil {
			t.Errorf("%s: %v", where, err)
		}
	}
}

// TestSystemdUnitVerify runs `systemd-analyze verify` on the shipped unit
// with its binary path replaced by the binary under test; verify warns
// (and still exits 0) about unknown directives, so any output fails.
func TestSystemdUnitVerify(t *testing.T) {
	sa := requireTool(t, "systemd-analyze")
	unit, err := os.ReadFile("../deploy/systemd/balise.service")
	if err != nil {
		t.Fatal(err)
	}
	const shipped = "/usr/local/bin/balise "
	if !bytes.Contains(unit, []byte(shipped)) {
		t.Fatalf("unit does not run %s", shipped)
	}
	path := filepath.Join(t.TempDir(), "balise.service")
	if err := os.WriteFile(path, bytes.ReplaceAll(unit, []byte(shipped), []byte(baliseBin+" ")), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := opsRunTool(t, nil, sa, "verify", path); err != nil || out != "" {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestShippedConfigsCheck runs `balise check` on the configurations the
// deployment files ship: the systemd example and each front-end's config
// in the Kubernetes ConfigMap.
func TestShippedConfigsCheck(t *testing.T) {
	configs := map[string][]byte{}
	b, err := os.ReadFile("../deploy/systemd/balise.toml")
	if err != nil {
		t.Fatal(err)
	}
	configs["systemd/balise.toml"] = b
	b, err = os.ReadFile("../deploy/kubernetes/configmap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cm struct {
		Data map[string]string `json:"data"`
	}
	if err := yaml.Unmarshal(b, &cm); err != nil {
		t.Fatal(err)
	}
	if len(cm.Data) < 2 {
		t.Fatalf("ConfigMap has %d configs, want one per front-end", len(cm.Data))
	}
	for k, v := range cm.Data {
		configs["kubernetes/configmap.yaml:"+k] = []byte(v)
	}
	dir := t.TempDir()
	for name, text := range configs {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, strings.NewReplacer("/", "_", ":", "_").Replace(name))
			if err := os.WriteFile(path, text, 0o644); err != nil {
				t.Fatal(err)
			}
			if stdout, stderr, code := runBalise(t, "check", "--config", path); code != 0 {
				t.Errorf("balise check %s: exit %d\n%s%s", name, code, stdout, stderr)
			}
		})
	}
}

// registerPolicy runs only the metrics listener and the exception
// register, with its files under balise-data/ in the instance's directory.
const registerPolicy = `
[metrics]
listen = "127.0.0.1:0"

[dns]
listen = []

[proxy]
listen = []

[exceptions]
store = "balise-data/balise.db"
audit_log = "balise-data/exceptions.jsonl"
state_dir = "balise-data"
`

// TestRegisterBackup follows the operations guide: while Balise runs, a
// request is recorded by another process, the database is copied with
// sqlite3's .backup and with VACUUM INTO, the audit log with a plain copy,
// and `balise exceptions verify` and `list` accept each pair of copies.
func TestRegisterBackup(t *testing.T) {
	sqlite := requireTool(t, "sqlite3")
	in := startBalise(t, registerPolicy)
	data := filepath.Join(in.Dir, "balise-data")
	id := opsSubmitRequest(t, filepath.Join(data, "balise.db"), filepath.Join(data, "exceptions.jsonl"))
	opsEventually(t, 15*time.Second, "the running balise counts the request", func() error {
		if v, ok := in.MetricValue("balise_exceptions_pending"); !ok || v != 1 {
			return fmt.Errorf("balise_exceptions_pending = %v, %v; want 1", v, ok)
		}
		return nil
	})

	backups := t.TempDir()
	for i, sql := range []string{".backup '%s'", "VACUUM INTO '%s'"} {
		db := filepath.Join(backups, fmt.Sprintf("balise-%d.db", i))
		if out, err := opsRunTool(t, nil, sqlite, filepath.Join(data, "balise.db"), fmt.Sprintf(sql, db)); err != nil {
			t.Fatalf("sqlite3 %s: %v\n%s", sql, err, out)
		}
		log := filepath.Join(backups, fmt.Sprintf("exceptions-%d.jsonl", i))
		b, err := os.ReadFile(filepath.Join(data, "exceptions.jsonl"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(log, b, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg := filepath.Join(backups, fmt.Sprintf("restore-%d.toml", i))
		text := fmt.Sprintf("[metrics]\nlisten = []\n\n[exceptions]\nstore = %q\naudit_log = %q\nstate_dir = %q\n",
			db, log, filepath.Join(backups, fmt.Sprintf("state-%d", i)))
		if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		if stdout, stderr, code := runBalise(t, "exceptions", "--config", cfg, "verify"); code != 0 {
			t.Errorf("copy made with %q: verify exit %d\n%s%s", sql, code, stdout, stderr)
		}
		stdout, stderr, code := runBalise(t, "exceptions", "--config", cfg, "list", "--json")
		if code != 0 || !strings.Contains(stdout, id) {
			t.Errorf("copy made with %q: list exit %d, want request %s in it\n%s%s", sql, code, id, stdout, stderr)
		}
	}
}
