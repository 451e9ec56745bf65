package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// startTransparent starts both transparent listeners; every connection's
// "original destination" is dst (the test's origin).
func startTransparent(t *testing.T, e *env) (httpAddr, httpsAddr string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var chans []<-chan error
	t.Cleanup(func() {
		cancel()
		for _, c := range chans {
			select {
			case err := <-c:
				if err != nil {
					t.Errorf("transparent listener: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("transparent listener did not stop")
			}
		}
	})
	lh, err := e.p.ListenTransparent(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ls, err := e.p.ListenTransparent(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	chans = append(chans, e.p.StartTransparentHTTP(ctx, lh), e.p.StartTransparentHTTPS(ctx, ls))
	return lh.Addr().String(), ls.Addr().String()
}

// dstMap makes the original destination depend on the listener port the
// connection arrived on.
type dstMap struct {
	mu sync.Mutex
	m  map[string]string
}

func (d *dstMap) set(listener, dst string) {
	_, port, _ := net.SplitHostPort(listener)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.m == nil {
		d.m = map[string]string{}
	}
	d.m[port] = dst
}

func (d *dstMap) hook(c net.Conn) (netip.AddrPort, error) {
	_, port, _ := net.SplitHostPort(c.LocalAddr().String())
	d.mu.Lock()
	dst := d.m[port]
	d.mu.Unlock()
	if dst == "" {
		return netip.AddrPort{}, fmt.Errorf("no destination for port %s", port)
	}
	return netip.ParseAddrPort(dst)
}

func TestTransparent(t *testing.T) {
	hsrv, _ := originHTTP(t)
	ssrv, roots, _ := originTLS(t)
	ca, caRoots := testCA(t)
	for _, withCA := range []bool{false, true} {
		t.Run(fmt.Sprintf("ca=%v", withCA), func(t *testing.T) {
			hdst, sdst := hsrv.Listener.Addr().String(), ssrv.Listener.Addr().String()
			dsts := &dstMap{}
			e := startEnv(t, testSpec(), func(o *Options) {
				o.OriginalDestination = dsts.hook
				if withCA {
					o.CA = ca
				}
			})
			ha, sa := startTransparent(t, e)
			dsts.set(ha, hdst)
			dsts.set(sa, sdst)

			// HTTP: decided on Host, forwarded to the original destination.
			get := func(host string) (int, string) {
				c, err := net.Dial("tcp", ha)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				fmt.Fprintf(c, "GET /t HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", host)
				resp, err := http.ReadResponse(bufioReader(c), nil)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				return resp.StatusCode, string(b)
			}
			if code, body := get("www.social.test"); code != 403 || !strings.Contains(body, "Social Test") {
				t.Errorf("transparent HTTP to a blocked host = %d", code)
			}
			if code, body := get("unlisted.test"); code != 200 || body != "origin:unlisted.test/t" {
				t.Errorf("transparent HTTP to an unlisted host = %d %q", code, body)
			}

			// HTTPS: decided on the SNI.
			dialTLS := func(sni string, roots *x509.CertPool) (*tls.Conn, error) {
				cfg := &tls.Config{ServerName: sni, RootCAs: roots, NextProtos: []string{"http/1.1"}}
				return tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", sa, cfg)
			}
			c, err := dialTLS("example.com", roots)
			if err != nil {
				t.Fatalf("transparent HTTPS to an unlisted name: %v", err)
			}
			resp, body := get2(t, c, "example.com")
			c.Close()
			if resp != 200 || body != "origin:/x" {
				t.Errorf("transparent HTTPS unlisted = %d %q", resp, body)
			}
			c, err = dialTLS("social.test", caRoots)
			if !withCA {
				if err == nil {
					c.Close()
					t.Errorf("transparent HTTPS to a blocked name without CA succeeded")
				}
			} else {
				if err != nil {
					t.Fatalf("transparent HTTPS blocked, CA trusted: %v", err)
				}
				code, body := get2(t, c, "social.test")
				c.Close()
				if code != 403 || !strings.Contains(body, "Social Test") {
					t.Errorf("transparent HTTPS blocked with CA = %d", code)
				}
			}
			for _, kind := range []string{"http", "connect"} {
				if got := e.metric("balise_proxy_requests_total", map[string]string{"mode": "transparent", "kind": kind, "verdict": "block"}); got != 1 {
					t.Errorf("requests{transparent,%s,block} = %v, want 1", kind, got)
				}
			}
		})
	}
}

func TestTransparentNoSNIAndClients(t *testing.T) {
	ssrv, _, _ := originTLS(t)
	sdst := ssrv.Listener.Addr().String()
	for _, deny := range []bool{false, true} {
		dsts := &dstMap{}
		e := startEnv(t, testSpec(), func(o *Options) {
			o.OriginalDestination = dsts.hook
			o.AllowNoSNI = !deny
		})
		_, sa := startTransparent(t, e)
		dsts.set(sa, sdst)
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", sa, &tls.Config{InsecureSkipVerify: true})
		if deny {
			if err == nil {
				c.Close()
				t.Errorf("no_sni=deny: a hello without SNI went through")
			}
			if got := e.metric("balise_proxy_requests_total", map[string]string{"mode": "transparent", "reason": "no_sni"}); got != 1 {
				t.Errorf("requests{no_sni} = %v, want 1", got)
			}
			if got := e.metric("balise_proxy_refusals_total", map[string]string{"mode": "transparent", "reason": "no_sni"}); got != 1 {
				t.Errorf("refusals{transparent,no_sni} = %v, want 1", got)
			}
		} else {
			if err != nil {
				t.Errorf("no_sni=allow: %v", err)
			} else {
				c.Close()
			}
		}
		e.stop()
	}
	// allowed_clients applies to transparent listeners too.
	dsts := &dstMap{}
	e := startEnv(t, testSpec(), func(o *Options) {
		o.OriginalDestination = dsts.hook
		o.AllowedClients = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	})
	_, sa := startTransparent(t, e)
	dsts.set(sa, sdst)
	if c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", sa, &tls.Config{InsecureSkipVerify: true}); err == nil {
		c.Close()
		t.Errorf("transparent HTTPS from a client outside allowed_clients succeeded")
	}
	if got := e.metric("balise_proxy_refusals_total", map[string]string{"mode": "transparent", "reason": "client"}); got != 1 {
		t.Errorf("refusals{transparent,client} = %v, want 1", got)
	}
}

func get2(t *testing.T, c net.Conn, host string) (int, string) {
	t.Helper()
	resp, body := get(t, c, host, "/x", "")
	return resp.StatusCode, body
}

// A CONNECT sent to the transparent HTTP port is refused (405), even to a
// destination the proxy may reach: redirected port-80 traffic is plain
// HTTP, and a tunnel opened there would carry bytes no ClientHello was
// read for. The origin is never dialled.
func TestTransparentHTTPRefusesConnect(t *testing.T) {
	addr, conns := countingOrigin(t, "127.0.0.1:0")
	dsts := &dstMap{}
	e := startEnv(t, testSpec(), func(o *Options) { o.OriginalDestination = dsts.hook })
	ha, _ := startTransparent(t, e)
	dsts.set(ha, addr.String())
	c, _, code := rawConnect(t, ha, "", "unlisted.test:443")
	c.Close()
	if code != http.StatusMethodNotAllowed {
		t.Errorf("CONNECT on the transparent HTTP port = %d, want 405", code)
	}
	if n := conns.Load(); n != 0 {
		t.Errorf("the origin saw %d connections, want 0", n)
	}
	// Plain HTTP on the same port still reaches the allowed origin.
	hc, err := net.Dial("tcp", ha)
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	hc.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(hc, "GET / HTTP/1.1\r\nHost: unlisted.test\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(hc), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("plain HTTP on the transparent port = %v %v, want 200", resp, err)
	}
}
