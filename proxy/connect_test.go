package proxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/balise-net/balise/internal/policy"
)

func testCA(t *testing.T) (*CA, *x509.CertPool) {
	t.Helper()
	certPEM, keyPEM, err := NewCA("Balise test CA", time.Hour*24*30)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := ParseCA(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	return ca, pool
}

// tlsOverTunnel opens a CONNECT tunnel from "from" and starts TLS with sni.
func tlsOverTunnel(t *testing.T, proxyAddr, from, target, sni string, roots *x509.CertPool, insecure bool) (*tls.Conn, int, error) {
	t.Helper()
	c, br, code := rawConnect(t, proxyAddr, from, target)
	if code != 200 {
		c.Close()
		return nil, code, nil
	}
	if br.Buffered() > 0 {
		t.Fatalf("bytes after the CONNECT response")
	}
	tc := tls.Client(c, &tls.Config{ServerName: sni, RootCAs: roots, InsecureSkipVerify: insecure, NextProtos: []string{"http/1.1"}})
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		tc.Close()
		return nil, code, err
	}
	tc.SetDeadline(time.Time{})
	return tc, code, nil
}

// get sends one HTTP/1.1 request over an open connection.
func get(t *testing.T, c net.Conn, host, path, lang string) (*http.Response, string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	req, _ := http.NewRequest("GET", "https://"+host+path, nil)
	if lang != "" {
		req.Header.Set("Accept-Language", lang)
	}
	if err := req.Write(c); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufioReader(c), req)
	if err != nil {
		t.Fatalf("reading response: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	c.SetDeadline(time.Time{})
	return resp, string(b)
}

func TestConnectAllowed(t *testing.T) {
	_, roots, port := originTLS(t)
	e := startEnv(t, testSpec(), func(o *Options) { o.ConnectPorts = []uint16{mustPort(t, port)} })
	resp, err := e.client(roots, "example.com").Get("https://unlisted.test:" + port + "/hello")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "origin:/hello" {
		t.Fatalf("GET through tunnel = %d %q, want 200 origin:/hello", resp.StatusCode, body)
	}
	e.waitMetric("balise_proxy_tunnels_active", map[string]string{"mode": "explicit"}, 0, 5*time.Second)
	// The client hangs up after its answer: a clean close, or a reset.
	if n := e.metric("balise_proxy_tunnels_closed_total", map[string]string{"cause": "closed"}) +
		e.metric("balise_proxy_tunnels_closed_total", map[string]string{"cause": "error"}); n != 1 {
		t.Errorf("tunnels_closed{closed|error} = %v, want 1", n)
	}
	if up := e.metric("balise_proxy_tunnel_bytes_total", map[string]string{"direction": "upstream"}); up < 100 {
		t.Errorf("upstream tunnel bytes = %v, want the hello and request", up)
	}
	if down := e.metric("balise_proxy_tunnel_bytes_total", map[string]string{"direction": "downstream"}); down < 100 {
		t.Errorf("downstream tunnel bytes = %v, want the origin's answer", down)
	}
	if got := e.metric("balise_proxy_requests_total", map[string]string{"kind": "connect", "verdict": "allow", "reason": "unlisted"}); got != 1 {
		t.Errorf("requests{connect,allow,unlisted} = %v, want 1", got)
	}
	if got := e.metric("balise_proxy_tunnels_active", map[string]string{"mode": "explicit"}); got != 0 {
		t.Errorf("tunnels_active = %v after close, want 0", got)
	}
}

func TestConnectBlockedWithoutCA(t *testing.T) {
	e := startEnv(t, testSpec(), nil)
	c, br, code := rawConnect(t, e.addr, "", "www.social.test:443")
	defer c.Close()
	_ = br
	if code != 403 {
		t.Fatalf("CONNECT blocked = %d, want 403", code)
	}
	// Re-issue to read the header (rawConnect consumed the response).
	c2, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	fmt.Fprintf(c2, "CONNECT social.test:443 HTTP/1.1\r\nHost: social.test:443\r\n\r\n")
	resp, err := http.ReadResponse(bufioReader(c2), &http.Request{Method: "CONNECT"})
	if err != nil {
		t.Fatal(err)
	}
	ps := resp.Header.Get("Proxy-Status")
	if !strings.HasPrefix(ps, "balise; error=http_request_denied") || !strings.Contains(ps, "Social Test") {
		t.Errorf("Proxy-Status = %q, want balise; error=http_request_denied naming Social Test", ps)
	}
	if got := e.metric("balise_proxy_requests_total", map[string]string{"kind": "connect", "verdict": "block", "reason": "default"}); got != 2 {
		t.Errorf("requests{connect,block,default} = %v, want 2", got)
	}
}

func TestConnectBlockedWithCA(t *testing.T) {
	ca, roots := testCA(t)
	exc := &fakeExceptions{}
	e := startEnv(t, testSpec(), func(o *Options) {
		o.CA = ca
		o.LeafValidity = 2 * time.Hour
		o.Exceptions = exc
	})
	for i := range 2 {
		tc, code, err := tlsOverTunnel(t, e.addr, "", "www.social.test:443", "www.social.test", roots, false)
		if err != nil || code != 200 {
			t.Fatalf("TLS to blocked host with the CA trusted: code %d, err %v", code, err)
		}
		leaf := tc.ConnectionState().PeerCertificates[0]
		if k, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
			t.Errorf("leaf key %T, want ECDSA P-256", leaf.PublicKey)
		}
		if life := leaf.NotAfter.Sub(leaf.NotBefore); life > 3*time.Hour+time.Minute {
			t.Errorf("leaf validity %v, want about 2h (+1h backdating)", life)
		}
		resp, body := get(t, tc, "www.social.test", "/some/page", "en")
		if resp.StatusCode != 403 || !strings.Contains(body, "Social Test") {
			t.Errorf("request %d inside intercepted TLS = %d, want 403 block page", i, resp.StatusCode)
		}
		checkBlockPage(t, resp.Header, body, "en")
		// Every request inside gets the block page; /.balise/ goes to the register.
		resp, body = get(t, tc, "www.social.test", "/.balise/request", "")
		if body != "register:GET /.balise/request" {
			t.Errorf("/.balise/ inside intercepted TLS = %d %q", resp.StatusCode, body)
		}
		tc.Close()
	}
	if got := e.metric("balise_proxy_interceptions_total", nil); got != 2 {
		t.Errorf("interceptions = %v, want 2", got)
	}
	if hits, misses := e.metric("balise_proxy_cert_cache_hits_total", nil), e.metric("balise_proxy_cert_cache_misses_total", nil); hits != 1 || misses != 1 {
		t.Errorf("cert cache hits/misses = %v/%v, want 1/1", hits, misses)
	}
	if calls := exc.calls(); len(calls) != 2 || calls[0] != "127.0.0.1" {
		t.Errorf("register RemoteAddr = %q, want the client address", calls)
	}
}

