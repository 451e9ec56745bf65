package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/balise-net/balise/config"
	"github.com/balise-net/balise/internal/policy"
)

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor waits up to 10 s for a JSON log line with msg and returns it.
func waitFor(t *testing.T, buf *syncBuffer, msg string, from int) map[string]any {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		lines := strings.Split(buf.String(), "\n")
		for i := from; i < len(lines); i++ {
			var l map[string]any
			if json.Unmarshal([]byte(lines[i]), &l) == nil && l["msg"] == msg {
				return l
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no log line msg=%q within 10 s; log:\n%s", msg, buf.String())
	return nil
}

func lineCount(buf *syncBuffer) int { return strings.Count(buf.String(), "\n") }

const serveListeners = `
[metrics]
listen = "127.0.0.1:0"

[dns]
listen = []

[proxy]
listen = []
`

// TestServeReloadInProcess drives server.run with signals on a channel:
// a broken configuration keeps the running policy, a good one replaces it
// and keeps the grant snapshot.
func TestServeReloadInProcess(t *testing.T) {
	path := writeConfig(t, testPolicy+serveListeners)
	buf := &syncBuffer{}
	s := &server{path: path, log: slog.New(slog.NewJSONHandler(buf, nil)), getenv: func(string) string { return "" }}
	sigs := make(chan os.Signal, 1)
	result := make(chan int, 1)
	go func() { result <- s.run(t.Context(), sigs) }()

	listening := waitFor(t, buf, "listening", 0)
	waitFor(t, buf, "started", 0)
	addr, _ := listening["addr"].(string)
	rt := s.rt

	client := netip.MustParseAddr("10.20.1.5")
	at := mustTime(t, "2026-05-12T14:00:00-04:00")
	ask := func() policy.Decision {
		return rt.policy.Load().Decide(policy.Query{Host: "facebook.com", Client: client, Time: at})
	}
	if d := ask(); d.Verdict != policy.Block {
		t.Fatalf("before reload: %v, want block", d)
	}
	rt.SetGrants([]policy.Grant{{ID: "r1", Subject: netip.MustParsePrefix("10.20.1.5/32"), Services: []string{"facebook"}, NotAfter: at.Add(time.Hour)}})
	if d := ask(); d.Verdict != policy.Allow || d.Reason != policy.ReasonGrant || d.Grant != "r1" {
		t.Fatalf("with a grant: %+v, want allow by grant r1", d)
	}
	before := rt.policy.Load()

	// Broken: the policy in force does not change.
	if err := os.WriteFile(path, []byte(testPolicy+serveListeners+"\n[[rule]]\nname = \"x\"\ngroups = [\"nobody\"]\naction = \"allow\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	n := lineCount(buf)
	sigs <- syscall.SIGHUP
	l := waitFor(t, buf, "reload failed; keeping the running configuration", n)
	if e, _ := l["error"].(string); !strings.Contains(e, "nobody") {
		t.Errorf("reload failure logged error %q, want it to name the unknown group", e)
	}
	if rt.policy.Load() != before {
		t.Error("a failed reload replaced the policy")
	}
	metrics := get(t, "http://"+addr+"/metrics")
	for _, want := range []string{`balise_config_reloads_total{result="failure"} 1`, "balise_config_last_reload_successful 0"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q after a failed reload", want)
		}
	}

	// Good: a new policy where everyone may use Facebook; the grant stays.
	good := strings.Replace(testPolicy, "default_action = \"block\"", "default_action = \"allow\"", 1)
	if err := os.WriteFile(path, []byte(good+serveListeners), 0o600); err != nil {
		t.Fatal(err)
	}
	n = lineCount(buf)
	sigs <- syscall.SIGHUP
	waitFor(t, buf, "configuration reloaded", n)
	if rt.policy.Load() == before {
		t.Error("a successful reload kept the old policy")
	}
	if d := ask(); d.Verdict != policy.Allow || d.Reason != policy.ReasonGrant {
		t.Errorf("after reload: %+v, want the grant kept", d)
	}
	rt.SetGrants(nil)
	if d := ask(); d.Verdict != policy.Allow || d.Reason != policy.ReasonDefault {
		t.Errorf("after reload without grants: %+v, want allow by default_action", d)
	}
	if rt.config().DefaultAction != "allow" {
		t.Errorf("config() = %q default action, want the reloaded allow", rt.config().DefaultAction)
	}

	sigs <- syscall.SIGTERM
	select {
	case code := <-result:
		if code != 0 {
			t.Errorf("run = %d after SIGTERM, want 0", code)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not return after SIGTERM")
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func TestHealthAndReadiness(t *testing.T) {
	cfg, p := loadPolicy(t, testPolicy)
	reg := newRegistry()
	newServeMetrics(reg)
	log := slog.New(slog.DiscardHandler)
	rt := newRuntime(cfg, p, reg, log, nil)
	srv := httptest.NewServer(metricsHandler(rt, reg, log))
	defer srv.Close()

	check := func(path string, wantCode int, wantBody ...string) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != wantCode {
			t.Errorf("GET %s = %d, want %d; body %q", path, resp.StatusCode, wantCode, b)
		}
		for _, w := range wantBody {
			if !strings.Contains(string(b), w) {
				t.Errorf("GET %s body %q lacks %q", path, b, w)
			}
		}
	}
	check("/healthz", 200, "ok")
	check("/readyz", 503, "startup: in progress")
	rt.started.Store(true)
	check("/readyz", 200, "ready")
	check("/metrics", 200, "balise_build_info{goversion=", "go_goroutines", "process_cpu_seconds_total", "balise_config_reloads_total")

	var mu sync.Mutex
	upstreamErr := errors.New("no upstream answers")
	rt.addReady("dns-upstreams", func() error { mu.Lock(); defer mu.Unlock(); return upstreamErr })
	rt.addReady("proxy", func() error { return nil })
	check("/readyz", 503, "dns-upstreams: no upstream answers")
	check("/healthz", 200, "ok")
	mu.Lock()
	upstreamErr = nil
	mu.Unlock()
	check("/readyz", 200, "ready")
}

func TestRuntimeGrants(t *testing.T) {
	cfg, p := loadPolicy(t, testPolicy)
	rt := newRuntime(cfg, p, newRegistry(), slog.New(slog.DiscardHandler), nil)
	at := mustTime(t, "2026-05-12T14:00:00-04:00")
	q := policy.Query{Host: "www.facebook.com", Client: netip.MustParseAddr("10.20.1.5"), Time: at}
	if d := rt.policy.Load().Decide(q); d.Reason == policy.ReasonGrant {
		t.Fatalf("no grants yet: %+v", d)
	}
	g := []policy.Grant{{ID: "42", Subject: netip.MustParsePrefix("10.20.1.0/24"), Services: []string{"*"}, NotBefore: at.Add(-time.Hour), NotAfter: at.Add(time.Hour)}}
	rt.SetGrants(g)
	d := rt.policy.Load().Decide(q)
	if d.Verdict != policy.Allow || d.Grant != "42" || !d.Until.Equal(at.Add(time.Hour)) {
		t.Errorf("with grant 42: %+v, want allow by grant until %v", d, at.Add(time.Hour))
	}
	_, p2 := loadPolicy(t, testPolicy)
	rt.setBase(p2)
	if d := rt.policy.Load().Decide(q); d.Grant != "42" {
		t.Errorf("setBase dropped the grants: %+v", d)
	}
	var hooked string
	rt.onReload(func(c *config.Config) { hooked = c.Timezone })
	cfg3, p3 := loadPolicy(t, testPolicy)
	rt.install(cfg3, p3)
	if hooked != "America/Toronto" || rt.config() != cfg3 {
		t.Errorf("install did not run the reload hook or set the config (hook saw %q)", hooked)
	}
	if d := rt.policy.Load().Decide(q); d.Grant != "42" {
		t.Errorf("install dropped the grants: %+v", d)
	}
}
