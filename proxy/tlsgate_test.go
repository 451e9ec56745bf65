package proxy

import (
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// bannerServer speaks first: it writes a banner, then echoes.
func bannerServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.WriteString(c, "220 banner\r\n")
				io.Copy(c, c)
			}()
		}
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}

// readAll reads until the connection closes or within passes; closed is
// false on a timeout.
func readAll(c net.Conn, within time.Duration) (got []byte, closed bool) {
	c.SetReadDeadline(time.Now().Add(within))
	got, err := io.ReadAll(c)
	return got, !isTimeout(err)
}

// TestTLSGate: on a CONNECT port that is not opaque, what is not a
// ClientHello Balise reads is closed and counted; on an opaque port a
// server-speaks-first protocol passes.
func TestTLSGate(t *testing.T) {
	_, _, tlsPort := originTLS(t)
	opaque, notOpaque := bannerServer(t), bannerServer(t)
	e := startEnv(t, testSpec(), func(o *Options) {
		o.ConnectPorts = []uint16{mustPort(t, tlsPort), mustPort(t, opaque), mustPort(t, notOpaque)}
		o.OpaquePorts = []uint16{mustPort(t, opaque)}
		o.HeaderTimeout = 500 * time.Millisecond
	})
	refusals := func(reason string) float64 {
		return e.metric("balise_proxy_refusals_total", map[string]string{"mode": "explicit", "reason": reason})
	}

	// Opaque: the banner comes through with nothing sent.
	c, br, code := rawConnect(t, e.addr, "", "mail.test:"+opaque)
	if code != 200 {
		t.Fatalf("CONNECT opaque = %d", code)
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if line, err := br.ReadString('\n'); err != nil || line != "220 banner\r\n" {
		t.Errorf("banner through an opaque port = %q, %v", line, err)
	}
	c.Close()

	// Not opaque: silence until header_timeout is closed, the banner
	// never reaches the client.
	c, br, _ = rawConnect(t, e.addr, "", "mail.test:"+notOpaque)
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	got, err := io.ReadAll(br)
	c.Close()
	if len(got) > 0 || isTimeout(err) || time.Since(start) > 2*time.Second {
		t.Errorf("silent client on a TLS port: got %q, %v after %v; want closed at header_timeout", got, err, time.Since(start))
	}
	if got := refusals("silent"); got != 1 {
		t.Errorf("refusals{silent} = %v, want 1", got)
	}

	// Not TLS, and unreadable hellos, to a TLS origin.
	hello := captureHello(t, &tls.Config{ServerName: "social.test"})
	for i, data := range [][]byte{
		[]byte("GET / HTTP/1.1\r\nHost: social.test\r\n\r\n"),
		append([]byte{22, 2, 0}, hello[3:]...),
		concat(record(20, 3, []byte{1}), hello),
		hello[:len(hello)-1],
	} {
		c, _, _ := rawConnect(t, e.addr, "", "unlisted.test:"+tlsPort)
		c.Write(data)
		got, closed := readAll(c, 3*time.Second)
		c.Close()
		if !closed || (len(got) > 0 && got[0] != 21) {
			t.Errorf("flight %d: got %.40q, closed %v; want closed, at most an alert", i, got, closed)
		}
		if got := refusals("not_tls"); got != float64(i+1) {
			t.Errorf("flight %d: refusals{not_tls} = %v, want %d", i, got, i+1)
		}
	}
	if !strings.Contains(e.logs.String(), "reason=not_tls") || !strings.Contains(e.logs.String(), "reason=silent") {
		t.Errorf("refusals not logged:\n%s", e.logs.String())
	}
	// A readable hello still passes.
	tc, code, err := tlsOverTunnel(t, e.addr, "", "unlisted.test:"+tlsPort, "unlisted.test", nil, true)
	if code != 200 || err != nil {
		t.Fatalf("allowed TLS tunnel = %d, %v", code, err)
	}
	tc.Close()
}

// TestTransparentTLSGate: the transparent HTTPS listener refuses what is
// not a ClientHello it reads, and silence.
func TestTransparentTLSGate(t *testing.T) {
	ssrv, _, _ := originTLS(t)
	dsts := &dstMap{}
	e := startEnv(t, testSpec(), func(o *Options) {
		o.OriginalDestination = dsts.hook
		o.HeaderTimeout = 500 * time.Millisecond
	})
	_, sa := startTransparent(t, e)
	dsts.set(sa, ssrv.Listener.Addr().String())
	refusals := func(reason string) float64 {
		return e.metric("balise_proxy_refusals_total", map[string]string{"mode": "transparent", "reason": reason})
	}
	for _, data := range [][]byte{[]byte("SSH-2.0-x\r\n"), nil} {
		c, err := net.Dial("tcp", sa)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(data)
		got, closed := readAll(c, 3*time.Second)
		c.Close()
		if !closed || len(got) > 0 {
			t.Errorf("transparent %q: got %q, closed %v; want closed", data, got, closed)
		}
	}
	if refusals("not_tls") != 1 || refusals("silent") != 1 {
		t.Errorf("refusals{not_tls, silent} = %v, %v; want 1, 1", refusals("not_tls"), refusals("silent"))
	}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", sa, &tls.Config{ServerName: "unlisted.test", InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("transparent TLS with SNI: %v", err)
	}
	c.Close()
}
