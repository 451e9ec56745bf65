package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
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
)

// opsPolicy is the policy of the operations tests: the default one
// (every listed service blocked for everyone) with every listener on
// loopback. Its upstream does not answer; blocked names never reach it.
const opsPolicy = `default_action = "block"
` + listeners

// runTool runs an external program (bounded by a minute) with stdin and
// returns its combined output.
func runTool(t *testing.T, stdin []byte, name string, args ...string) (string, error) {
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
	in := startBalise(t, opsPolicy)
	if _, ok := dnsAddr(in); ok {
		queryBlocked(t, in) // so the DNS series carry samples
	}
	body := in.Metrics()
	if !strings.Contains(body, "balise_build_info") {
		t.Fatalf("/metrics has no balise_build_info:\n%s", body)
	}
	if out, err := runTool(t, []byte(body), promtool, "check", "metrics"); err != nil || out != "" {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// dnsAddr returns the UDP address of the instance's DNS filter, if it
// runs one.
func dnsAddr(in *instance) (string, bool) {
	a := in.Addrs("dns-udp")
	if len(a) == 0 {
		return "", false
	}
	return a[0], true
}

// queryBlocked asks the instance's DNS filter for a listed name the
// default policy blocks and checks that it is refused an address.
func queryBlocked(t *testing.T, in *instance) {
	t.Helper()
	addr, _ := dnsAddr(in)
	m := new(dns.Msg)
	m.SetQuestion("www.facebook.com.", dns.TypeA)
	c := &dns.Client{Timeout: 5 * time.Second}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("DNS query to %s: %v", addr, err)
	}
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok && !a.A.IsUnspecified() {
			t.Fatalf("www.facebook.com answered %v, want it blocked", a.A)
		}
	}
}

// freePort returns a loopback TCP port that was free a moment ago (for
// programs that cannot listen on port 0 and report it).
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// prometheusConfig derives a configuration from deploy/prometheus's: the
// same rule files and job, with Balise's metrics address as the only
// target and one-second intervals.
func prometheusConfig(t *testing.T, target string) []byte {
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

// promAPI queries a Prometheus HTTP API endpoint and decodes its data.
func promAPI(base, path string, params url.Values, data any) error {
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

// promValue evaluates an instant query and returns the value of its single
// sample.
func promValue(base, query string) (float64, error) {
	var data struct {
		Result []struct {
			Value [2]any `json:"value"`
		} `json:"result"`
	}
	if err := promAPI(base, "/api/v1/query", url.Values{"query": {query}}, &data); err != nil {
		return 0, err
	}
	if len(data.Result) != 1 {
		return 0, fmt.Errorf("%s: %d samples, want 1", query, len(data.Result))
	}
	s, _ := data.Result[0].Value[1].(string)
	return strconv.ParseFloat(s, 64)
}

// eventually retries f every 250 ms for up to timeout.
func eventually(t *testing.T, timeout time.Duration, what string, f func() error) {
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

// TestPrometheusScrape starts a real Prometheus with the shipped scrape
// configuration and alert rules pointed at a running Balise, waits for the
// target to be up, causes events, and reads them back through
// Prometheus's query API.
func TestPrometheusScrape(t *testing.T) {
	promBin := requireTool(t, "prometheus")
	in := startBalise(t, opsPolicy)

	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), prometheusConfig(t, in.Addr("metrics")), 0o644); err != nil {
		t.Fatal(err)
	}
	rules, err := os.ReadFile("../deploy/prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "alerts.yml"), rules, 0o644); err != nil {
		t.Fatal(err)
	}
	web := freePort(t)
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
	eventually(t, 30*time.Second, "prometheus loads alerts.yml", func() error {
		var data struct {
			Groups []struct {
				Rules []struct {
					Name   string `json:"name"`
					Health string `json:"health"`
				} `json:"rules"`
			} `json:"groups"`
		}
		if err := promAPI(base, "/api/v1/rules", url.Values{"type": {"alert"}}, &data); err != nil {
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
	eventually(t, 30*time.Second, "target up", func() error {
		var data struct {
			ActiveTargets []struct {
				Labels    map[string]string `json:"labels"`
				Health    string            `json:"health"`
				LastError string            `json:"lastError"`
			} `json:"activeTargets"`
		}
		if err := promAPI(base, "/api/v1/targets", url.Values{"state": {"active"}}, &data); err != nil {
			return err
		}
		for _, tg := range data.ActiveTargets {
			if tg.Labels["job"] == "balise" && tg.Labels["instance"] == in.Addr("metrics") && tg.Health == "up" {
				return nil
			}
		}
		return fmt.Errorf("targets %+v", data.ActiveTargets)
	})

	// Events the test causes reach Prometheus: a reload, and a blocked
	// DNS query when this build runs the DNS filter.
	if got := in.Reload(); got.Msg() != "configuration reloaded" {
		t.Fatalf("reload: %v", got)
	}
	checks := []string{`balise_config_reloads_total{job="balise", result="success"}`}
	if _, ok := dnsAddr(in); ok {
		queryBlocked(t, in)
		checks = append(checks, `sum(balise_dns_queries_total{job="balise", verdict="block"})`)
	} else {
		t.Log("this build runs no DNS filter: checking the reload counter only")
	}
	for _, q := range checks {
		eventually(t, 30*time.Second, q+" > 0 in Prometheus", func() error {
			v, err := promValue(base, q)
			if err == nil && v <= 0 {
				err = fmt.Errorf("value %v", v)
			}
			return err
		})
	}
	if v, err := promValue(base, `up{job="balise"}`); err != nil || v != 1 {
		t.Errorf(`up{job="balise"} = %v, %v; want 1`, v, err)
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
	if out, err := runTool(t, nil, sa, "verify", path); err != nil || out != "" {
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
