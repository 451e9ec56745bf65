package tests

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Open connections under a changing policy: listeners that fail alone,
// revocations that cut what is open, reloads that apply [proxy].

// liveHandler is the origin of these tests: "/stream" sends a line every
// 100 ms for 30 s (server-sent events), anything else one line.
func liveHandler(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/stream" {
		io.WriteString(w, "hello from social.test\n")
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	for i := 0; i < 300; i++ {
		if _, err := fmt.Fprintf(w, "data: %d\n\n", i); err != nil {
			return
		}
		http.NewResponseController(w).Flush()
		select {
		case <-r.Context().Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// liveOrigins starts the origin over HTTP and HTTPS on 127.0.0.1 and
// returns their ports.
func liveOrigins(t *testing.T) (httpPort, tlsPort string) {
	t.Helper()
	plain := httptest.NewServer(http.HandlerFunc(liveHandler))
	t.Cleanup(plain.Close)
	secure := httptest.NewTLSServer(http.HandlerFunc(liveHandler))
	t.Cleanup(secure.Close)
	_, httpPort, _ = net.SplitHostPort(plain.Listener.Addr().String())
	_, tlsPort, _ = net.SplitHostPort(secure.Listener.Addr().String())
	return httpPort, tlsPort
}

// liveProxyConfig is a proxy (and DNS filter) resolving through dnsAddr,
// allowed to reach the loopback origins, with CONNECT to tlsPort.
func liveProxyConfig(dnsAddr, tlsPort, proxyExtra, extra string) string {
	return fmt.Sprintf(`
[metrics]
listen = "127.0.0.1:0"

[dns]
listen = "127.0.0.1:0"
upstreams = [%q]

[proxy]
listen = "127.0.0.1:0"
resolver = %q
connect_ports = [443, %s]
allow_destinations = ["127.0.0.0/8", "::1/128"]
%s
`, dnsAddr, dnsAddr, tlsPort, proxyExtra) + extra
}

// curlStream starts curl through proxyAddr on url (-N: unbuffered) and
// returns once it printed its first line; done receives when it exits.
func curlStream(t *testing.T, proxyAddr, url string, args ...string) (done <-chan time.Time) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	all := append([]string{"-sS", "-N", "--max-time", "40", "-x", "http://" + proxyAddr}, args...)
	cmd := exec.CommandContext(ctx, "curl", append(all, url)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(out)
	first := make(chan string, 1)
	go func() { l, _ := br.ReadString('\n'); first <- l }()
	select {
	case l := <-first:
		if !strings.HasPrefix(l, "data:") {
			t.Fatalf("curl %s: first line %q, want the stream", url, l)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("curl %s: no data within 10 s", url)
	}
	ch := make(chan time.Time, 1)
	go func() {
		io.Copy(io.Discard, br)
		cmd.Wait()
		ch <- time.Now()
	}()
	return ch
}

// idleUntilClosed blocks reading c (nothing is expected) and sends the
// time it failed.
func idleUntilClosed(c net.Conn) <-chan time.Time {
	ch := make(chan time.Time, 1)
	go func() {
		c.SetReadDeadline(time.Now().Add(40 * time.Second))
		io.Copy(io.Discard, c)
		ch <- time.Now()
	}()
	return ch
}

// liveKeepAlive opens a client connection to the proxy, sends one
// absolute-form GET for url and reads the whole answer, leaving the
// connection open and idle.
func liveKeepAlive(t *testing.T, proxyAddr, url string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", proxyAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := req.WriteProxy(c); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Close || br.Buffered() > 0 {
		t.Fatalf("GET %s = %d close=%v %q, want 200 kept alive", url, resp.StatusCode, resp.Close, b)
	}
	c.SetDeadline(time.Time{})
	return c
}

// liveTunnel opens a CONNECT tunnel to target, runs TLS with server name
// sni over it, and sends one GET; the connection stays open and idle.
func liveTunnel(t *testing.T, proxyAddr, target, sni string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", proxyAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT %s: %v %v", target, resp, err)
	}
	// The origin's certificate is httptest's: the test checks what the
	// proxy carries, not who the origin is.
	tc := tls.Client(c, &tls.Config{ServerName: sni, InsecureSkipVerify: true})
	req, _ := http.NewRequest(http.MethodGet, "https://"+target+"/", nil)
	if err := req.Write(tc); err != nil {
		t.Fatalf("TLS through the tunnel to %s: %v", target, err)
	}
	resp, err = http.ReadResponse(bufio.NewReader(tc), req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET through the tunnel to %s: %v %v", target, resp, err)
	}
	io.ReadAll(resp.Body)
	c.SetDeadline(time.Time{})
	return tc
}

// liveApprove has 127.0.0.1 ask for socialtest through the block page's
// form and the officer approve it for an hour.
func liveApprove(t *testing.T, in *instance, proxyAddr, site string) {
	t.Helper()
	code, page := exCurl(t, proxyAddr, "127.0.0.1", site)
	m := exTokenRE.FindStringSubmatch(page)
	if code != http.StatusForbidden || m == nil {
		t.Fatalf("GET %s = %d, want the block page with the form\n%s", site, code, page)
	}
	code, answer := exCurl(t, proxyAddr, "127.0.0.1", site+".balise/request",
		"--data-urlencode", "service=socialtest", "--data-urlencode", "host=www.social.test",
		"--data-urlencode", "token="+html.UnescapeString(m[1]), "--data-urlencode", "lang=fr",
		"--data-urlencode", "name=Test", "--data-urlencode", "justification=Campagne de recrutement en cours",
		"--data-urlencode", "duration=4h")
	if code != http.StatusOK || !strings.Contains(answer, "EX-0001") {
		t.Fatalf("form post = %d\n%s", code, answer)
	}
	if out, errOut, code := exCLI(t, in.ConfigPath, "approve", "EX-0001", "--for", "1h", "--by", "RSI Dupont"); code != 0 {
		t.Fatalf("approve = %d\n%s%s", code, out, errOut)
	}
	exEventually(t, "after approve", func() error {
		if code, body := exCurl(t, proxyAddr, "127.0.0.1", site); code != 200 {
			return fmt.Errorf("GET %s = %d %.60q", site, code, body)
		}
		return nil
	})
}

// TestLiveRevokeCutsOpenConnections approves a grant, opens to the listed
// host an idle tunnel, a streaming tunnel (curl), an idle kept-alive
// connection and a streaming plain HTTP response (curl), revokes the
// grant and requires all four cut within 2 s of the revocation.
func TestLiveRevokeCutsOpenConnections(t *testing.T) {
	requireTool(t, "curl")
	dnsAddr := exSocialDNS(t)
	httpPort, tlsPort := liveOrigins(t)
	// A short decision window, so that the re-decision's block line (held
	// back as a repeat of the block before the grant) is written soon.
	in := startBalise(t, liveProxyConfig(dnsAddr, tlsPort, "", exceptionsConfig+"\n[log]\ndecision_window = \"1s\"\n"))
	exRequireFrontEnds(t, in)
	proxyAddr := in.Addr("proxy")
	site := "http://www.social.test:" + httpPort + "/"
	liveApprove(t, in, proxyAddr, site)

	cuts := map[string]<-chan time.Time{
		"idle tunnel":          idleUntilClosed(liveTunnel(t, proxyAddr, "www.social.test:"+tlsPort, "www.social.test")),
		"streaming tunnel":     curlStream(t, proxyAddr, "https://www.social.test:"+tlsPort+"/stream", "-k"),
		"kept-alive HTTP":      idleUntilClosed(liveKeepAlive(t, proxyAddr, site)),
		"streaming HTTP":       curlStream(t, proxyAddr, site+"stream"),
		"unlisted (must stay)": idleUntilClosed(liveKeepAlive(t, proxyAddr, "http://127.0.0.1:"+httpPort+"/")),
	}
	from := len(in.Lines())
	before := time.Now()
	if out, errOut, code := exCLI(t, in.ConfigPath, "revoke", "EX-0001", "--by", "RSI Dupont", "--reason", "fin de campagne"); code != 0 {
		t.Fatalf("revoke = %d\n%s%s", code, out, errOut)
	}
	revoked := time.Now()
	for what, ch := range cuts {
		if what == "unlisted (must stay)" {
			continue
		}
		select {
		case at := <-ch:
			t.Logf("%s cut %v after the revoke command returned (%v after it started)",
				what, at.Sub(revoked).Round(time.Millisecond), at.Sub(before).Round(time.Millisecond))
			if at.Sub(revoked) > 2*time.Second {
				t.Errorf("%s cut %v after the revocation, want within 2 s", what, at.Sub(revoked))
			}
		case <-time.After(10 * time.Second):
			t.Errorf("%s still open 10 s after the revocation", what)
		}
	}
	select {
	case <-cuts["unlisted (must stay)"]:
		t.Error("a kept-alive connection to an unlisted host was closed by the revocation")
	default:
	}
	in.WaitLog(from, 5*time.Second, func(l logLine) bool {
		return l.Msg() == "decision" && l.Str("verdict") == "block" && l.Str("host") == "www.social.test" &&
			l.Str("client") == "127.0.0.1" && (l.Str("front") == "connect" || l.Str("front") == "http")
	})
	in.WaitLog(from, time.Second, func(l logLine) bool {
		return l.Msg() == "connections closed after a policy change"
	})
	if v, _ := in.MetricValue("balise_proxy_tunnels_closed_total", "cause=redecided", "mode=explicit"); v != 2 {
		t.Errorf("tunnels_closed_total{cause=redecided} = %v, want 2", v)
	}
	if v, _ := in.MetricValue("balise_proxy_connections_redecided_total", "mode=explicit"); v != 2 {
		t.Errorf("connections_redecided_total = %v, want 2", v)
	}
}

// listenerFD finds, in process pid, the descriptor of the TCP socket
// listening on port.
func listenerFD(t *testing.T, pid int, port int) int {
	t.Helper()
	inode := ""
	for _, f := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fs := strings.Fields(line)
			if len(fs) < 10 || fs[3] != "0A" {
				continue
			}
			i := strings.LastIndexByte(fs[1], ':')
			if p, err := strconv.ParseInt(fs[1][i+1:], 16, 32); err == nil && int(p) == port {
				inode = fs[9]
			}
		}
	}
	if inode == "" {
		t.Fatalf("no socket of process %d listens on port %d", pid, port)
	}
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if l, _ := os.Readlink(filepath.Join(dir, e.Name())); l == "socket:["+inode+"]" {
			fd, _ := strconv.Atoi(e.Name())
			return fd
		}
	}
	t.Fatalf("socket inode %s not among the descriptors of %d", inode, pid)
	return -1
}

