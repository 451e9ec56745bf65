package tests

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/balise-net/balise/deploy"
)

// baliseBin is the binary built once by TestMain.
var baliseBin string

// e2eStrict is true when BALISE_E2E=1: missing tools and privileges fail
// tests instead of skipping them.
var e2eStrict = os.Getenv("BALISE_E2E") == "1"

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "balise-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "tests:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	defer ad.Close() // the domain controller of the identity tests, if one started
	baliseBin = filepath.Join(dir, "balise")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// The binary under test is the release binary: the same flags and
	// environment as the container image (deploy.BuildArgs).
	cmd := exec.CommandContext(ctx, "go", deploy.BuildArgs(baliseBin)...)
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), deploy.BuildEnv()...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "tests: building balise:", err)
		return 1
	}
	return m.Run()
}

// requireTool skips the test when the external tool name is not on PATH,
// or fails it under BALISE_E2E=1. It returns the tool's path.
func requireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if e2eStrict {
			t.Fatalf("BALISE_E2E=1 but %s is not installed: %v", name, err)
		}
		t.Skipf("%s is not installed (set BALISE_E2E=1 to make this a failure)", name)
	}
	return p
}

// requireRoot skips the test when not running as root, or fails it under
// BALISE_E2E=1.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		if e2eStrict {
			t.Fatal("BALISE_E2E=1 but the test needs root")
		}
		t.Skip("needs root (set BALISE_E2E=1 to make this a failure)")
	}
}

// listeners is a configuration fragment that puts every listener of
// Balise on 127.0.0.1 at a port chosen by the kernel; read the ports back
// with (*instance).Addr. It holds tables only, so append it after the
// top-level keys of a configuration (TOML requires top-level keys first).
// A test that sets one of these tables itself must not append this.
const listeners = `
[metrics]
listen = "127.0.0.1:0"

[dns]
listen = "127.0.0.1:0"
upstreams = ["127.0.0.1:1"]

[proxy]
listen = "127.0.0.1:0"
`

// runBalise runs the binary with args (bounded by 60 s) and returns its
// standard output, standard error and exit code.
func runBalise(t testing.TB, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, baliseBin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		code = 0
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatalf("running balise %s: %v", strings.Join(args, " "), err)
	}
	return out.String(), errb.String(), code
}

// logLine is one JSON log line of Balise.
type logLine map[string]any

// Str returns the string value of key ("" when absent or not a string).
func (l logLine) Str(key string) string {
	s, _ := l[key].(string)
	return s
}

// Msg returns the line's message.
func (l logLine) Msg() string { return l.Str("msg") }

// startOptions configure startBaliseWith.
type startOptions struct {
	// Config is the configuration text, written to config.toml in the
	// instance's directory. Ignored when NoConfig is set.
	Config string
	// NoConfig starts `balise serve` without --config (the embedded
	// default configuration).
	NoConfig bool
	// Args are extra arguments after `serve --config F --log-format json`.
	Args []string
	// Env are extra "KEY=value" environment variables.
	Env []string
	// Dir is the working directory (default: a new t.TempDir()), which
	// also holds config.toml.
	Dir string
	// Timeout bounds the wait for msg="started" (default 10 s).
	Timeout time.Duration
}

// instance is a running `balise serve`. Its methods are safe for
// concurrent use.
type instance struct {
	t          testing.TB
	cmd        *exec.Cmd
	Dir        string // working directory; holds config.toml
	ConfigPath string // "" when started without --config

	mu     sync.Mutex
	raw    []string            // every stderr line
	lines  []logLine           // stderr lines that are JSON
	addrs  map[string][]string // service -> addresses, in log order
	cond   *sync.Cond
	exited bool
	code   int
	done   chan struct{}
}

// startBalise starts `balise serve --config F --log-format json` with
// configText as F and waits (up to 10 s) until it logs msg="started". The
// process is killed when the test ends; if the test failed, its log is
// printed.
func startBalise(t testing.TB, configText string) *instance {
	t.Helper()
	return startBaliseWith(t, startOptions{Config: configText})
}

