package tests

import (
	"context"
	"encoding/csv"
	"fmt"
	"html"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// exSocialDNS serves social.test (and its subdomains) as 127.0.0.1 and
// answers NXDOMAIN for anything else: the upstream of the DNS filter and
// the proxy's resolver, so that nothing leaves the machine.
func exSocialDNS(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		name := strings.ToLower(q.Name)
		switch {
		case name != "social.test." && !strings.HasSuffix(name, ".social.test."):
			m.Rcode = dns.RcodeNameError
		case q.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300},
				A: net.IPv4(127, 0, 0, 1)})
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

// exBackend is the "social network": one page on 127.0.0.1.
func exBackend(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello from social.test\n")
	}))
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	return port
}

// exProxyConfig is a configuration with the DNS filter and the proxy
// resolving through dnsAddr, plus the register.
func exProxyConfig(dnsAddr, extra string) string {
	return fmt.Sprintf(`
[metrics]
listen = "127.0.0.1:0"

[dns]
listen = "127.0.0.1:0"
upstreams = [%q]

[proxy]
listen = "127.0.0.1:0"
resolver = %q
# The test sites listen on loopback, which the proxy otherwise refuses.
allow_destinations = ["127.0.0.0/8", "::1/128"]
`, dnsAddr, dnsAddr) + exceptionsConfig + extra
}

// exRequireFrontEnds fails (or, outside BALISE_E2E=1, skips) when this
// build has no proxy or DNS front-end: neither logs msg="listening"
// within 2 s of msg="started".
func exRequireFrontEnds(t *testing.T, in *instance) {
	t.Helper()
	for _, svc := range []string{"proxy", "dns-udp"} {
		if _, err := in.waitLog(0, 2*time.Second, func(l logLine) bool {
			return l.Msg() == "listening" && l.Str("service") == svc
		}); err != nil {
			if e2eStrict {
				t.Fatalf("BALISE_E2E=1 but this build logs no %s listener", svc)
			}
			t.Skipf("this build has no %s front-end", svc)
		}
	}
}

// exCurl runs curl through the proxy from source address src and returns
// the status code and body.
func exCurl(t *testing.T, proxyAddr, src string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	all := append([]string{"-sS", "--max-time", "15", "-x", "http://" + proxyAddr, "--interface", src,
		"-w", "\n%{http_code}"}, args...)
	out, err := exec.CommandContext(ctx, "curl", all...).Output()
	if err != nil {
		t.Fatalf("curl %s: %v\n%s", strings.Join(all, " "), err, out)
	}
	s := string(out)
	i := strings.LastIndexByte(s, '\n')
	var code int
	fmt.Sscan(s[i+1:], &code)
	return code, s[:i]
}

var exTokenRE = regexp.MustCompile(`name="token" value="([^"]+)"`)

// exDig asks the DNS filter for name from source address src and returns
// the A records.
func exDig(t *testing.T, dnsAddr, src, name string) []string {
	t.Helper()
	host, port, _ := net.SplitHostPort(dnsAddr)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "dig", "@"+host, "-p", port, "-b", src, "+short", "+tries=2", "+time=3", name, "A").Output()
	if err != nil {
		t.Fatalf("dig %s from %s: %v\n%s", name, src, err, out)
	}
	var addrs []string
	for _, l := range strings.Fields(string(out)) {
		if net.ParseIP(l) != nil && l != "0.0.0.0" {
			addrs = append(addrs, l)
		}
	}
	return addrs
}

