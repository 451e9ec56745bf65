package proxy

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/balise-net/balise/internal/policy"
)

// liveOrigin is a plain HTTP origin: "/" answers at once, "/stream"
// sends a first chunk then one every 100 ms until the client goes, and
// "/ws" upgrades to an echo protocol (as a WebSocket server would).
func liveOrigin(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/stream":
			w.Header().Set("Content-Type", "text/event-stream")
			for i := 0; i < 200; i++ {
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
		case "/ws":
			c, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer c.Close()
			brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
			brw.Flush()
			io.Copy(c, brw)
		default:
			io.WriteString(w, "origin:"+r.URL.Path)
		}
	}))
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	return port
}

// dialProxy opens a client connection to the proxy from 127.0.0.1.
func dialProxy(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	return dialProxyFrom(t, addr, "127.0.0.1")
}

// dialProxyFrom opens a client connection to the proxy from address from.
func dialProxyFrom(t *testing.T, addr, from string) (net.Conn, *bufio.Reader) {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

// sendGet writes an absolute-form GET (keep-alive) and reads the head.
func sendGet(t *testing.T, c net.Conn, br *bufio.Reader, url string, headers ...string) *http.Response {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	u := strings.TrimPrefix(url, "http://")
	host := u[:strings.IndexByte(u, '/')]
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n", url, host, strings.Join(headers, ""))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp
}

// waitClosed reads from r until it fails, and returns how long that took;
// it fails the test if r still delivers data after within.
func waitClosed(t *testing.T, what string, c net.Conn, r io.Reader, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	c.SetReadDeadline(start.Add(within))
	buf := make([]byte, 4096)
	for {
		_, err := r.Read(buf)
		if err == nil {
			continue
		}
		if isTimeout(err) {
			t.Fatalf("%s still open %v after the re-decision", what, within)
		}
		return time.Since(start)
	}
}

func grantFor(client string, services ...string) []policy.Grant {
	return []policy.Grant{{ID: "EX-1", Subject: netip.MustParsePrefix(client + "/32"), Services: services,
		NotAfter: time.Now().Add(time.Hour)}}
}

// TestRedecideRevokedGrant opens, under a grant, a tunnel, an idle
// kept-alive connection, a streaming response and an upgraded connection
// to a listed host; once the grant is gone Redecide must close all four,
// and leave what is still allowed alone.
func TestRedecideRevokedGrant(t *testing.T) {
	_, _, tlsPort := originTLS(t)
	port := liveOrigin(t)
	base, err := policy.New(testSpec())
	if err != nil {
		t.Fatal(err)
	}
	e := startEnv(t, testSpec(), func(o *Options) { o.ConnectPorts = []uint16{mustPort(t, tlsPort)} })
	e.pol.Store(base.WithGrants(grantFor("127.0.0.1", "social")))

	tun, code, err := tlsOverTunnel(t, e.addr, "", "social.test:"+tlsPort, "example.com", nil, true)
	if err != nil || code != 200 {
		t.Fatalf("tunnel under the grant = %d %v", code, err)
	}
	defer tun.Close()
	// 127.0.0.2 is in the comms group: its tunnel stays allowed.
	kept, code, err := tlsOverTunnel(t, e.addr, "127.0.0.2", "social.test:"+tlsPort, "example.com", nil, true)
	if err != nil || code != 200 {
		t.Fatalf("tunnel of the comms group = %d %v", code, err)
	}
	defer kept.Close()

	idle, idleR := dialProxy(t, e.addr)
	if resp := sendGet(t, idle, idleR, "http://social.test:"+port+"/page"); resp.StatusCode != 200 {
		t.Fatalf("GET under the grant = %d", resp.StatusCode)
	} else {
		io.ReadAll(resp.Body)
	}
	unlisted, unlistedR := dialProxy(t, e.addr)
	if resp := sendGet(t, unlisted, unlistedR, "http://unlisted.test:"+port+"/page"); resp.StatusCode != 200 {
		t.Fatalf("GET unlisted = %d", resp.StatusCode)
	} else {
		io.ReadAll(resp.Body)
	}
	stream, streamR := dialProxy(t, e.addr)
	resp := sendGet(t, stream, streamR, "http://social.test:"+port+"/stream")
	if resp.StatusCode != 200 {
		t.Fatalf("stream under the grant = %d", resp.StatusCode)
	}
	line, _ := bufio.NewReader(resp.Body).ReadString('\n')
	if !strings.HasPrefix(line, "data:") {
		t.Fatalf("stream first line = %q", line)
	}
	ws, wsR := dialProxy(t, e.addr)
	if resp := sendGet(t, ws, wsR, "http://social.test:"+port+"/ws", "Upgrade: websocket\r\n", "Connection: Upgrade\r\n"); resp.StatusCode != 101 {
		t.Fatalf("upgrade under the grant = %d", resp.StatusCode)
	}
	ws.Write([]byte("ping"))
	ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b := make([]byte, 4); func() error { _, err := io.ReadFull(wsR, b); return err }() != nil || string(b) != "ping" {
		t.Fatalf("upgraded connection does not echo")
	}
	ws.SetReadDeadline(time.Time{})

	e.pol.Store(base) // the grant is revoked
	start := time.Now()
	tunnels, conns := e.p.Redecide()
	if tunnels != 1 || conns != 3 {
		t.Errorf("Redecide() = %d tunnels, %d connections, want 1 and 3", tunnels, conns)
	}
	waitClosed(t, "tunnel", tun, tun, 2*time.Second)
	waitClosed(t, "idle kept-alive connection", idle, idleR, 2*time.Second)
	waitClosed(t, "streaming response", stream, resp.Body, 2*time.Second)
	waitClosed(t, "upgraded connection", ws, wsR, 2*time.Second)
	t.Logf("all cut within %v", time.Since(start))

	if r, body := get(t, kept, "example.com", "/still", ""); r.StatusCode != 200 || body != "origin:/still" {
		t.Errorf("comms tunnel after the re-decision = %d %q, want still open", r.StatusCode, body)
	}
	if resp := sendGet(t, unlisted, unlistedR, "http://unlisted.test:"+port+"/again"); resp.StatusCode != 200 {
		t.Errorf("unlisted kept-alive connection after the re-decision = %d, want still open", resp.StatusCode)
	}
	e.waitMetric("balise_proxy_tunnels_closed_total", map[string]string{"cause": "redecided"}, 1, 2*time.Second)
	if got := e.metric("balise_proxy_connections_redecided_total", map[string]string{"mode": "explicit"}); got != 3 {
		t.Errorf("connections_redecided_total = %v, want 3", got)
	}
	found := false
	for _, l := range strings.Split(e.logs.String(), "\n") {
		if strings.Contains(l, "msg=decision") && strings.Contains(l, "client=127.0.0.1") && strings.Contains(l, "verdict=block") {
			found = true
		}
	}
	if !found {
		t.Errorf("no decision line for the re-decision:\n%s", e.logs.String())
	}
}

// TestRedecideTunnelDecidedBeforeOpened covers a tunnel whose CONNECT
// was allowed before a revocation but whose ClientHello came after: it
// must be decided again when it opens.
func TestRedecideTunnelDecidedBeforeOpened(t *testing.T) {
	_, _, tlsPort := originTLS(t)
	base, err := policy.New(testSpec())
	if err != nil {
		t.Fatal(err)
	}
	e := startEnv(t, testSpec(), func(o *Options) { o.ConnectPorts = []uint16{mustPort(t, tlsPort)} })
	e.pol.Store(base.WithGrants(grantFor("127.0.0.1", "social")))
	c, _, code := rawConnect(t, e.addr, "", "social.test:"+tlsPort)
	defer c.Close()
	if code != 200 {
		t.Fatalf("CONNECT under the grant = %d", code)
	}
	e.pol.Store(base)
	e.p.Redecide()
	tc := tlsClient(c)
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	err = tc.Handshake()
	if err == nil {
		if _, err = tc.Read(make([]byte, 1)); err == nil {
			t.Fatal("tunnel decided before the revocation opened after it and carries data")
		}
	}
	e.waitMetric("balise_proxy_tunnels_closed_total", map[string]string{"cause": "redecided"}, 1, 2*time.Second)
}

// TestRedecideUntilRearmed checks that a tunnel still allowed after a
// re-decision follows the new decision's until: a grant shortened to
// end in 1 s closes the tunnel then (cause "until").
func TestRedecideUntilRearmed(t *testing.T) {
	_, _, tlsPort := originTLS(t)
	base, err := policy.New(testSpec())
	if err != nil {
		t.Fatal(err)
	}
	e := startEnv(t, testSpec(), func(o *Options) { o.ConnectPorts = []uint16{mustPort(t, tlsPort)} })
	e.pol.Store(base.WithGrants(grantFor("127.0.0.1", "social")))
	tun, code, err := tlsOverTunnel(t, e.addr, "", "social.test:"+tlsPort, "example.com", nil, true)
	if err != nil || code != 200 {
		t.Fatalf("tunnel under the grant = %d %v", code, err)
	}
	defer tun.Close()
	g := grantFor("127.0.0.1", "social")
	g[0].NotAfter = time.Now().Add(time.Second)
	e.pol.Store(base.WithGrants(g))
	if n, _ := e.p.Redecide(); n != 0 {
		t.Fatalf("Redecide closed %d tunnels, want 0 (the grant still holds)", n)
	}
	d := waitClosed(t, "tunnel past its shortened grant", tun, tun, 3*time.Second)
	if d < 500*time.Millisecond {
		t.Errorf("tunnel closed after %v, want at the grant's new end (1 s)", d)
	}
	e.waitMetric("balise_proxy_tunnels_closed_total", map[string]string{"cause": "until"}, 1, 2*time.Second)
}

func tlsClient(c net.Conn) *tls.Conn {
	return tls.Client(c, &tls.Config{ServerName: "example.com", InsecureSkipVerify: true})
}

// TestRedecideTransparentHTTP covers transparent HTTP: a kept-alive
// connection is cut by a re-decision after a revocation, and a response
// still streaming when its grant ends is cut at the grant's end without
// any policy change.
func TestRedecideTransparentHTTP(t *testing.T) {
	port := liveOrigin(t)
	base, err := policy.New(testSpec())
	if err != nil {
		t.Fatal(err)
	}
	dsts := &dstMap{}
	e := startEnv(t, testSpec(), func(o *Options) { o.OriginalDestination = dsts.hook })
	ha, _ := startTransparent(t, e)
	dsts.set(ha, "127.0.0.1:"+port)
	g := grantFor("127.0.0.1", "social")
	g[0].NotAfter = time.Now().Add(1500 * time.Millisecond)
	e.pol.Store(base.WithGrants(g))

	open := func(path string) (net.Conn, *bufio.Reader, *http.Response) {
		c, br := dialProxy(t, ha)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: www.social.test\r\n\r\n", path)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("transparent GET %s under the grant: %v %v", path, resp, err)
		}
		c.SetDeadline(time.Time{})
		return c, br, resp
	}
	idle, idleR, resp := open("/page")
	io.ReadAll(resp.Body)
	stream, _, sresp := open("/stream")
	start := time.Now()

	// The grant is still in force: a re-decision keeps both.
	if _, n := e.p.Redecide(); n != 0 {
		t.Fatalf("Redecide with the grant in force closed %d connections, want 0", n)
	}
	waitClosed(t, "stream past its grant's end", stream, sresp.Body, 4*time.Second)
	if el := time.Since(start); el < time.Second {
		t.Errorf("stream cut after %v, want at the grant's end (about 1.5 s)", el)
	}
	// The idle connection carried the same host: cut at the same moment.
	waitClosed(t, "idle connection past its grant's end", idle, idleR, time.Second)

	// A new grant, then its revocation: Redecide cuts the connection.
	e.pol.Store(base.WithGrants(grantFor("127.0.0.1", "social")))
	again, againR, resp := open("/page")
	io.ReadAll(resp.Body)
	e.pol.Store(base)
	if _, n := e.p.Redecide(); n != 1 {
		t.Errorf("Redecide after the revocation closed %d connections, want 1", n)
	}
	waitClosed(t, "kept-alive transparent connection after the revocation", again, againR, 2*time.Second)
	if got := e.metric("balise_proxy_connections_redecided_total", map[string]string{"mode": "transparent"}); got != 3 {
		t.Errorf("connections_redecided_total{transparent} = %v, want 3", got)
	}
}

