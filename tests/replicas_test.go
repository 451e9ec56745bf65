package tests

import (
	"bytes"
	"context"
	"encoding/csv"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/balise-net/balise/internal/exceptions/pgtest"
)

// Several nodes sharing one register in PostgreSQL: two `balise serve`
// processes on one real PostgreSQL server.

// repNodes is a pair of nodes (A and B) sharing one register.
type repNodes struct {
	pg         *pgtest.Server
	a, b       *instance
	site, tls  string // http://www.social.test:<port>/ and the TLS origin's port
	dnsUp      string
	store, dir string
}

// repConfig is one node's configuration: proxy and DNS filter resolving
// through dnsAddr, the register in the PostgreSQL database store, the
// CSRF key in the shared directory stateDir.
func repConfig(dnsAddr, tlsPort, store, stateDir string) string {
	return fmt.Sprintf(`
[metrics]
listen = "127.0.0.1:0"

[dns]
listen = "127.0.0.1:0"
upstreams = [%q]
rate_limit = 0

[proxy]
listen = "127.0.0.1:0"
resolver = %q
connect_ports = [443, %s]
allow_destinations = ["127.0.0.0/8", "::1/128"]

[exceptions]
store = %q
state_dir = %q
grant_poll = "1s"

[[list]]
name = "socialtest"
display_name = "Social Test"
category = "networking"
domains = ["social.test"]
`, dnsAddr, dnsAddr, tlsPort, store, stateDir)
}

// repStart starts PostgreSQL, creates a database, and starts node A then
// node B on it (B reads the CSRF key A wrote in the shared directory).
func repStart(t *testing.T) *repNodes {
	t.Helper()
	requireTool(t, "curl")
	requireTool(t, "dig")
	pg := pgtest.Start(t)
	r := &repNodes{pg: pg, store: pg.CreateDB(t), dir: t.TempDir(), dnsUp: exSocialDNS(t)}
	httpPort, tlsPort := liveOrigins(t)
	r.site, r.tls = "http://www.social.test:"+httpPort+"/", tlsPort
	conf := repConfig(r.dnsUp, tlsPort, r.store, filepath.Join(r.dir, "state"))
	r.a = startBaliseWith(t, startOptions{Config: conf, Timeout: 30 * time.Second})
	exRequireFrontEnds(t, r.a)
	r.b = startBaliseWith(t, startOptions{Config: conf, Timeout: 30 * time.Second})
	exRequireFrontEnds(t, r.b)
	return r
}

var repIDRE = regexp.MustCompile(`EX-\d+`)

// repSubmit asks for socialtest from src through node in's block page and
// returns the status code and answer of the form's POST.
func repSubmit(t *testing.T, in *instance, site, src, why string) (int, string) {
	t.Helper()
	proxyAddr := in.Addr("proxy")
	code, page := exCurl(t, proxyAddr, src, site)
	m := exTokenRE.FindStringSubmatch(page)
	if code != http.StatusForbidden || m == nil {
		t.Fatalf("GET %s from %s = %d, want the block page with the form\n%s", site, src, code, page)
	}
	return exCurl(t, proxyAddr, src, site+".balise/request",
		"--data-urlencode", "service=socialtest", "--data-urlencode", "host=www.social.test",
		"--data-urlencode", "token="+html.UnescapeString(m[1]), "--data-urlencode", "lang=fr",
		"--data-urlencode", "name=Test", "--data-urlencode", "justification="+why,
		"--data-urlencode", "duration=4h")
}

// repAllowed reports nil when node in lets src reach the site through its
// proxy and resolves www.social.test for src.
func repAllowed(t *testing.T, in *instance, site, src string) error {
	t.Helper()
	if code, body := exCurl(t, in.Addr("proxy"), src, site); code != http.StatusOK || !strings.Contains(body, "hello from social.test") {
		return fmt.Errorf("proxy from %s = %d %.60q, want the site", src, code, body)
	}
	if a := exDig(t, in.Addr("dns-udp"), src, "www.social.test"); len(a) != 1 || a[0] != "127.0.0.1" {
		return fmt.Errorf("DNS from %s = %v, want 127.0.0.1", src, a)
	}
	return nil
}

