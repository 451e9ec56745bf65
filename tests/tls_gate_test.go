package tests

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The TLS gate, end to end: on every CONNECT port that is not opaque the
// client's first bytes must be a ClientHello Balise reads; anything else
// is closed, counted and logged. Positive controls show real clients and
// a server-speaks-first protocol on an opaque port still pass.

// tgHello returns the first flight a crypto/tls client sends for name.
func tgHello(t *testing.T, name string) []byte {
	t.Helper()
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	go func() {
		tc := tls.Client(c1, &tls.Config{ServerName: name, InsecureSkipVerify: true})
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		tc.Handshake()
	}()
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(c2, hdr); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	if _, err := io.ReadFull(c2, body); err != nil {
		t.Fatal(err)
	}
	return append(hdr, body...)
}

// tgSNI rewrites a single-record hello's server_name extension body to
// sni (lengths of the extensions, message and record fixed up).
func tgSNI(t *testing.T, rec []byte, sni []byte) []byte {
	t.Helper()
	msg := rec[5:]
	body := msg[4:]
	i := 2 + 32
	i += 1 + int(body[i])
	i += 2 + (int(body[i])<<8 | int(body[i+1]))
	i += 1 + int(body[i])
	fixed, exts := body[:i], body[i+2:]
	var out []byte
	for len(exts) >= 4 {
		typ, n := int(exts[0])<<8|int(exts[1]), int(exts[2])<<8|int(exts[3])
		data := exts[4 : 4+n]
		if typ == 0 {
			data = sni
		}
		out = append(out, byte(typ>>8), byte(typ), byte(len(data)>>8), byte(len(data)))
		out = append(out, data...)
		exts = exts[4+n:]
	}
	nb := append(append(append([]byte(nil), fixed...), byte(len(out)>>8), byte(len(out))), out...)
	nm := append([]byte{1, byte(len(nb) >> 16), byte(len(nb) >> 8), byte(len(nb))}, nb...)
	return append([]byte{22, 3, 1, byte(len(nm) >> 8), byte(len(nm))}, nm...)
}

// tgSNIList builds a server_name body from (type, name) pairs.
func tgSNIList(entries ...any) []byte {
	var list []byte
	for i := 0; i+1 < len(entries); i += 2 {
		name := entries[i+1].(string)
		list = append(list, byte(entries[i].(int)), byte(len(name)>>8), byte(len(name)))
		list = append(list, name...)
	}
	return append([]byte{byte(len(list) >> 8), byte(len(list))}, list...)
}

// tgConnect opens a CONNECT tunnel through the proxy and returns the
// connection after the 200.
func tgConnect(t *testing.T, proxy, target string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", proxy, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	// Read the response byte by byte so nothing after it is consumed.
	var head []byte
	b := make([]byte, 1)
	for !bytes.HasSuffix(head, []byte("\r\n\r\n")) {
		if _, err := c.Read(b); err != nil {
			t.Fatalf("CONNECT %s: %v (read %q)", target, err, head)
		}
		head = append(head, b[0])
	}
	if !bytes.HasPrefix(head, []byte("HTTP/1.1 200")) {
		t.Fatalf("CONNECT %s = %q, want 200", target, head)
	}
	c.SetReadDeadline(time.Time{})
	return c
}

// tgAnswer sends data (if any) and returns what comes back until the
// connection is closed or within seconds.
func tgAnswer(c net.Conn, data []byte, within time.Duration) (answer []byte, closed bool) {
	if len(data) > 0 {
		c.Write(data)
	}
	c.SetReadDeadline(time.Now().Add(within))
	var buf bytes.Buffer
	_, err := buf.ReadFrom(c)
	c.Close()
	ne, ok := err.(net.Error)
	return buf.Bytes(), !(ok && ne.Timeout())
}

// tgBanner serves a server-speaks-first protocol: it writes a banner on
// every connection, then echoes.
func tgBanner(t *testing.T) string {
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
				io.WriteString(c, "220 banner.test ESMTP\r\n")
				io.Copy(c, c)
			}()
		}
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}

