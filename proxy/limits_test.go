package proxy

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestTunnelCapPerClient(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	e := startEnv(t, testSpec(), func(o *Options) {
		o.ConnectPorts = []uint16{mustPort(t, port)}
		o.OpaquePorts = o.ConnectPorts // the origin does not speak TLS
		o.MaxTunnelsPerClient = 2
	})
	target := "unlisted.test:" + port
	a, _, ca := rawConnect(t, e.addr, "", target)
	b, _, cb := rawConnect(t, e.addr, "", target)
	defer b.Close()
	a.Write([]byte("x"))
	b.Write([]byte("x"))
	e.waitMetric("balise_proxy_tunnels_active", map[string]string{"mode": "explicit"}, 2, 3*time.Second)
	c, _, cc := rawConnect(t, e.addr, "", target)
	c.Close()
	other, _, co := rawConnect(t, e.addr, "127.0.0.2", target)
	other.Close()
	if ca != 200 || cb != 200 || cc != http.StatusTooManyRequests || co != 200 {
		t.Fatalf("CONNECT codes = %d %d %d (other client %d), want 200 200 429 200", ca, cb, cc, co)
	}
	a.Close()
	e.waitMetric("balise_proxy_tunnels_active", map[string]string{"mode": "explicit"}, 1, 3*time.Second)
	d, _, cd := rawConnect(t, e.addr, "", target)
	d.Close()
	if cd != 200 {
		t.Errorf("CONNECT after one tunnel closed = %d, want 200", cd)
	}
	if got := e.metric("balise_proxy_refusals_total", map[string]string{"reason": "limit"}); got != 1 {
		t.Errorf("refusals{limit} = %v, want 1", got)
	}
}

func TestHeaderLimits(t *testing.T) {
	e := startEnv(t, testSpec(), func(o *Options) {
		o.HeaderTimeout = 300 * time.Millisecond
		o.MaxHeaderBytes = 2048
	})
	// Slowloris: headers never finish; the proxy hangs up.
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET http://unlisted.test/ HTTP/1.1\r\nHost: unlisted.test\r\nX-A: ")
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = io.ReadAll(c)
	if err != nil || time.Since(start) > 3*time.Second {
		t.Errorf("slow headers: connection not closed by header timeout (err %v after %v)", err, time.Since(start))
	}
	// Oversized headers.
	c2, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	fmt.Fprintf(c2, "GET http://unlisted.test/ HTTP/1.1\r\nHost: unlisted.test\r\nX-Big: %s\r\n\r\n", strings.Repeat("a", 8192))
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	n, _ := io.ReadFull(c2, buf[:12])
	if got := string(buf[:n]); got != "HTTP/1.1 431" {
		t.Errorf("oversized headers answer = %q, want HTTP/1.1 431", got)
	}
	// A tunnel whose client never sends its hello is closed after the
	// header timeout on port 443.
}