// repBlocked reports nil when node in blocks src in its proxy and DNS.
func repBlocked(t *testing.T, in *instance, site, src string) error {
	t.Helper()
	if code, body := exCurl(t, in.Addr("proxy"), src, site); code != http.StatusForbidden || strings.Contains(body, "hello from social.test") {
		return fmt.Errorf("proxy from %s = %d %.60q, want the block page", src, code, body)
	}
	if a := exDig(t, in.Addr("dns-udp"), src, "www.social.test"); len(a) != 0 {
		return fmt.Errorf("DNS from %s = %v, want blocked", src, a)
	}
	return nil
}

// repWait polls f every 20 ms until it returns nil or limit passes, and
// returns how long it took from since.
func repWait(t *testing.T, what string, since time.Time, limit time.Duration, f func() error) time.Duration {
	t.Helper()
	for {
		err := f()
		if err == nil {
			return time.Since(since)
		}
		if time.Since(since) > limit {
			t.Fatalf("%s: still %v after %v", what, err, limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// repApprove approves id with the node's configuration cfg.
func repApprove(t *testing.T, cfg, id string) {
	t.Helper()
	if out, errOut, code := exCLI(t, cfg, "approve", id, "--for", "4h", "--by", "RSI Dupont"); code != 0 {
		t.Fatalf("approve %s = %d\n%s%s", id, code, out, errOut)
	}
}

// TestReplicasGrantPropagates approves on node A (its CLI) and requires
// node B's proxy and DNS to allow the workstation within 2 s; then it
// revokes on node B and requires the tunnel open through node A to be cut
// within 2 s.
func TestReplicasGrantPropagates(t *testing.T) {
	r := repStart(t)
	code, answer := repSubmit(t, r.a, r.site, "127.0.0.1", "Campagne de recrutement en cours")
	if code != http.StatusOK || !strings.Contains(answer, "EX-0001") {
		t.Fatalf("form post through node A = %d\n%s\nwant 200 with EX-0001", code, answer)
	}
	if list := exList(t, r.b.ConfigPath); len(list) != 1 || list[0].ID != "EX-0001" || list[0].Client != "127.0.0.1" {
		t.Fatalf("list --json with node B's configuration = %+v, want EX-0001 from 127.0.0.1", list)
	}
	if err := repBlocked(t, r.b, r.site, "127.0.0.1"); err != nil {
		t.Fatalf("node B before the approval: %v", err)
	}

	start := time.Now()
	repApprove(t, r.a.ConfigPath, "EX-0001")
	approved := time.Now()
	lat := repWait(t, "node B after the approval on node A", approved, 2*time.Second, func() error {
		return repAllowed(t, r.b, r.site, "127.0.0.1")
	})
	t.Logf("grant on node B's proxy and DNS %v after the approve command returned (command took %v)",
		lat.Round(time.Millisecond), approved.Sub(start).Round(time.Millisecond))
	if err := repBlocked(t, r.b, r.site, "127.0.0.2"); err != nil {
		t.Fatalf("another workstation on node B after the approval: %v", err)
	}
	repWait(t, "node A after the approval", approved, 2*time.Second, func() error {
		return repAllowed(t, r.a, r.site, "127.0.0.1")
	})

	tunnel := idleUntilClosed(liveTunnel(t, r.a.Addr("proxy"), "www.social.test:"+r.tls, "www.social.test"))
	select {
	case <-tunnel:
		t.Fatal("the tunnel through node A closed before the revocation")
	case <-time.After(300 * time.Millisecond):
	}
	revoking := time.Now()
	if out, errOut, code := exCLI(t, r.b.ConfigPath, "revoke", "EX-0001", "--by", "RSI Dupont", "--reason", "fin de campagne"); code != 0 {
		t.Fatalf("revoke on node B = %d\n%s%s", code, out, errOut)
	}
	revoked := time.Now()
	select {
	case at := <-tunnel:
		t.Logf("tunnel through node A cut %v after the revoke on node B returned (%v after it started)",
			at.Sub(revoked).Round(time.Millisecond), at.Sub(revoking).Round(time.Millisecond))
		if at.Sub(revoked) > 2*time.Second {
			t.Errorf("tunnel through node A cut %v after the revocation on node B, want within 2 s", at.Sub(revoked))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("tunnel through node A still open 10 s after the revocation on node B")
	}
	repWait(t, "node A after the revocation on node B", revoked, 2*time.Second, func() error {
		return repBlocked(t, r.a, r.site, "127.0.0.1")
	})
	if _, errOut, code := exCLI(t, r.a.ConfigPath, "verify"); code != 0 {
		t.Fatalf("verify = %d\n%s", code, errOut)
	}
}

// TestReplicasConcurrentSubmissionsKill9 sends 200 submissions spread
// over both nodes, 20 at a time, and kills node B with SIGKILL midway:
// every request answered "received" must be stored with its client and
// justification, the chain must verify, and the register must hold one
// request_received event per request, with no number given twice.
func TestReplicasConcurrentSubmissionsKill9(t *testing.T) {
	r := repStart(t)
	type receipt struct{ id, client, why string }
	var (
		mu       sync.Mutex
		received []receipt
		onB      atomic.Int32
		killOnce sync.Once
		killedAt atomic.Int32
	)
	sem := make(chan struct{}, 20)
	var wg sync.WaitGroup
	for i := 0; i < 200; i++ {
		node := r.a
		if i%2 == 1 {
			node = r.b
		}
		proxyURL, _ := url.Parse("http://" + node.Addr("proxy"))
		src := fmt.Sprintf("127.30.%d.%d", i/100+1, i%100+1)
		why := fmt.Sprintf("Demande concurrente numéro %d", i)
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			client := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{
				Proxy:       http.ProxyURL(proxyURL),
				DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}).DialContext,
			}}
			defer client.CloseIdleConnections()
			resp, err := client.Get(r.site)
			if err != nil {
				return
			}
			page, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			m := exTokenRE.FindSubmatch(page)
			if m == nil {
				return
			}
			form := url.Values{"service": {"socialtest"}, "host": {"www.social.test"},
				"token": {html.UnescapeString(string(m[1]))}, "lang": {"fr"}, "name": {"Test"},
				"justification": {why}, "duration": {"1h"}}
			resp, err = client.PostForm(r.site+".balise/request", form)
			if err != nil {
				return
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			id := repIDRE.Find(body)
			if resp.StatusCode != http.StatusOK || id == nil {
				return
			}
			mu.Lock()
			received = append(received, receipt{string(id), src, why})
			mu.Unlock()
			if node == r.b && onB.Add(1) == 30 {
				killOnce.Do(func() {
					killedAt.Store(int32(i))
					r.b.cmd.Process.Kill() // SIGKILL, with submissions in flight
				})
			}
		})
	}
	wg.Wait()
	if ok, _ := r.b.Exited(); !ok || killedAt.Load() == 0 {
		t.Fatalf("node B was not killed (%d received on B)", onB.Load())
	}
	stored := map[string]exRequestJSON{}
	list := exList(t, r.a.ConfigPath)
	for _, q := range list {
		if _, dup := stored[q.ID]; dup {
			t.Errorf("request number %s given twice", q.ID)
		}
		stored[q.ID] = q
	}
	ids := map[string]bool{}
	for _, rc := range received {
		if ids[rc.id] {
			t.Errorf("number %s answered to two submissions", rc.id)
		}
		ids[rc.id] = true
		q, ok := stored[rc.id]
		if !ok || q.Client != rc.client || q.Justification != rc.why {
			t.Errorf("request %s (%s, %q) answered \"received\" but the register has %+v", rc.id, rc.client, rc.why, q)
		}
	}
	if _, errOut, code := exCLI(t, r.a.ConfigPath, "verify"); code != 0 {
		t.Fatalf("verify after killing node B = %d\n%s", code, errOut)
	}
	out, errOut, code := exCLI(t, r.a.ConfigPath, "export", "--format", "csv", "--by", "RSI Dupont")
	rows, err := csv.NewReader(strings.NewReader(out)).ReadAll()
	if code != 0 || err != nil || len(rows) < 1 {
		t.Fatalf("export csv = %d, %v\n%s%s", code, err, out, errOut)
	}
	events := 0
	for _, row := range rows[1:] {
		if len(row) > 2 && row[2] == "request_received" {
			events++
		}
	}
	if events != len(stored) {
		t.Errorf("audit log holds %d request_received events for %d stored requests (a fork or a lost event)", events, len(stored))
	}
	if len(received) < 100 {
		t.Errorf("only %d of 200 submissions were answered \"received\" (node A should answer all of its 100)", len(received))
	}
	t.Logf("%d submissions answered \"received\" (%d on node B before its SIGKILL); %d requests stored; chain verifies",
		len(received), onB.Load(), len(stored))
}

// dnsperfResult holds the counters of dnsperf's summary.
type dnsperfResult struct{ sent, completed, lost int }

var dnsperfRE = regexp.MustCompile(`Queries (sent|completed|lost):\s+(\d+)`)

func parseDNSPerf(out string) (dnsperfResult, bool) {
	var r dnsperfResult
	seen := 0
	for _, m := range dnsperfRE.FindAllStringSubmatch(out, -1) {
		n, _ := strconv.Atoi(m[2])
		switch m[1] {
		case "sent":
			r.sent = n
		case "completed":
			r.completed = n
		case "lost":
			r.lost = n
		}
		seen++
	}
	return r, seen == 3
}

// TestReplicasPostgresDown stops PostgreSQL for 30 s while dnsperf sends
// queries to node A: no query may be lost, the grant in force stays
// enforced, the form answers 503 "temporairement indisponible",
// balise_exceptions_store_up goes to 0; once PostgreSQL is back, the
// gauge returns to 1 and a new approval reaches node B again.
func TestReplicasPostgresDown(t *testing.T) {
	requireTool(t, "dnsperf")
	r := repStart(t)
	if code, answer := repSubmit(t, r.a, r.site, "127.0.0.1", "Campagne de recrutement en cours"); code != 200 || !strings.Contains(answer, "EX-0001") {
		t.Fatalf("form post = %d\n%s", code, answer)
	}
	repApprove(t, r.a.ConfigPath, "EX-0001")
	repWait(t, "node B after the approval", time.Now(), 2*time.Second, func() error {
		return repAllowed(t, r.b, r.site, "127.0.0.1")
	})
	for _, in := range []*instance{r.a, r.b} {
		if v, ok := in.MetricValue("balise_exceptions_store_up"); !ok || v != 1 {
			t.Fatalf("balise_exceptions_store_up = %v (exposed %v), want 1 with PostgreSQL up", v, ok)
		}
	}

	// Allowed names (the grant's, and names the upstream answers NXDOMAIN),
	// and blocked ones (another workstation's view is checked with dig).
	qf := filepath.Join(t.TempDir(), "queries.txt")
	os.WriteFile(qf, []byte("www.social.test A\nsocial.test A\nintranet.hopital.test A\nwww.example.test AAAA\napi.social.test A\n"), 0o644)
	host, port, _ := net.SplitHostPort(r.a.Addr("dns-udp"))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	perf := exec.CommandContext(ctx, "dnsperf", "-s", host, "-p", port, "-a", "127.0.0.1", "-d", qf,
		"-l", "40", "-Q", "150", "-t", "2")
	var perfOut bytes.Buffer
	perf.Stdout, perf.Stderr = &perfOut, &perfOut
	if err := perf.Start(); err != nil {
		t.Fatal(err)
	}
	perfDone := make(chan error, 1)
	go func() { perfDone <- perf.Wait() }()

	time.Sleep(3 * time.Second)
	r.pg.Stop()
	stopped := time.Now()
	repWait(t, "balise_exceptions_store_up on node A with PostgreSQL stopped", stopped, 5*time.Second, func() error {
		if v, _ := r.a.MetricValue("balise_exceptions_store_up"); v != 0 {
			return fmt.Errorf("balise_exceptions_store_up = %v", v)
		}
		return nil
	})
	t.Logf("balise_exceptions_store_up = 0 on node A %v after PostgreSQL stopped", time.Since(stopped).Round(time.Millisecond))
	for _, in := range []*instance{r.a, r.b} {
		if err := repAllowed(t, in, r.site, "127.0.0.1"); err != nil {
			t.Errorf("the grant with PostgreSQL down: %v", err)
		}
		if err := repBlocked(t, in, r.site, "127.0.0.2"); err != nil {
			t.Errorf("another workstation with PostgreSQL down: %v", err)
		}
	}
	code, answer := repSubmit(t, r.a, r.site, "127.0.0.3", "Demande pendant la panne")
	if code != http.StatusServiceUnavailable || !strings.Contains(answer, "temporairement indisponible") || repIDRE.MatchString(answer) {
		t.Errorf("form post with PostgreSQL down = %d\n%s\nwant 503 « temporairement indisponible » and no number", code, answer)
	}
	if readyCode, body := r.a.Get("/readyz"); readyCode != http.StatusOK {
		t.Errorf("/readyz with PostgreSQL down = %d %s, want 200 (DNS still answers)", readyCode, body)
	}

	time.Sleep(time.Until(stopped.Add(30 * time.Second)))
	if err := r.pg.Start(); err != nil {
		t.Fatalf("restarting PostgreSQL: %v", err)
	}
	restarted := time.Now()
	for name, in := range map[string]*instance{"A": r.a, "B": r.b} {
		lat := repWait(t, "balise_exceptions_store_up on node "+name+" after the restart", restarted, 10*time.Second, func() error {
			if v, _ := in.MetricValue("balise_exceptions_store_up"); v != 1 {
				return fmt.Errorf("balise_exceptions_store_up = %v", v)
			}
			return nil
		})
		t.Logf("node %s: balise_exceptions_store_up = 1 %v after PostgreSQL restarted", name, lat.Round(time.Millisecond))
	}
	code, answer = repSubmit(t, r.a, r.site, "127.0.0.3", "Demande après la panne")
	id := repIDRE.FindString(answer)
	if code != http.StatusOK || id == "" {
		t.Fatalf("form post after the restart = %d\n%s", code, answer)
	}
	repApprove(t, r.a.ConfigPath, id)
	approved := time.Now()
	lat := repWait(t, "node B after an approval following the restart", approved, 5*time.Second, func() error {
		return repAllowed(t, r.b, r.site, "127.0.0.3")
	})
	t.Logf("after the restart, a grant reached node B %v after the approve command returned", lat.Round(time.Millisecond))

	select {
	case <-perfDone:
	case <-time.After(60 * time.Second):
		t.Fatal("dnsperf did not finish")
	}
	res, ok := parseDNSPerf(perfOut.String())
	if !ok || res.sent == 0 {
		t.Fatalf("dnsperf output not understood:\n%s", perfOut.String())
	}
	t.Logf("dnsperf against node A over the outage: %d sent, %d completed, %d lost", res.sent, res.completed, res.lost)
	if res.lost != 0 || res.completed != res.sent {
		t.Errorf("dnsperf: %d sent, %d completed, %d lost; want none lost\n%s", res.sent, res.completed, res.lost, perfOut.String())
	}
	if _, errOut, code := exCLI(t, r.a.ConfigPath, "verify"); code != 0 {
		t.Fatalf("verify = %d\n%s", code, errOut)
	}
}