// tgOpenSSLServer starts `openssl s_server` on a free port of 127.0.0.1
// and returns the port.
func tgOpenSSLServer(t *testing.T, bin string) string {
	t.Helper()
	dir := t.TempDir()
	gen := exec.Command(bin, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-keyout", filepath.Join(dir, "k.pem"), "-out", filepath.Join(dir, "c.pem"), "-subj", "/CN=gate.test", "-days", "1")
	if out, err := gen.CombinedOutput(); err != nil {
		t.Fatalf("openssl req: %v\n%s", err, out)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "s_server", "-accept", addr, "-www",
		"-cert", filepath.Join(dir, "c.pem"), "-key", filepath.Join(dir, "k.pem"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); cmd.Wait() })
	for i := 0; ; i++ {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			break
		}
		if i == 100 {
			t.Fatalf("openssl s_server did not listen on %s", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	_, port, _ := net.SplitHostPort(addr)
	return port
}

// tgSClient runs openssl s_client through the proxy and reports whether
// the handshake completed.
func tgSClient(t *testing.T, bin, proxy, connect string, args ...string) (bool, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	all := append([]string{"s_client", "-proxy", proxy, "-connect", connect, "-brief"}, args...)
	cmd := exec.CommandContext(ctx, bin, all...)
	cmd.Stdin = strings.NewReader("")
	out, _ := cmd.CombinedOutput()
	return strings.Contains(string(out), "CONNECTION ESTABLISHED"), string(out)
}

func TestTLSGate(t *testing.T) {
	openssl := requireTool(t, "openssl")
	requireTool(t, "curl")
	_, goTLS := pxOrigins(t)
	sslPort := tgOpenSSLServer(t, openssl)
	opaque, speaksFirst := tgBanner(t), tgBanner(t)
	cfg := pxConfig(pxDNS(t), goTLS, fmt.Sprintf(`connect_ports = [443, %s, %s, %s, %s]
opaque_ports = [%s]
header_timeout = "2s"`, goTLS, sslPort, opaque, speaksFirst, opaque), "")
	// pxConfig already sets connect_ports: keep the second one.
	cfg = strings.Replace(cfg, "connect_ports = [443, "+goTLS+"]\n", "", 1)
	in := startBalise(t, cfg)
	px := pxRequireProxy(t, in)

	refusals := func(reason string) float64 {
		v, _ := in.MetricValue("balise_proxy_refusals_total", "mode=explicit", "reason="+reason)
		return v
	}
	// expect checks that reason went up by one within a few seconds and a
	// rate-bounded refusal line was logged for it.
	expect := func(t *testing.T, reason string, before float64, from int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for refusals(reason) != before+1 {
			if time.Now().After(deadline) {
				t.Fatalf("refusals{explicit,%s} = %v, want %v", reason, refusals(reason), before+1)
			}
			time.Sleep(50 * time.Millisecond)
		}
		in.WaitLog(from, 5*time.Second, func(l logLine) bool { return l.Msg() == "refused" && l.Str("reason") == reason })
	}
	serverHello := func(b []byte) bool { return len(b) > 5 && b[0] == 22 && b[5] == 2 }

	t.Run("positive controls", func(t *testing.T) {
		code, out, errs := pxCurl(t, "-x", "http://"+px, "-k", "-w", "\n%{http_code}", "https://ok.test:"+goTLS+"/tls")
		if status, body := pxStatus(out); code != 0 || status != "200" || body != "origin /tls" {
			t.Errorf("curl with SNI to a Go TLS origin = exit %d %s %q %s", code, status, body, errs)
		}
		if ok, out := tgSClient(t, openssl, px, "ok.test:"+sslPort, "-servername", "ok.test"); !ok {
			t.Errorf("openssl s_client with SNI to openssl s_server failed:\n%s", out)
		}
		// Under ip_literals = "sni", an IP literal with a server name is
		// decided on that name.
		if ok, out := tgSClient(t, openssl, px, "127.0.0.1:"+sslPort, "-servername", "ok.test"); !ok {
			t.Errorf("openssl s_client to an IP literal with SNI failed:\n%s", out)
		}
	})
	t.Run("opaque port carries a server-speaks-first protocol", func(t *testing.T) {
		c := tgConnect(t, px, "mail.test:"+opaque)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		line := make([]byte, 64)
		n, err := c.Read(line)
		if err != nil || !strings.HasPrefix(string(line[:n]), "220 banner.test") {
			t.Errorf("banner through an opaque port = %q, %v", line[:n], err)
		}
		c.Write([]byte("EHLO x\r\n"))
		n, _ = io.ReadAtLeast(c, line, 8)
		if string(line[:n]) != "EHLO x\r\n" {
			t.Errorf("echo through an opaque port = %q", line[:n])
		}
		c.Close()
	})
	t.Run("silence on a TLS port is closed at header_timeout", func(t *testing.T) {
		before, from := refusals("silent"), len(in.Lines())
		c := tgConnect(t, px, "mail.test:"+speaksFirst)
		start := time.Now()
		got, closed := tgAnswer(c, nil, 8*time.Second)
		if !closed || len(got) > 0 {
			t.Fatalf("silent client on a non-opaque port: got %q, closed %v; want closed with nothing", got, closed)
		}
		if d := time.Since(start); d < time.Second || d > 6*time.Second {
			t.Errorf("closed after %v, want about header_timeout (2s)", d)
		}
		expect(t, "silent", before, from)
	})

	// Refused first flights, each aimed at the blocked name behind an
	// unlisted CONNECT host: through an unchecked tunnel the Go origin
	// would answer every one of them with a ServerHello.
	hello := tgHello(t, "e2e-social.test")
	v20 := append([]byte{22, 2, 0}, hello[3:]...)
	crafted := []struct {
		name, port, reason string
		data               []byte
	}{
		{"plain HTTP on a TLS port", goTLS, "not_tls", []byte("GET / HTTP/1.1\r\nHost: e2e-social.test\r\n\r\n")},
		{"record version 2.0 (crypto/tls serves it)", goTLS, "not_tls", v20},
		{"another name type before host_name (crypto/tls reads the host_name)", goTLS, "not_tls", tgSNI(t, hello, tgSNIList(1, "ok.test", 0, "e2e-social.test"))},
		{"host_name with a space (both stacks serve it)", sslPort, "not_tls", tgSNI(t, hello, tgSNIList(0, "e2e-social.test x"))},
		{"change_cipher_spec before the hello", goTLS, "not_tls", append([]byte{20, 3, 3, 0, 1, 1}, hello...)},
		{"hello cut short", goTLS, "not_tls", hello[:len(hello)-10]},
	}
	for _, cf := range crafted {
		t.Run("refused: "+cf.name, func(t *testing.T) {
			before, from := refusals(cf.reason), len(in.Lines())
			c := tgConnect(t, px, "ok.test:"+cf.port)
			got, closed := tgAnswer(c, cf.data, 8*time.Second)
			if !closed || serverHello(got) {
				t.Fatalf("got %.80q, closed %v; want closed without a ServerHello", got, closed)
			}
			expect(t, cf.reason, before, from)
		})
	}
	{
		// Port 443 itself, when this test may bind it.
		if ln, err := net.Listen("tcp", "127.0.0.1:443"); err == nil {
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					go func() { io.Copy(io.Discard, c); c.Close() }()
				}
			}()
			t.Run("refused: plain bytes on 443", func(t *testing.T) {
				defer ln.Close()
				before, from := refusals("not_tls"), len(in.Lines())
				c := tgConnect(t, px, "ok.test:443")
				if got, closed := tgAnswer(c, []byte("SSH-2.0-OpenSSH_9.6\r\n"), 8*time.Second); !closed || len(got) > 0 {
					t.Fatalf("got %.80q, closed %v; want closed", got, closed)
				}
				expect(t, "not_tls", before, from)
			})
		}
	}
	t.Run("refused: no server name", func(t *testing.T) {
		before, from := refusals("no_sni"), len(in.Lines())
		if ok, out := tgSClient(t, openssl, px, "ok.test:"+sslPort, "-noservername"); ok {
			t.Fatalf("openssl s_client -noservername went through:\n%s", out)
		}
		expect(t, "no_sni", before, from)
	})
	t.Run("refused: IP literal without a server name", func(t *testing.T) {
		before, from := refusals("ip_literal"), len(in.Lines())
		if ok, out := tgSClient(t, openssl, px, "127.0.0.1:"+sslPort, "-noservername"); ok {
			t.Fatalf("openssl s_client to an IP literal without SNI went through:\n%s", out)
		}
		expect(t, "ip_literal", before, from)
	})
	// Allowed traffic to unlisted hosts is never logged.
	for _, l := range in.Lines() {
		if l.Msg() == "refused" && strings.Contains(l.Str("destination"), opaque) {
			t.Errorf("the opaque tunnel was logged as refused: %v", l)
		}
	}
}