func TestSNIBlockedBehindAllowedConnect(t *testing.T) {
	_, _, port := originTLS(t)
	ca, roots := testCA(t)
	for _, withCA := range []bool{false, true} {
		t.Run(fmt.Sprintf("ca=%v", withCA), func(t *testing.T) {
			e := startEnv(t, testSpec(), func(o *Options) {
				o.ConnectPorts = []uint16{mustPort(t, port)}
				if withCA {
					o.CA = ca
				}
			})
			for _, target := range []string{"unlisted.test:" + port, "127.0.0.1:" + port} {
				tc, code, err := tlsOverTunnel(t, e.addr, "", target, "social.test", roots, false)
				if code != 200 {
					t.Fatalf("CONNECT %s = %d, want 200 (decided on the name later)", target, code)
				}
				if !withCA {
					if err == nil {
						tc.Close()
						t.Fatalf("TLS with a blocked SNI behind CONNECT %s succeeded, want refused", target)
					}
					continue
				}
				if err != nil {
					t.Fatalf("TLS with blocked SNI, CA trusted: %v", err)
				}
				resp, body := get(t, tc, "social.test", "/", "")
				tc.Close()
				if resp.StatusCode != 403 || !strings.Contains(body, "Social Test") {
					t.Errorf("blocked SNI behind CONNECT %s = %d, want the block page", target, resp.StatusCode)
				}
			}
			if got := e.metric("balise_proxy_sni_mismatch_total", map[string]string{"mode": "explicit"}); got != 2 {
				t.Errorf("sni_mismatch = %v, want 2", got)
			}
			// The authorized group reaches the same name.
			tc, _, err := tlsOverTunnel(t, e.addr, "127.0.0.2", "unlisted.test:"+port, "social.test", nil, true)
			if err != nil {
				t.Fatalf("authorized client with listed SNI: %v", err)
			}
			resp, body := get(t, tc, "social.test", "/ok", "")
			tc.Close()
			if resp.StatusCode != 200 || body != "origin:/ok" {
				t.Errorf("authorized client through SNI check = %d %q", resp.StatusCode, body)
			}
		})
	}
}