// TestRedecideReleasesBlockPage: a browser kept on an intercepted block
// page (HTTPS, the institution's CA) is let go once a grant allows the
// host, so that its next request reaches the site rather than the block
// page; another client's block page stays.
func TestRedecideReleasesBlockPage(t *testing.T) {
	ca, roots := testCA(t)
	base, err := policy.New(testSpec())
	if err != nil {
		t.Fatal(err)
	}
	e := startEnv(t, testSpec(), func(o *Options) { o.CA = ca })
	granted, code, err := tlsOverTunnel(t, e.addr, "", "www.social.test:443", "www.social.test", roots, false)
	if err != nil || code != 200 {
		t.Fatalf("intercepted tunnel: %d %v", code, err)
	}
	defer granted.Close()
	other, code, err := tlsOverTunnel(t, e.addr, "127.0.0.3", "www.social.test:443", "www.social.test", roots, false)
	if err != nil || code != 200 {
		t.Fatalf("second intercepted tunnel: %d %v", code, err)
	}
	defer other.Close()
	for _, c := range []net.Conn{granted, other} {
		if resp, _ := get(t, c, "www.social.test", "/", ""); resp.StatusCode != 403 {
			t.Fatalf("block page = %d, want 403", resp.StatusCode)
		}
	}
	time.Sleep(50 * time.Millisecond) // both connections idle again
	e.pol.Store(base.WithGrants(grantFor("127.0.0.1", "social")))
	if _, n := e.p.Redecide(); n != 1 {
		t.Errorf("Redecide released %d connections, want 1", n)
	}
	waitClosed(t, "block-page connection after the grant", granted, granted, 2*time.Second)
	if resp, _ := get(t, other, "www.social.test", "/again", ""); resp.StatusCode != 403 {
		t.Errorf("the other client's block page = %d, want 403 on the same connection", resp.StatusCode)
	}
}