// breakListener shuts down, from outside, the socket process pid listens
// on at addr: the kernel stops it listening and its accept fails with
// EINVAL, an error that is not temporary.
func breakListener(t *testing.T, pid int, addr string) {
	t.Helper()
	_, ps, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(ps)
	fd := listenerFD(t, pid, port)
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		requireSkip(t, "pidfd_open: %v", err)
	}
	defer unix.Close(pidfd)
	dup, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		requireSkip(t, "pidfd_getfd: %v", err)
	}
	defer unix.Close(dup)
	if err := unix.Shutdown(dup, unix.SHUT_RDWR); err != nil {
		t.Fatalf("shutdown of the listening socket: %v", err)
	}
}

// requireSkip skips the test, or fails it under BALISE_E2E=1.
func requireSkip(t *testing.T, format string, args ...any) {
	t.Helper()
	if e2eStrict {
		t.Fatalf("BALISE_E2E=1 but "+format, args...)
	}
	t.Skipf(format, args...)
}

// TestLiveListenerFailure breaks one of the proxy's two listening sockets
// from outside the process: that listener stops (logged, counted,
// /readyz 503) while CONNECT and plain HTTP go on through the other one.
func TestLiveListenerFailure(t *testing.T) {
	requireTool(t, "curl")
	dnsAddr := exSocialDNS(t)
	httpPort, tlsPort := liveOrigins(t)
	conf := strings.Replace(liveProxyConfig(dnsAddr, tlsPort, "", ""), `listen = "127.0.0.1:0"
resolver`, `listen = ["127.0.0.1:0", "127.0.0.1:0"]
resolver`, 1)
	in := startBalise(t, conf)
	exRequireFrontEnds(t, in)
	addrs := in.Addrs("proxy")
	if len(addrs) != 2 {
		t.Fatalf("proxy listeners = %v, want 2", addrs)
	}
	broken, other := addrs[0], addrs[1]
	tunnelURL := "https://www.social.test:" + tlsPort + "/"
	if code, body := exCurl(t, other, "127.0.0.1", "-k", tunnelURL); code != 200 {
		t.Fatalf("CONNECT before = %d %q", code, body)
	}
	if code, _ := in.Get("/readyz"); code != 200 {
		t.Fatalf("/readyz before = %d, want 200", code)
	}
	// A tunnel through the listener about to break: it must survive.
	open := liveTunnel(t, broken, "www.social.test:"+tlsPort, "www.social.test")

	from := len(in.Lines())
	breakListener(t, in.cmd.Process.Pid, broken)
	l := in.WaitLog(from, 5*time.Second, func(l logLine) bool { return strings.HasPrefix(l.Msg(), "listener stopped") })
	if l.Str("addr") != broken || l.Str("service") != "proxy" {
		t.Errorf("listener stopped line = %v, want addr %s service proxy", l, broken)
	}

	if code, body := exCurl(t, other, "127.0.0.1", "-k", tunnelURL); code != 200 || !strings.Contains(body, "hello from social.test") {
		t.Errorf("CONNECT through the other listener after the failure = %d %q, want 200", code, body)
	}
	if code, body := exCurl(t, other, "127.0.0.1", "http://www.social.test:"+httpPort+"/"); code != 200 {
		t.Errorf("HTTP through the other listener after the failure = %d %q, want 200", code, body)
	}
	if err := exec.Command("curl", "-sS", "--max-time", "5", "-x", "http://"+broken, "http://www.social.test:"+httpPort+"/").Run(); err == nil {
		t.Errorf("the broken listener %s still answers", broken)
	}
	code, body := in.Get("/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "proxy: listener "+broken+" stopped") {
		t.Errorf("/readyz after the failure = %d %q, want 503 naming the listener", code, body)
	}
	if v, _ := in.MetricValue("balise_proxy_listener_failures_total", "mode=explicit"); v != 1 {
		t.Errorf("balise_proxy_listener_failures_total{mode=explicit} = %v, want 1", v)
	}
	req, _ := http.NewRequest(http.MethodGet, "https://www.social.test:"+tlsPort+"/again", nil)
	open.SetDeadline(time.Now().Add(5 * time.Second))
	if err := req.Write(open); err != nil {
		t.Errorf("tunnel opened through the broken listener: %v", err)
	} else if resp, err := http.ReadResponse(bufio.NewReader(open), req); err != nil || resp.StatusCode != 200 {
		t.Errorf("tunnel opened through the broken listener = %v %v, want still open", resp, err)
	}
	if c := in.Stop(); c != 0 {
		t.Errorf("exit code after SIGTERM = %d, want 0", c)
	}
}