func TestConnectPorts(t *testing.T) {
	e := startEnv(t, testSpec(), nil)
	for _, target := range []string{"unlisted.test:8443", "unlisted.test:22", "unlisted.test:80"} {
		c, _, code := rawConnect(t, e.addr, "", target)
		c.Close()
		if code != 403 {
			t.Errorf("CONNECT %s with connect_ports=[443] = %d, want 403", target, code)
		}
	}
	if got := e.metric("balise_proxy_refusals_total", map[string]string{"reason": "port"}); got != 3 {
		t.Errorf("refusals{port} = %v, want 3", got)
	}
}

func TestIPLiterals(t *testing.T) {
	_, roots, port := originTLS(t)
	target := "127.0.0.1:" + port
	for _, mode := range []IPLiteralMode{IPLiteralsSNI, IPLiteralsAllow, IPLiteralsDeny} {
		e := startEnv(t, testSpec(), func(o *Options) {
			o.ConnectPorts = []uint16{mustPort(t, port)}
			o.IPLiterals = mode
		})
		tc, code, err := tlsOverTunnel(t, e.addr, "", target, "example.com", roots, false)
		if code != 200 {
			t.Fatalf("mode %d: CONNECT IP literal = %d, want 200", mode, code)
		}
		refused := func(reason string, want float64) {
			t.Helper()
			if got := e.metric("balise_proxy_refusals_total", map[string]string{"mode": "explicit", "reason": reason}); got != want {
				t.Errorf("mode %d: refusals{%s} = %v, want %v", mode, reason, got, want)
			}
		}
		switch mode {
		case IPLiteralsDeny:
			if err == nil {
				tc.Close()
				t.Errorf("ip_literals=deny: TLS to an IP literal with an unlisted SNI succeeded")
			}
			if got := e.metric("balise_proxy_requests_total", map[string]string{"kind": "connect", "verdict": "block", "reason": "ip_literal"}); got != 1 {
				t.Errorf("requests{block,ip_literal} = %v, want 1", got)
			}
			refused("ip_literal", 1)
			// A listed, allowed SNI passes even to an IP literal.
			tc, _, err = tlsOverTunnel(t, e.addr, "127.0.0.2", target, "social.test", nil, true)
			if err != nil {
				t.Errorf("ip_literals=deny, allowed listed SNI: %v", err)
			} else {
				tc.Close()
			}
		default:
			// sni and allow: a server name is decided like any host.
			if err != nil {
				t.Fatalf("mode %d: IP literal with an unlisted SNI: %v", mode, err)
			}
			resp, _ := get(t, tc, "example.com", "/", "")
			tc.Close()
			if resp.StatusCode != 200 {
				t.Errorf("mode %d: status %d", mode, resp.StatusCode)
			}
			// A blocked SNI is blocked behind an IP literal.
			if tc, _, err := tlsOverTunnel(t, e.addr, "", target, "social.test", nil, true); err == nil {
				tc.Close()
				t.Errorf("mode %d: a blocked SNI went through to an IP literal", mode)
			}
		}
		// No server name at all: refused under sni and deny (ip_literal),
		// under allow by no_sni = "deny".
		if tc, _, err := tlsOverTunnel(t, e.addr, "", target, "", nil, true); err == nil {
			tc.Close()
			t.Errorf("mode %d: a hello without SNI to an IP literal went through", mode)
		}
		switch mode {
		case IPLiteralsAllow:
			refused("no_sni", 1)
			refused("ip_literal", 0)
		case IPLiteralsSNI:
			refused("ip_literal", 1)
			refused("no_sni", 0)
		}
		e.stop()
	}
	// ip_literals = "allow" with no_sni = "allow": decided on the address.
	e := startEnv(t, testSpec(), func(o *Options) {
		o.ConnectPorts = []uint16{mustPort(t, port)}
		o.IPLiterals = IPLiteralsAllow
		o.AllowNoSNI = true
	})
	defer e.stop()
	tc, _, err := tlsOverTunnel(t, e.addr, "", target, "", nil, true)
	if err != nil {
		t.Fatalf("ip_literals=allow, no_sni=allow, no SNI: %v", err)
	}
	tc.Close()
}