// exEventually retries f every 100 ms for up to 2 s.
func exEventually(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %v after 2 s", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestExceptionsThroughProxy is the whole flow: the block page's form
// through the proxy, the officer's approval, the grant in both the proxy
// and the DNS filter for that workstation only, revocation, export and
// verification.
func TestExceptionsThroughProxy(t *testing.T) {
	requireTool(t, "curl")
	requireTool(t, "dig")
	dnsAddr := exSocialDNS(t)
	port := exBackend(t)
	in := startBalise(t, exProxyConfig(dnsAddr, ""))
	exRequireFrontEnds(t, in)
	proxyAddr, filter, cfg := in.Addr("proxy"), in.Addr("dns-udp"), in.ConfigPath
	site := "http://www.social.test:" + port + "/"

	code, page := exCurl(t, proxyAddr, "127.0.0.1", site)
	m := exTokenRE.FindStringSubmatch(page)
	if code != http.StatusForbidden || m == nil || !strings.Contains(page, `action="/.balise/request"`) {
		t.Fatalf("GET %s through the proxy = %d\n%s\nwant the block page with the request form", site, code, page)
	}
	code, answer := exCurl(t, proxyAddr, "127.0.0.1", site[:len(site)-1]+"/.balise/request",
		"--data-urlencode", "service=socialtest", "--data-urlencode", "host=www.social.test",
		"--data-urlencode", "token="+html.UnescapeString(m[1]), "--data-urlencode", "lang=fr",
		"--data-urlencode", "name=<script>alert('nom')</script>", "--data-urlencode", "contact=poste 4321",
		"--data-urlencode", "justification=Publication des offres d'emploi de la campagne d'automne",
		"--data-urlencode", "duration=4h")
	if code != http.StatusOK || !strings.Contains(answer, "EX-0001") || strings.Contains(answer, "<script>") {
		t.Fatalf("form post = %d\n%s\nwant 200 with EX-0001 and nothing echoed unescaped", code, answer)
	}
	list := exList(t, cfg)
	if len(list) != 1 || list[0].ID != "EX-0001" || list[0].Client != "127.0.0.1" || list[0].Status != "pending" {
		t.Fatalf("list --json = %+v", list)
	}

	blocked := func(src string) error {
		code, body := exCurl(t, proxyAddr, src, site)
		if code != http.StatusForbidden || strings.Contains(body, "hello from social.test") {
			return fmt.Errorf("proxy from %s = %d %.60q, want the block page", src, code, body)
		}
		if a := exDig(t, filter, src, "www.social.test"); len(a) != 0 {
			return fmt.Errorf("DNS from %s = %v, want blocked", src, a)
		}
		return nil
	}
	allowed := func(src string) error {
		code, body := exCurl(t, proxyAddr, src, site)
		if code != http.StatusOK || !strings.Contains(body, "hello from social.test") {
			return fmt.Errorf("proxy from %s = %d %.60q, want the site", src, code, body)
		}
		if a := exDig(t, filter, src, "www.social.test"); len(a) != 1 || a[0] != "127.0.0.1" {
			return fmt.Errorf("DNS from %s = %v, want 127.0.0.1", src, a)
		}
		return nil
	}
	if err := blocked("127.0.0.1"); err != nil {
		t.Fatal(err)
	}

	if out, errOut, code := exCLI(t, cfg, "approve", "EX-0001", "--for", "4h", "--by", "RSI Dupont"); code != 0 {
		t.Fatalf("approve = %d\n%s%s", code, out, errOut)
	}
	exEventually(t, "after approve, 127.0.0.1", func() error { return allowed("127.0.0.1") })
	if err := blocked("127.0.0.2"); err != nil {
		t.Fatalf("another workstation after approve: %v", err)
	}

	if out, errOut, code := exCLI(t, cfg, "revoke", "EX-0001", "--by", "RSI Dupont", "--reason", "campagne terminée"); code != 0 {
		t.Fatalf("revoke = %d\n%s%s", code, out, errOut)
	}
	exEventually(t, "after revoke, 127.0.0.1", func() error { return blocked("127.0.0.1") })

	out, _, code := exCLI(t, cfg, "export", "--format", "csv", "--by", "RSI Dupont")
	rows, err := csv.NewReader(strings.NewReader(out)).ReadAll()
	if code != 0 || err != nil || len(rows) != 4 || rows[1][2] != "request_received" || rows[2][2] != "approved" || rows[3][2] != "revoked" {
		t.Fatalf("export csv = %d, %v\n%s\nwant request_received, approved, revoked", code, err, out)
	}
	if _, errOut, code := exCLI(t, cfg, "verify"); code != 0 {
		t.Fatalf("verify = %d\n%s", code, errOut)
	}
	logPath := filepath.Join(in.Dir, "data", "exceptions.jsonl")
	raw, _ := os.ReadFile(logPath)
	os.WriteFile(logPath, []byte(strings.Replace(string(raw), `"actor":"RSI Dupont"`, `"actor":"RSI Durand"`, 1)), 0o600)
	if _, errOut, code := exCLI(t, cfg, "verify"); code != 1 || !strings.Contains(errOut, "line 2:") {
		t.Fatalf("verify after editing line 2 = %d\n%s\nwant 1 naming line 2", code, errOut)
	}
}

// TestExceptionsCrashSafety submits requests through the proxy while
// serve is killed with SIGKILL at random moments and restarted: every
// request that got a "received" answer must be in the register and the
// log, and the chain must verify.
func TestExceptionsCrashSafety(t *testing.T) {
	dnsAddr := exSocialDNS(t)
	port := exBackend(t)
	dir := t.TempDir()
	conf := exProxyConfig(dnsAddr, "")
	rounds := 6
	type receipt struct{ id, client, justification string }
	var (
		mu       sync.Mutex
		received []receipt
		seq      int
	)
	idRE := regexp.MustCompile(`<span class="num">(EX-\d+)</span>`)
	for round := 0; round < rounds; round++ {
		in := startBaliseWith(t, startOptions{Config: conf, Dir: dir})
		exRequireFrontEnds(t, in)
		proxyURL, _ := url.Parse("http://" + in.Addr("proxy"))
		ctx, stop := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for w := 0; w < 4; w++ {
			wg.Go(func() {
				site := "http://www.social.test:" + port + "/"
				// Every 3 requests (max_pending_per_client) come from a
				// new workstation; the loop ends when serve is killed.
				for c := 1; c < 250 && ctx.Err() == nil; c++ {
					src := fmt.Sprintf("127.%d.%d.%d", 10+round, w+1, c)
					client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
						Proxy:       http.ProxyURL(proxyURL),
						DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}).DialContext,
					}}
					for n := 0; n < 3 && ctx.Err() == nil; n++ {
						resp, err := client.Get(site)
						if err != nil {
							return
						}
						page, _ := io.ReadAll(resp.Body)
						resp.Body.Close()
						m := exTokenRE.FindSubmatch(page)
						if m == nil {
							return
						}
						mu.Lock()
						seq++
						why := fmt.Sprintf("Demande numéro %d pour le test de robustesse", seq)
						mu.Unlock()
						form := url.Values{"service": {"socialtest"}, "host": {"www.social.test"},
							"token": {html.UnescapeString(string(m[1]))}, "lang": {"fr"}, "name": {"Test"},
							"justification": {why}, "duration": {"1h"}}
						resp, err = client.PostForm(site+".balise/request", form)
						if err != nil {
							return
						}
						body, _ := io.ReadAll(resp.Body)
						resp.Body.Close()
						if id := idRE.FindSubmatch(body); resp.StatusCode == 200 && id != nil {
							mu.Lock()
							received = append(received, receipt{string(id[1]), src, why})
							mu.Unlock()
						}
					}
					client.CloseIdleConnections()
				}
			})
		}
		time.Sleep(time.Duration(50+rand.IntN(600)) * time.Millisecond)
		in.kill() // SIGKILL, at a random moment of the submissions
		stop()
		wg.Wait()
	}
	if len(received) == 0 {
		t.Fatal("no request was received in any round")
	}
	cfg := filepath.Join(dir, "config.toml")
	if out, errOut, code := exCLI(t, cfg, "verify"); code != 0 {
		t.Fatalf("verify after %d kills = %d\n%s%s", rounds, code, out, errOut)
	}
	stored := map[string]exRequestJSON{}
	for _, q := range exList(t, cfg) {
		stored[q.ID] = q
	}
	raw, _ := os.ReadFile(filepath.Join(dir, "data", "exceptions.jsonl"))
	for _, r := range received {
		q, ok := stored[r.id]
		if !ok || q.Client != r.client || q.Justification != r.justification {
			t.Errorf("request %s (%s, %q) answered \"received\" but the register has %+v", r.id, r.client, r.justification, q)
		}
		if !strings.Contains(string(raw), `"event":"request_received","id":"`+r.id+`"`) {
			t.Errorf("request %s answered \"received\" but the log has no request_received line for it", r.id)
		}
	}
	t.Logf("%d requests received across %d SIGKILLs; %d in the register", len(received), rounds, len(stored))
}
