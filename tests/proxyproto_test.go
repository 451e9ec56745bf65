package tests

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The PROXY protocol behind a real load balancer: HAProxy (Debian's) in
// TCP mode in front of the explicit proxy, one frontend with send-proxy
// (v1) and one with send-proxy-v2, both connecting from 127.0.0.5, the
// only address in proxy.proxy_protocol_from. Workstations are 127.0.0.2
// (the comms group, allowed the listed service) and 127.0.0.3 (allowed
// to use the proxy, not in comms); allowed_clients lists neither the
// balancer nor 127.0.0.4.

const ppBalancer = "127.0.0.5"

// freePort returns a loopback port nobody listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startHAProxy runs haproxy in the foreground with two TCP frontends to
// backend (Balise's proxy): send-proxy and send-proxy-v2, health checks
// every 100 ms. It returns the two frontends' addresses.
func startHAProxy(t *testing.T, backend string) (v1, v2 string) {
	t.Helper()
	bin := requireTool(t, "haproxy")
	p1, p2 := freePort(t), freePort(t)
	cfg := fmt.Sprintf(`global
    maxconn 256
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe_v1
    bind 127.0.0.1:%d
    default_backend be_v1
frontend fe_v2
    bind 127.0.0.1:%d
    default_backend be_v2
backend be_v1
    server balise %s send-proxy check inter 100ms source %s
backend be_v2
    server balise %s send-proxy-v2 check inter 100ms source %s
`, p1, p2, backend, ppBalancer, backend, ppBalancer)
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-c", "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c: %v\n%s", err, out)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "-db", "-f", path)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		cmd.Wait()
		if t.Failed() {
			t.Logf("haproxy output:\n%s", out.String())
		}
	})
	v1, v2 = fmt.Sprintf("127.0.0.1:%d", p1), fmt.Sprintf("127.0.0.1:%d", p2)
	for _, a := range []string{v1, v2} {
		deadline := time.Now().Add(10 * time.Second)
		for {
			c, err := net.DialTimeout("tcp", a, time.Second)
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("haproxy does not listen on %s: %v\n%s", a, err, out.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return v1, v2
}

// ppRaw connects to addr from from, writes data at once and returns what
// comes back before the connection closes (bounded by 10 s) and how long
// it took.
func ppRaw(t *testing.T, from, addr string, data []byte) (string, time.Duration) {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	if len(data) > 0 {
		c.Write(data)
	}
	b, _ := io.ReadAll(c)
	return string(b), time.Since(start)
}

func TestProxyProtoHAProxy(t *testing.T) {
	requireTool(t, "curl")
	requireTool(t, "haproxy")
	httpPort, httpsPort := pxOrigins(t)
	in := startBalise(t, pxConfig(pxDNS(t), httpsPort, fmt.Sprintf(`allowed_clients = ["127.0.0.2/32", "127.0.0.3/32"]
proxy_protocol_from = [%q]
header_timeout = "1s"`, ppBalancer), "[log]\ndecision_window = \"1ms\"\n"))
	px := pxRequireProxy(t, in)
	v1, v2 := startHAProxy(t, px)
	listed := "http://e2e-social.test:" + httpPort + "/page"
	refusals := func() float64 {
		n, _ := in.MetricValue("balise_proxy_refusals_total", "mode=explicit", "reason=proxy_protocol")
		return n
	}

	// HAProxy's health checks (every 100 ms, with the PROXY header) are
	// not refusals.
	time.Sleep(time.Second)
	if n := refusals(); n != 0 {
		t.Fatalf("refusals{proxy_protocol} = %v after HAProxy's health checks, want 0", n)
	}

	for _, fe := range []struct{ name, addr string }{{"send-proxy", v1}, {"send-proxy-v2", v2}} {
		t.Run(fe.name, func(t *testing.T) {
			from := len(in.Lines())
			// The comms workstation through the balancer: allowed, and
			// decided as 127.0.0.2.
			_, out, errs := pxCurl(t, "-x", "http://"+fe.addr, "--interface", "127.0.0.2", "-w", "\n%{http_code}", listed)
			if status, body := pxStatus(out); status != "200" || body != "origin /page" {
				t.Errorf("comms workstation through HAProxy = %s %q %s", status, body, errs)
			}
			l := in.WaitLog(from, 5*time.Second, func(l logLine) bool {
				return l.Msg() == "decision" && l.Str("service") == "e2e-social" && l.Str("client") == "127.0.0.2"
			})
			if l.Str("verdict") != "allow" || l.Str("rule") != "comms" {
				t.Errorf("decision for 127.0.0.2 = %v, want allow by rule comms", l)
			}
			// Another allowed workstation: blocked by the policy, as itself.
			_, out, _ = pxCurl(t, "-x", "http://"+fe.addr, "--interface", "127.0.0.3", "-w", "\n%{http_code}", listed)
			if status, body := pxStatus(out); status != "403" || !strings.Contains(body, "E2E Social") {
				t.Errorf("127.0.0.3 through HAProxy = %s %.200q, want the block page", status, body)
			}
			in.WaitLog(from, 5*time.Second, func(l logLine) bool {
				return l.Msg() == "decision" && l.Str("client") == "127.0.0.3" && l.Str("verdict") == "block"
			})
			// A workstation outside allowed_clients is refused though the
			// balancer's connection carries it.
			_, out, _ = pxCurl(t, "-x", "http://"+fe.addr, "--interface", "127.0.0.4", "-w", "\n%{http_code}", listed)
			if status, _ := pxStatus(out); status != "403" {
				t.Errorf("127.0.0.4 (not in allowed_clients) through HAProxy = %s, want 403", status)
			}
			// HTTPS tunnel through the balancer.
			_, out, errs = pxCurl(t, "-x", "http://"+fe.addr, "--interface", "127.0.0.2", "-k", "-w", "\n%{http_code}", "https://e2e-social.test:"+httpsPort+"/tls")
			if status, body := pxStatus(out); status != "200" || body != "origin /tls" {
				t.Errorf("HTTPS tunnel through HAProxy = %s %q %s", status, body, errs)
			}
		})
	}
	for _, l := range in.Lines() {
		if l.Msg() == "decision" && l.Str("client") == ppBalancer {
			t.Errorf("a decision used the balancer's address: %v", l)
		}
	}
	if n, _ := in.MetricValue("balise_proxy_refusals_total", "mode=explicit", "reason=client"); n != 2 {
		t.Errorf("refusals{client} = %v, want 2 (127.0.0.4 through each frontend)", n)
	}

	// The balancer's own address alone may not use the proxy: without a
	// header its connection is refused.
	before := refusals()
	code, _, _ := pxCurl(t, "-x", "http://"+px, "--interface", ppBalancer, listed)
	if code == 0 {
		t.Errorf("curl from the balancer's address without a header succeeded")
	}

	// Raw sockets: a spoofed header from a workstation, a malformed one
	// and a slow one from the balancer.
	get := "GET " + listed + " HTTP/1.1\r\nHost: e2e-social.test\r\n\r\n"
	if got, _ := ppRaw(t, "127.0.0.3", px, []byte("PROXY TCP4 127.0.0.2 127.0.0.1 40000 3128\r\n"+get)); got != "" {
		t.Errorf("spoofed v1 header from 127.0.0.3 answered %.100q, want the connection closed", got)
	}
	v2spoof := append([]byte("\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c"), 127, 0, 0, 2, 127, 0, 0, 1, 0x9c, 0x40, 0x0c, 0x38)
	if got, _ := ppRaw(t, "127.0.0.2", px, append(v2spoof, get...)); got != "" {
		t.Errorf("spoofed v2 header from 127.0.0.2 answered %.100q, want the connection closed", got)
	}
	if got, _ := ppRaw(t, ppBalancer, px, []byte("PROXY TCP4 127.0.0.2 not-an-address 1 2\r\n"+get)); got != "" {
		t.Errorf("malformed header from the balancer answered %.100q, want the connection closed", got)
	}
	got, took := ppRaw(t, ppBalancer, px, []byte("\r\n\r\n\x00\r\n"))
	if got != "" || took < 900*time.Millisecond || took > 5*time.Second {
		t.Errorf("slow header from the balancer: %q after %v, want the connection closed after header_timeout (1s)", got, took)
	}
	deadline := time.Now().Add(5 * time.Second)
	for refusals() != before+5 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := refusals(); n != before+5 {
		t.Errorf("refusals{proxy_protocol} = %v, want %v (missing, 2 spoofed, malformed, slow)", n, before+5)
	}
	seen := map[string]bool{}
	for _, l := range in.Lines() {
		if l.Msg() == "refused" && l.Str("reason") == "proxy_protocol" {
			seen[l.Str("client")] = true
		}
	}
	for _, c := range []string{ppBalancer, "127.0.0.2", "127.0.0.3"} {
		if !seen[c] {
			t.Errorf("no msg=refused reason=proxy_protocol line for client %s", c)
		}
	}
}

// `check` warns about wide proxy_protocol_from ranges and pod networks,
// and refuses the key with transparent listeners.
func TestProxyProtoCheck(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	wide := write("wide.toml", "[proxy]\nproxy_protocol_from = [\"10.20.0.0/16\", \"10.244.1.9\"]\n")
	_, errs, code := runBalise(t, "check", "--config", wide)
	if code != 0 || !strings.Contains(errs, "proxy.proxy_protocol_from[0]: 10.20.0.0/16 is wider than /24") ||
		!strings.Contains(errs, "any pod could pose as the communications service") {
		t.Errorf("check on wide ranges = %d\n%s", code, errs)
	}
	if _, _, code := runBalise(t, "check", "--strict", "--config", wide); code != 1 {
		t.Errorf("check --strict on wide ranges = %d, want 1", code)
	}
	both := write("both.toml", "[proxy]\ntransparent_https = [\"127.0.0.1:8443\"]\nproxy_protocol_from = [\"10.20.0.5\"]\n")
	_, errs, code = runBalise(t, "check", "--config", both)
	if code != 1 || !strings.Contains(errs, both+":3:1: proxy.proxy_protocol_from: cannot be used with proxy.transparent_http or proxy.transparent_https") {
		t.Errorf("check with transparent listeners = %d\n%s", code, errs)
	}
}

// A reload changes or empties proxy_protocol_from at once; turning it on
// from empty waits for a restart, and says so.
func TestProxyProtoReload(t *testing.T) {
	httpPort, httpsPort := pxOrigins(t)
	resolver := pxDNS(t)
	conf := func(from string) string {
		extra := `allowed_clients = ["127.0.0.0/8"]`
		if from != "" {
			extra += "\nproxy_protocol_from = [" + from + "]"
		}
		return pxConfig(resolver, httpsPort, extra, "")
	}
	get := []byte("PROXY TCP4 127.0.0.2 127.0.0.1 40000 3128\r\nGET http://e2e-social.test:" + httpPort + "/r HTTP/1.1\r\nHost: e2e-social.test\r\nConnection: close\r\n\r\n")
	status := func(in *instance, from string) string {
		got, _ := ppRaw(t, from, in.Addr("proxy"), get)
		if got == "" {
			return "closed"
		}
		line, _, _ := strings.Cut(got, "\r\n")
		return line
	}

	off := startBalise(t, conf(""))
	pxRequireProxy(t, off)
	if s := status(off, "127.0.0.1"); !strings.HasPrefix(s, "HTTP/1.1 400") {
		t.Errorf("off: a PROXY line = %q, want 400", s)
	}
	off.WriteConfig(conf(`"127.0.0.1"`))
	if l := off.Reload(); l.Msg() != "configuration reloaded" {
		t.Fatalf("reload: %v", l)
	}
	off.WaitLog(0, 5*time.Second, func(l logLine) bool {
		return strings.Contains(l.Msg(), "PROXY protocol takes effect at the next restart")
	})
	if s := status(off, "127.0.0.1"); !strings.HasPrefix(s, "HTTP/1.1 400") {
		t.Errorf("turned on by a reload: a PROXY line = %q, want 400 until a restart", s)
	}

	on := startBalise(t, conf(`"127.0.0.3"`))
	pxRequireProxy(t, on)
	if s := status(on, "127.0.0.1"); s != "closed" {
		t.Errorf("127.0.0.1 not a balancer: a PROXY line = %q, want closed", s)
	}
	on.WriteConfig(conf(`"127.0.0.1"`))
	if l := on.Reload(); l.Msg() != "configuration reloaded" {
		t.Fatalf("reload: %v", l)
	}
	if s := status(on, "127.0.0.1"); !strings.HasPrefix(s, "HTTP/1.1 200") {
		t.Errorf("127.0.0.1 listed by a reload: %q, want 200 (decided for 127.0.0.2, comms)", s)
	}
	if s := status(on, "127.0.0.3"); s != "closed" {
		t.Errorf("127.0.0.3 removed by a reload: a PROXY line = %q, want closed", s)
	}
	on.WriteConfig(conf(""))
	on.Reload()
	if s := status(on, "127.0.0.1"); !strings.HasPrefix(s, "HTTP/1.1 400") {
		t.Errorf("list emptied by a reload: a PROXY line = %q, want 400", s)
	}
}