func TestDialFailure(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	ln.Close()
	e := startEnv(t, testSpec(), func(o *Options) { o.ConnectPorts = []uint16{mustPort(t, port)} })
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "CONNECT unlisted.test:%s HTTP/1.1\r\nHost: x\r\n\r\n", port)
	resp, err := http.ReadResponse(bufioReader(c), &http.Request{Method: "CONNECT"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 502 || !strings.Contains(resp.Header.Get("Proxy-Status"), "connection_refused") {
		t.Errorf("CONNECT to a closed port = %d %q, want 502 connection_refused", resp.StatusCode, resp.Header.Get("Proxy-Status"))
	}
}

// TestPipelinedClientHello sends the ClientHello in the same write as the
// CONNECT: the bytes buffered by the HTTP server must still be checked.
func TestPipelinedClientHello(t *testing.T) {
	_, _, port := originTLS(t)
	e := startEnv(t, testSpec(), func(o *Options) { o.ConnectPorts = []uint16{mustPort(t, port)} })
	hello := captureHello(t, &tls.Config{ServerName: "social.test"})
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	msg := fmt.Sprintf("CONNECT unlisted.test:%s HTTP/1.1\r\nHost: x\r\n\r\n", port)
	c.Write(append([]byte(msg), hello...))
	all, _ := io.ReadAll(c)
	if !strings.HasPrefix(string(all), "HTTP/1.1 200") || !strings.HasSuffix(string(all), string(tlsAccessDenied)) {
		t.Errorf("pipelined hello with blocked SNI: got %q, want 200 then a TLS access_denied alert", all)
	}
}

func TestTunnelClosesAtUntil(t *testing.T) {
	_, _, port := originTLS(t)
	now := time.Now().UTC()
	hms := func(t time.Time) string { return t.Format("15:04:05") }
	// Break 1 ends in 2 s. Break 2 is made of two adjacent windows: the
	// tunnel must survive the edge between them.
	w1, err := policy.ParseWindow("daily " + hms(now.Add(-time.Minute)) + "-" + hms(now.Add(2*time.Second)))
	if err != nil {
		t.Fatal(err)
	}
	spec := testSpec()
	spec.Schedules = []policy.Schedule{{Name: "short", Windows: []policy.Window{w1}}}
	spec.Rules = append(spec.Rules, policy.Rule{Name: "short", Groups: []string{"*"}, Services: []string{"social"}, During: []string{"short"}, Action: policy.Allow})
	w2a, _ := policy.ParseWindow("daily " + hms(now.Add(-time.Minute)) + "-" + hms(now.Add(time.Second)))
	w2b, _ := policy.ParseWindow("daily " + hms(now.Add(time.Second)) + "-" + hms(now.Add(time.Hour)))
	spec.Schedules = append(spec.Schedules, policy.Schedule{Name: "long", Windows: []policy.Window{w2a, w2b}})
	spec.Rules = append(spec.Rules, policy.Rule{Name: "long", Groups: []string{"*"}, Services: []string{"other"}, During: []string{"long"}, Action: policy.Allow})
	if now.Add(time.Hour).Day() != now.Day() {
		t.Skip("windows would cross midnight")
	}
	e := startEnv(t, spec, func(o *Options) { o.ConnectPorts = []uint16{mustPort(t, port)} })
	short, _, err := tlsOverTunnel(t, e.addr, "", "social.test:"+port, "example.com", nil, true)
	if err != nil {
		t.Fatalf("tunnel during the break: %v", err)
	}
	defer short.Close()
	long, _, err := tlsOverTunnel(t, e.addr, "", "other.test:"+port, "example.com", nil, true)
	if err != nil {
		t.Fatalf("tunnel during the long break: %v", err)
	}
	defer long.Close()
	start := time.Now()
	short.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = short.Read(make([]byte, 1))
	if err == nil || isTimeout(err) {
		t.Fatalf("tunnel read after the break = %v, want closed", err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("tunnel closed %v after opening, want about 2s", el)
	}
	e.waitMetric("balise_proxy_tunnels_closed_total", map[string]string{"cause": "until"}, 1, 2*time.Second)
	time.Sleep(500 * time.Millisecond)
	resp, body := get(t, long, "example.com", "/still", "")
	if resp.StatusCode != 200 || body != "origin:/still" {
		t.Errorf("tunnel across adjacent windows = %d %q, want still open", resp.StatusCode, body)
	}
}

func TestIdleTimeoutAndHalfClose(t *testing.T) {
	// An origin that answers after the client has finished sending.
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
			go func() {
				defer c.Close()
				b, _ := io.ReadAll(c)
				fmt.Fprintf(c, "got:%d", len(b))
			}()
		}
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	e := startEnv(t, testSpec(), func(o *Options) {
		o.ConnectPorts = []uint16{mustPort(t, port)}
		o.OpaquePorts = o.ConnectPorts // the origin does not speak TLS
		o.IdleTimeout = time.Second
	})
	// Half-close: the answer still comes back after CloseWrite.
	c, br, code := rawConnect(t, e.addr, "", "unlisted.test:"+port)
	if code != 200 {
		t.Fatalf("CONNECT = %d", code)
	}
	c.Write([]byte("hello world"))
	c.(*net.TCPConn).CloseWrite()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	ans, _ := io.ReadAll(br)
	c.Close()
	if string(ans) != "got:11" {
		t.Errorf("answer after half-close = %q, want got:11", ans)
	}
	// Idle: a tunnel with traffic lives on, a silent one is closed.
	busy, _, _ := rawConnect(t, e.addr, "", "unlisted.test:"+port)
	defer busy.Close()
	quiet, _, _ := rawConnect(t, e.addr, "", "unlisted.test:"+port)
	defer quiet.Close()
	busy.Write([]byte("x")) // non-TLS first bytes
	quiet.Write([]byte("y"))
	for range 20 {
		time.Sleep(100 * time.Millisecond)
		if _, err := busy.Write([]byte("x")); err != nil {
			t.Fatalf("busy tunnel closed: %v", err)
		}
	}
	quiet.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := quiet.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("quiet tunnel read = %v, want closed by idle timeout", err)
	}
	e.waitMetric("balise_proxy_tunnels_closed_total", map[string]string{"cause": "idle"}, 1, 2*time.Second)
}