// startBaliseWith is startBalise with options.
func startBaliseWith(t testing.TB, o startOptions) *instance {
	t.Helper()
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Second
	}
	in := &instance{t: t, Dir: o.Dir, addrs: map[string][]string{}, done: make(chan struct{})}
	in.cond = sync.NewCond(&in.mu)
	args := []string{"serve"}
	if !o.NoConfig {
		in.ConfigPath = filepath.Join(o.Dir, "config.toml")
		if err := os.WriteFile(in.ConfigPath, []byte(o.Config), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--config", in.ConfigPath)
	}
	args = append(args, "--log-format", "json")
	args = append(args, o.Args...)
	cmd := exec.Command(baliseBin, args...)
	cmd.Dir = o.Dir
	cmd.Env = append(os.Environ(), o.Env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting balise: %v", err)
	}
	in.cmd = cmd
	go in.readLog(stderr)
	t.Cleanup(func() {
		in.kill()
		if t.Failed() {
			t.Logf("balise log:\n%s", in.Stderr())
		}
	})
	if _, err := in.waitLog(0, o.Timeout, func(l logLine) bool { return l.Msg() == "started" }); err != nil {
		t.Fatalf("balise did not start: %v\nlog:\n%s", err, in.Stderr())
	}
	return in
}

// readLog collects stderr lines until the process closes it, then reaps
// the process.
func (in *instance) readLog(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for sc.Scan() {
		text := sc.Text()
		var l logLine
		isJSON := json.Unmarshal([]byte(text), &l) == nil
		in.mu.Lock()
		in.raw = append(in.raw, text)
		if isJSON {
			in.lines = append(in.lines, l)
			if l.Msg() == "listening" {
				in.addrs[l.Str("service")] = append(in.addrs[l.Str("service")], l.Str("addr"))
			}
		}
		in.cond.Broadcast()
		in.mu.Unlock()
	}
	err := in.cmd.Wait()
	in.mu.Lock()
	in.exited = true
	in.code = exitCode(err)
	in.cond.Broadcast()
	in.mu.Unlock()
	close(in.done)
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// kill stops the process with SIGKILL if it still runs and waits for it.
func (in *instance) kill() {
	in.cmd.Process.Kill()
	select {
	case <-in.done:
	case <-time.After(10 * time.Second):
	}
}

// Addr returns the first address service listens on, failing the test if
// it logged none. Services: metrics, dns-udp, dns-tcp, proxy,
// transparent-http, transparent-https.
func (in *instance) Addr(service string) string {
	in.t.Helper()
	a := in.Addrs(service)
	if len(a) == 0 {
		in.t.Fatalf("balise logged no msg=listening for service %q; log:\n%s", service, in.Stderr())
	}
	return a[0]
}

// Addrs returns every address service listens on, in log order.
func (in *instance) Addrs(service string) []string {
	in.mu.Lock()
	defer in.mu.Unlock()
	return append([]string(nil), in.addrs[service]...)
}

// Lines returns the JSON log lines so far.
func (in *instance) Lines() []logLine {
	in.mu.Lock()
	defer in.mu.Unlock()
	return append([]logLine(nil), in.lines...)
}

// Stderr returns everything written to stderr so far.
func (in *instance) Stderr() string {
	in.mu.Lock()
	defer in.mu.Unlock()
	return strings.Join(in.raw, "\n")
}

// WaitLog waits up to timeout for a JSON log line at index >= from (an
// earlier len(in.Lines())) for which match is true, and returns it. It
// fails the test on timeout or if the process exits first.
func (in *instance) WaitLog(from int, timeout time.Duration, match func(logLine) bool) logLine {
	in.t.Helper()
	l, err := in.waitLog(from, timeout, match)
	if err != nil {
		in.t.Fatalf("%v; log:\n%s", err, in.Stderr())
	}
	return l
}

func (in *instance) waitLog(from int, timeout time.Duration, match func(logLine) bool) (logLine, error) {
	deadline := time.Now().Add(timeout)
	timer := time.AfterFunc(timeout, func() {
		in.mu.Lock()
		in.cond.Broadcast()
		in.mu.Unlock()
	})
	defer timer.Stop()
	in.mu.Lock()
	defer in.mu.Unlock()
	for i := from; ; {
		for ; i < len(in.lines); i++ {
			if match(in.lines[i]) {
				return in.lines[i], nil
			}
		}
		if in.exited {
			return nil, fmt.Errorf("balise exited (code %d) before the expected log line", in.code)
		}
		if !time.Now().Before(deadline) {
			return nil, fmt.Errorf("no expected log line within %v", timeout)
		}
		in.cond.Wait()
	}
}

// Signal sends sig to the process.
func (in *instance) Signal(sig os.Signal) {
	in.t.Helper()
	if err := in.cmd.Process.Signal(sig); err != nil {
		in.t.Fatalf("signal %v: %v", sig, err)
	}
}

// Reload sends SIGHUP and waits (10 s) for the outcome: it returns the
// "configuration reloaded" or "reload failed; ..." log line.
func (in *instance) Reload() logLine {
	in.t.Helper()
	from := len(in.Lines())
	in.Signal(syscall.SIGHUP)
	return in.WaitLog(from, 10*time.Second, func(l logLine) bool {
		return l.Msg() == "configuration reloaded" || strings.HasPrefix(l.Msg(), "reload failed")
	})
}

// WriteConfig replaces the configuration file (takes effect at Reload).
func (in *instance) WriteConfig(text string) {
	in.t.Helper()
	if in.ConfigPath == "" {
		in.t.Fatal("WriteConfig: started without --config")
	}
	if err := os.WriteFile(in.ConfigPath, []byte(text), 0o600); err != nil {
		in.t.Fatal(err)
	}
}

// Stop sends SIGTERM and waits (15 s) for the process to exit; it returns
// the exit code.
func (in *instance) Stop() int {
	in.t.Helper()
	in.Signal(syscall.SIGTERM)
	select {
	case <-in.done:
	case <-time.After(15 * time.Second):
		in.t.Fatalf("balise did not stop within 15 s after SIGTERM; log:\n%s", in.Stderr())
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.code
}

// Exited reports whether the process has exited, and its exit code.
func (in *instance) Exited() (bool, int) {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.exited, in.code
}

// Get fetches http://<metrics address><path> and returns the status code
// and body.
func (in *instance) Get(path string) (int, string) {
	in.t.Helper()
	return httpGet(in.t, "http://"+in.Addr("metrics")+path)
}

// Metrics returns the text exposition of /metrics.
func (in *instance) Metrics() string {
	in.t.Helper()
	code, body := in.Get("/metrics")
	if code != http.StatusOK {
		in.t.Fatalf("GET /metrics = %d, want 200; body:\n%s", code, body)
	}
	return body
}

// MetricValue returns the value of the first sample of metric name whose
// labels include every "key=value" of labels, from a fresh /metrics.
func (in *instance) MetricValue(name string, labels ...string) (float64, bool) {
	in.t.Helper()
	return metricValue(in.Metrics(), name, labels...)
}

// httpGet fetches url with a 10 s timeout.
func httpGet(t testing.TB, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading body: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

// metricValue finds a sample in a Prometheus text exposition: the first
// line for metric name whose labels include every "key=value" of labels.
func metricValue(text, name string, labels ...string) (float64, bool) {
	for _, line := range strings.Split(text, "\n") {
		if line == "" || line[0] == '#' || !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		var lbls string
		switch {
		case strings.HasPrefix(rest, "{"):
			end := strings.LastIndex(rest, "}")
			if end < 0 {
				continue
			}
			lbls, rest = rest[1:end], rest[end+1:]
		case strings.HasPrefix(rest, " "):
		default:
			continue // a longer metric name
		}
		ok := true
		for _, want := range labels {
			k, v, _ := strings.Cut(want, "=")
			if !strings.Contains(","+lbls+",", ","+k+"="+strconv.Quote(v)+",") {
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			continue
		}
		return v, true
	}
	return 0, false
}