// TestNoGoroutineLeak opens tunnels, keep-alive connections and
// half-sent requests, lets the clients vanish, and checks that the
// proxy's goroutines go back to where they were.
func TestNoGoroutineLeak(t *testing.T) {
	_, _, port := originTLS(t)
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	_, eport, _ := net.SplitHostPort(echo.Addr().String())
	ca, roots := testCA(t)
	e := startEnv(t, testSpec(), func(o *Options) {
		o.ConnectPorts = []uint16{mustPort(t, port), mustPort(t, eport), 443}
		o.HeaderTimeout = 500 * time.Millisecond
		o.CA = ca
	})
	_, hport := originHTTP(t)
	// Warm up so lazily started goroutines (interceptor server, DNS) exist.
	if tc, _, err := tlsOverTunnel(t, e.addr, "", "social.test:443", "social.test", roots, false); err == nil {
		get(t, tc, "social.test", "/", "")
		tc.Close()
	}
	time.Sleep(200 * time.Millisecond)
	base := runtime.NumGoroutine()

	var conns []net.Conn
	for range 20 { // echo tunnels with traffic
		c, br, code := rawConnect(t, e.addr, "", "unlisted.test:"+eport)
		if code != 200 {
			t.Fatalf("CONNECT echo = %d", code)
		}
		c.Write([]byte("ping"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		io.ReadFull(br, make([]byte, 4))
		conns = append(conns, c)
	}
	for range 10 { // TLS tunnels to the origin
		tc, _, err := tlsOverTunnel(t, e.addr, "", "unlisted.test:"+port, "example.com", nil, true)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, tc)
	}
	for range 5 { // intercepted blocked connections
		tc, _, err := tlsOverTunnel(t, e.addr, "", "social.test:443", "social.test", roots, false)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, tc)
	}
	for range 5 { // CONNECTs that never send a hello
		c, _, _ := rawConnect(t, e.addr, "", "unlisted.test:"+port)
		conns = append(conns, c)
	}
	for range 5 { // half-sent requests
		c, _ := net.Dial("tcp", e.addr)
		io.WriteString(c, "GET http://unlisted.test:"+hport+"/ HTTP/1.1\r\n")
		conns = append(conns, c)
	}
	for range 5 { // keep-alive plain HTTP connections
		c, _ := net.Dial("tcp", e.addr)
		fmt.Fprintf(c, "GET http://unlisted.test:%s/ HTTP/1.1\r\nHost: unlisted.test:%s\r\n\r\n", hport, hport)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		http.ReadResponse(bufioReader(c), nil)
		conns = append(conns, c)
	}
	if n := runtime.NumGoroutine(); n < base+50 {
		t.Errorf("goroutines with 50 open connections = %d, base %d: the test is not exercising anything", n, base)
	}
	for _, c := range conns {
		c.Close()
	}
	e.p.origins.closeAll()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= base+2 {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("goroutines = %d after every client left, base %d\n%s", n, base, buf)
		}
		time.Sleep(50 * time.Millisecond)
		e.p.origins.closeAll()
	}
	if got := e.metric("balise_proxy_tunnels_active", map[string]string{"mode": "explicit"}); got != 0 {
		t.Errorf("tunnels_active = %v, want 0", got)
	}
}

func TestShutdownClosesTunnels(t *testing.T) {
	_, _, port := originTLS(t)
	e := startEnv(t, testSpec(), func(o *Options) { o.ConnectPorts = []uint16{mustPort(t, port)} })
	tc, _, err := tlsOverTunnel(t, e.addr, "", "unlisted.test:"+port, "example.com", nil, true)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	e.stop()
	tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := tc.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("tunnel read after shutdown = %v, want closed", err)
	}
	if got := e.metric("balise_proxy_tunnels_closed_total", map[string]string{"cause": "shutdown"}); got != 1 {
		t.Errorf("tunnels_closed{shutdown} = %v, want 1", got)
	}
}

// TestTunnelCapAfterRefusals checks that refused and intercepted tunnels
// give back exactly the slot they took.
func TestTunnelCapAfterRefusals(t *testing.T) {
	_, _, port := originTLS(t)
	ca, roots := testCA(t)
	for _, withCA := range []bool{false, true} {
		e := startEnv(t, testSpec(), func(o *Options) {
			o.ConnectPorts = []uint16{mustPort(t, port)}
			o.MaxTunnelsPerClient = 2
			if withCA {
				o.CA = ca
			}
		})
		target := "unlisted.test:" + port
		a, _, err := tlsOverTunnel(t, e.addr, "", target, "example.com", nil, true)
		if err != nil {
			t.Fatal(err)
		}
		// A tunnel refused (or intercepted) on its SNI, then closed.
		if b, _, err := tlsOverTunnel(t, e.addr, "", target, "social.test", roots, false); err == nil {
			b.Close()
		}
		time.Sleep(200 * time.Millisecond)
		c, _, err := tlsOverTunnel(t, e.addr, "", target, "example.com", nil, true)
		if err != nil {
			t.Fatal(err)
		}
		d, _, code := rawConnect(t, e.addr, "", target)
		d.Close()
		if code != http.StatusTooManyRequests {
			t.Errorf("ca=%v: third concurrent tunnel with a cap of 2 = %d, want 429", withCA, code)
		}
		a.Close()
		c.Close()
		e.stop()
	}
}