// liveCA runs `balise ca init` into dir and returns the certificate path.
func liveCA(t *testing.T, dir string) string {
	t.Helper()
	if out, errOut, code := runBalise(t, "ca", "init", "--out", dir); code != 0 {
		t.Fatalf("ca init = %d\n%s%s", code, out, errOut)
	}
	return filepath.Join(dir, "ca.pem")
}

// curlCode runs curl through proxyAddr from src and returns the status
// code, the body and curl's exit code.
func curlCode(t *testing.T, proxyAddr, src string, args ...string) (int, string, int) {
	t.Helper()
	all := append([]string{"-sS", "--max-time", "10", "-x", "http://" + proxyAddr, "--interface", src, "-w", "\n%{http_code}"}, args...)
	out, err := exec.Command("curl", all...).Output()
	exit := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		exit = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	s := string(out)
	i := strings.LastIndexByte(s, '\n')
	code, _ := strconv.Atoi(strings.TrimSpace(s[i+1:]))
	return code, s[:max(i, 0)], exit
}

// TestLiveReloadProxySettings changes allowed_clients, block_message and
// the CA with SIGHUP: each applies without a restart; a changed listen is
// named in a warning; a CA that does not load fails the reload and keeps
// everything as it was.
func TestLiveReloadProxySettings(t *testing.T) {
	requireTool(t, "curl")
	dnsAddr := exSocialDNS(t)
	httpPort, tlsPort := liveOrigins(t)
	dir := t.TempDir()
	ca1 := liveCA(t, filepath.Join(dir, "ca1"))
	ca2 := liveCA(t, filepath.Join(dir, "ca2"))
	conf := func(message, clients, caDir, listen string) string {
		c := liveProxyConfig(dnsAddr, tlsPort, fmt.Sprintf(`allowed_clients = [%s]

[proxy.tls]
ca_cert = %q
ca_key = %q
`, clients, filepath.Join(caDir, "ca.pem"), filepath.Join(caDir, "ca-key.pem")), exceptionsConfig)
		c = strings.Replace(c, `listen = "127.0.0.1:0"
resolver`, "listen = "+listen+"\nresolver", 1)
		return fmt.Sprintf("block_message = %q\n", message) + c
	}
	in := startBaliseWith(t, startOptions{Config: conf("Premier message de l institution", `"127.0.0.1/32"`, filepath.Join(dir, "ca1"), `"127.0.0.1:0"`), Dir: dir})
	exRequireFrontEnds(t, in)
	proxyAddr := in.Addr("proxy")
	unlisted := "http://127.0.0.1:" + httpPort + "/"
	blockedHTTP := "http://www.social.test:" + httpPort + "/"
	blockedHTTPS := "https://www.social.test/"

	check := func(when, message, caOK, caBad string, client2 bool) {
		t.Helper()
		if code, _, _ := curlCode(t, proxyAddr, "127.0.0.2", unlisted); (code == 200) != client2 {
			t.Errorf("%s: 127.0.0.2 through the proxy = %d, want allowed=%v", when, code, client2)
		}
		if code, body, _ := curlCode(t, proxyAddr, "127.0.0.1", blockedHTTP); code != 403 || !strings.Contains(body, message) {
			t.Errorf("%s: block page = %d, want it to say %q", when, code, message)
		}
		if code, body, exit := curlCode(t, proxyAddr, "127.0.0.1", "--cacert", caOK, blockedHTTPS); code != 403 || !strings.Contains(body, message) {
			t.Errorf("%s: HTTPS block page trusting %s = %d (curl exit %d), want 403", when, caOK, code, exit)
		}
		if _, _, exit := curlCode(t, proxyAddr, "127.0.0.1", "--cacert", caBad, blockedHTTPS); exit != 60 {
			t.Errorf("%s: HTTPS block page trusting only %s: curl exit %d, want 60 (certificate not trusted)", when, caBad, exit)
		}
	}
	check("before", "Premier message de l institution", ca1, ca2, false)

	// A CA that does not load: the reload fails, nothing changes.
	in.WriteConfig(conf("Message jamais en vigueur", `"127.0.0.1/32", "127.0.0.2/32"`, filepath.Join(dir, "absent"), `"127.0.0.1:0"`))
	if l := in.Reload(); !strings.HasPrefix(l.Msg(), "reload failed") || !strings.Contains(l.Str("error"), "absent") {
		t.Fatalf("reload with a missing CA = %v, want a failure naming the file", l)
	}
	check("after a failed reload", "Premier message de l institution", ca1, ca2, false)

	from := len(in.Lines())
	in.WriteConfig(conf("Second message de l institution", `"127.0.0.1/32", "127.0.0.2/32"`, filepath.Join(dir, "ca2"), `["127.0.0.1:0", "127.0.0.1:0"]`))
	if l := in.Reload(); l.Msg() != "configuration reloaded" {
		t.Fatalf("reload = %v", l)
	}
	w := in.WaitLog(from, time.Second, func(l logLine) bool {
		return strings.HasPrefix(l.Msg(), "[proxy] settings that take effect at the next restart")
	})
	if w.Str("keys") != "proxy.listen" || w.Str("level") != "WARN" {
		t.Errorf("restart warning = %v, want level WARN and keys exactly proxy.listen", w)
	}
	for _, l := range in.Lines()[from:] {
		if strings.Contains(l.Msg(), "[proxy") && l.Str("keys") != "proxy.listen" && l.Str("level") == "WARN" {
			t.Errorf("unexpected [proxy] warning: %v", l)
		}
	}
	check("after the reload", "Second message de l institution", ca2, ca1, true)
	if n := len(in.Addrs("proxy")); n != 1 {
		t.Errorf("proxy listeners after the reload = %d, want 1 (listen waits for a restart)", n)
	}
}