func TestIPv6(t *testing.T) {
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skip("no IPv6 loopback")
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "v6") })}
	go srv.Serve(ln)
	defer srv.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	e := startEnv(t, testSpec(), func(o *Options) {
		o.ConnectPorts = []uint16{mustPort(t, port)}
		o.OpaquePorts = o.ConnectPorts // plain HTTP through the tunnel: decided on the address
	})
	// The proxy listens on 127.0.0.1 in startEnv; reach a v6 origin both
	// as plain HTTP and through a CONNECT to an IPv6 literal.
	resp, err := e.client(nil, "").Get("http://[::1]:" + port + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "v6" {
		t.Errorf("GET http://[::1] through the proxy = %q", body)
	}
	c, br, code := rawConnect(t, e.addr, "", "[::1]:"+port)
	defer c.Close()
	if code != 200 {
		t.Fatalf("CONNECT [::1]:%s = %d", port, code)
	}
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	if string(body) != "v6" {
		t.Errorf("GET through CONNECT [::1] = %q", body)
	}
	// A client on ::1 is in the default allowed_clients.
	v6ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go e.p.Serve(ctx, v6ln)
	c6, br6, code6 := rawConnect(t, v6ln.Addr().String(), "", "[::1]:"+port)
	defer c6.Close()
	_ = br6
	if code6 != 200 {
		t.Errorf("CONNECT from ::1 = %d, want 200", code6)
	}
}
