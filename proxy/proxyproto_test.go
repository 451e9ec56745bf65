package proxy

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/balise-net/balise/internal/policy"
	"github.com/pires/go-proxyproto"
)

// v1Header is a PROXY protocol v1 line for a TCP4 client src:sport.
func v1Header(src string, sport int, dst string, dport int) string {
	return fmt.Sprintf("PROXY TCP4 %s %s %d %d\r\n", src, dst, sport, dport)
}

// v2Header is a PROXY protocol v2 header written by hand: command
// (0x21 PROXY, 0x20 LOCAL), family byte (0x11 TCP over IPv4, 0x21 TCP
// over IPv6...) and, for IPv4 and IPv6, the addresses and ports.
func v2Header(cmd, fam byte, src, dst netip.AddrPort) []byte {
	b := []byte("\r\n\r\n\x00\r\nQUIT\n")
	b = append(b, cmd, fam)
	var body []byte
	switch fam {
	case 0x11, 0x21:
		s, d := src.Addr().AsSlice(), dst.Addr().AsSlice()
		body = append(append(body, s...), d...)
		body = binary.BigEndian.AppendUint16(body, src.Port())
		body = binary.BigEndian.AppendUint16(body, dst.Port())
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(body)))
	return append(b, body...)
}

// dialFrom connects to addr from the local address from (any port).
func dialFrom(t *testing.T, from, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// getThrough sends prefix then a proxied GET for url on c and returns the
// status code (0 when the connection ended without an answer).
func getThrough(t *testing.T, c net.Conn, prefix []byte, url string) (int, string) {
	t.Helper()
	host, _, _ := strings.Cut(strings.TrimPrefix(url, "http://"), "/")
	req := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", url, host)
	// One write, as a balancer sends the header with the first bytes.
	if _, err := c.Write(append(append([]byte(nil), prefix...), req...)); err != nil {
		return 0, ""
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// waitLog waits until the proxy's log holds every part on one line.
func (e *env) waitLog(parts ...string) {
	e.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for l := range strings.SplitSeq(e.logs.String(), "\n") {
			ok := true
			for _, p := range parts {
				ok = ok && strings.Contains(l, p)
			}
			if ok {
				return
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("no log line with %q:\n%s", parts, e.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestHeaderPolicy(t *testing.T) {
	from := []netip.Prefix{netip.MustParsePrefix("10.1.2.0/24"), netip.MustParsePrefix("2001:db8::/64")}
	for _, tc := range []struct {
		from []netip.Prefix
		addr string
		want proxyproto.Policy
	}{
		{nil, "10.1.2.3:1", proxyproto.SKIP},
		{from, "10.1.2.3:1", proxyproto.REQUIRE},
		{from, "[::ffff:10.1.2.3]:1", proxyproto.REQUIRE},
		{from, "[2001:db8::5]:1", proxyproto.REQUIRE},
		{from, "10.1.3.3:1", proxyproto.REJECT},
		{from, "[2001:db8:0:1::5]:1", proxyproto.REJECT},
	} {
		got, err := headerPolicy(tc.from, net.TCPAddrFromAddrPort(netip.MustParseAddrPort(tc.addr)))
		if err != nil || got != tc.want {
			t.Errorf("headerPolicy(%v, %s) = %v, %v; want %v", tc.from, tc.addr, got, err, tc.want)
		}
	}
	if _, err := headerPolicy(from, nil); err == nil {
		t.Errorf("headerPolicy without an address: no error")
	}
}

// TestProxyProtocolClientAddress: behind a balancer (127.0.0.1), the
// client is the address the header carries, for allowed_clients, the
// decision and its line, in v1 and v2, IPv4 and IPv6.
func TestProxyProtocolClientAddress(t *testing.T) {
	_, port := originHTTP(t)
	e := startEnv(t, testSpec(), func(o *Options) {
		o.ProxyProtocolFrom = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
		// The balancer itself may not use the proxy; the workstations may.
		o.AllowedClients = []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32"), netip.MustParsePrefix("2001:db8::7/128")}
	})
	url := "http://social.test:" + port + "/p"
	lb := netip.MustParseAddrPort("127.0.0.1:3128")
	for _, tc := range []struct {
		name   string
		header []byte
		want   int
	}{
		{"v1 comms workstation", []byte(v1Header("127.0.0.2", 40000, "127.0.0.1", 3128)), http.StatusOK},
		{"v2 comms workstation", v2Header(0x21, 0x11, netip.MustParseAddrPort("127.0.0.2:40001"), lb), http.StatusOK},
		{"v2 IPv6 workstation (not in comms)", v2Header(0x21, 0x21, netip.MustParseAddrPort("[2001:db8::7]:40002"), netip.MustParseAddrPort("[2001:db8::1]:3128")), http.StatusForbidden},
		{"v1 workstation outside allowed_clients", []byte(v1Header("127.0.0.9", 40003, "127.0.0.1", 3128)), http.StatusForbidden},
	} {
		c := dialFrom(t, "127.0.0.1", e.addr)
		code, body := getThrough(t, c, tc.header, url)
		if code != tc.want {
			t.Errorf("%s: status %d (%q), want %d", tc.name, code, body, tc.want)
		}
	}
	e.waitLog("msg=decision", "client=127.0.0.2", "verdict=allow", "service=social")
	e.waitLog("msg=decision", "client=2001:db8::7", "verdict=block")
	if got := e.metric("balise_proxy_refusals_total", map[string]string{"reason": "client"}); got != 1 {
		t.Errorf("refusals{client} = %v, want 1 (127.0.0.9)", got)
	}
	if got := e.metric("balise_proxy_refusals_total", map[string]string{"reason": "proxy_protocol"}); got != 0 {
		t.Errorf("refusals{proxy_protocol} = %v, want 0", got)
	}
	if strings.Contains(e.logs.String(), "client=127.0.0.1 ") {
		t.Errorf("the balancer's address reached a decision or refusal:\n%s", e.logs.String())
	}
}

// TestProxyProtocolExceptionForm: the exception register is handed the
// workstation's address from the header, never the balancer's.
func TestProxyProtocolExceptionForm(t *testing.T) {
	_, port := originHTTP(t)
	exc := &fakeExceptions{}
	e := startEnv(t, testSpec(), func(o *Options) {
		o.ProxyProtocolFrom = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
		o.AllowedClients = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
		o.Exceptions = exc
	})
	code, body := getThrough(t, dialFrom(t, "127.0.0.1", e.addr), []byte(v1Header("10.4.5.6", 1, "127.0.0.1", 2)), "http://social.test:"+port+"/.balise/request")
	if code != http.StatusOK || body != "register:GET /.balise/request" {
		t.Fatalf("/.balise/ through the balancer = %d %q, want the register's answer", code, body)
	}
	if calls := exc.calls(); len(calls) != 1 || calls[0] != "10.4.5.6" {
		t.Errorf("register saw %v, want [10.4.5.6]", calls)
	}
}

// TestProxyProtocolRefusals: a header from anyone but a balancer, a
// balancer without a header, a malformed or a late header are refused,
// counted and logged; the listener goes on meanwhile.
func TestProxyProtocolRefusals(t *testing.T) {
	_, port := originHTTP(t)
	e := startEnv(t, testSpec(), func(o *Options) {
		o.ProxyProtocolFrom = []netip.Prefix{netip.MustParsePrefix("127.0.0.3/32")}
		o.AllowedClients = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
		o.HeaderTimeout = time.Second
	})
	url := "http://social.test:" + port + "/"
	refused := func(n float64) {
		t.Helper()
		e.waitMetric("balise_proxy_refusals_total", map[string]string{"mode": "explicit", "reason": "proxy_protocol"}, n, 3*time.Second)
	}

	// Slow header from the balancer: only part of the v2 signature.
	slow := dialFrom(t, "127.0.0.3", e.addr)
	slow.Write([]byte("\r\n\r\n"))
	start := time.Now()

	// Meanwhile the listener serves others: a plain client, and the
	// balancer with a complete header.
	if code, _ := getThrough(t, dialFrom(t, "127.0.0.2", e.addr), nil, url); code != http.StatusOK {
		t.Errorf("plain client (comms) while a header is pending: %d, want 200", code)
	}
	if code, _ := getThrough(t, dialFrom(t, "127.0.0.3", e.addr), []byte(v1Header("127.0.0.2", 1, "127.0.0.3", 2)), url); code != http.StatusOK {
		t.Errorf("balancer with a header while another is pending: %d, want 200", code)
	}
	if time.Since(start) > 700*time.Millisecond {
		t.Errorf("serving others took %v: the pending header held the listener", time.Since(start))
	}
	if n, err := slow.Read(make([]byte, 1)); err == nil || n != 0 {
		t.Errorf("slow header: read %d, %v; want the connection closed", n, err)
	}
	if d := time.Since(start); d < 950*time.Millisecond || d > 4*time.Second {
		t.Errorf("slow header closed after %v, want about header_timeout (1s)", d)
	}
	refused(1)
	e.waitLog("msg=refused", "reason=proxy_protocol", "client=127.0.0.3", "header_timeout")

	for i, tc := range []struct {
		name, from string
		prefix     []byte
		detail     string
	}{
		{"spoofed v1 from a workstation", "127.0.0.1", []byte(v1Header("127.0.0.2", 1, "127.0.0.1", 2)), "not in proxy_protocol_from"},
		{"spoofed v2 from a workstation", "127.0.0.1", v2Header(0x21, 0x11, netip.MustParseAddrPort("127.0.0.2:1"), netip.MustParseAddrPort("127.0.0.1:2")), "not in proxy_protocol_from"},
		{"missing header from the balancer", "127.0.0.3", nil, "no PROXY header"},
		{"malformed v1", "127.0.0.3", []byte("PROXY TCP4 127.0.0.2 nonsense\r\n"), "malformed"},
		{"v2 with an undefined family", "127.0.0.3", v2Header(0x21, 0x13, netip.AddrPort{}, netip.AddrPort{}), "malformed"},
		{"v2 UDP", "127.0.0.3", v2Header(0x21, 0x12, netip.MustParseAddrPort("127.0.0.2:1"), netip.MustParseAddrPort("127.0.0.1:2")), "malformed"},
		{"v1 line without CRLF", "127.0.0.3", []byte("PROXY TCP4 127.0.0.2 127.0.0.1 1 2\n"), "malformed"},
	} {
		c := dialFrom(t, tc.from, e.addr)
		if code, body := getThrough(t, c, tc.prefix, url); code != 0 {
			t.Errorf("%s: answered %d (%q), want the connection closed", tc.name, code, body)
		}
		refused(float64(i + 2))
		e.waitLog("msg=refused", "reason=proxy_protocol", "client="+tc.from, tc.detail)
	}
	if strings.Contains(e.logs.String(), "origin:") {
		t.Errorf("a refused connection reached the origin")
	}
	// A balancer's TCP check (connect, close) is not a refusal.
	c := dialFrom(t, "127.0.0.3", e.addr)
	c.Close()
	time.Sleep(100 * time.Millisecond)
	if got := e.metric("balise_proxy_refusals_total", map[string]string{"reason": "proxy_protocol"}); got != 8 {
		t.Errorf("refusals{proxy_protocol} after a TCP check = %v, want 8", got)
	}
}

// TestProxyProtocolLocal: a LOCAL header (v2) or PROXY UNKNOWN (v1) is
// the balancer's own connection, served as coming from the balancer.
func TestProxyProtocolLocal(t *testing.T) {
	_, port := originHTTP(t)
	e := startEnv(t, testSpec(), func(o *Options) {
		o.ProxyProtocolFrom = []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}
		o.AllowedClients = []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}
	})
	url := "http://social.test:" + port + "/"
	for _, h := range [][]byte{v2Header(0x20, 0x00, netip.AddrPort{}, netip.AddrPort{}), []byte("PROXY UNKNOWN\r\n")} {
		if code, body := getThrough(t, dialFrom(t, "127.0.0.2", e.addr), h, url); code != http.StatusOK {
			t.Errorf("LOCAL %q from the balancer (comms): %d %q, want 200", h, code, body)
		}
	}
	e.waitLog("msg=decision", "client=127.0.0.2", "verdict=allow")
	if got := e.metric("balise_proxy_refusals_total", map[string]string{"reason": "proxy_protocol"}); got != 0 {
		t.Errorf("refusals{proxy_protocol} = %v, want 0", got)
	}
}

// TestProxyProtocolTunnels: CONNECT behind a balancer: the per-client
// tunnel cap counts the header's client, and bytes sent with the header
// reach the origin.
func TestProxyProtocolTunnels(t *testing.T) {
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
			go func() { io.Copy(c, c); c.Close() }() // echo
		}
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	e := startEnv(t, testSpec(), func(o *Options) {
		o.ProxyProtocolFrom = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
		o.AllowedClients = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
		o.ConnectPorts = []uint16{mustPort(t, port)}
		o.OpaquePorts = o.ConnectPorts
		o.MaxTunnelsPerClient = 1
	})
	target := "unlisted.test:" + port
	open := func(client string) (net.Conn, int, string) {
		c := dialFrom(t, "127.0.0.1", e.addr)
		// Header, CONNECT and the first tunnel bytes in one segment.
		fmt.Fprintf(c, "%sCONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\nping", v1Header(client, 5000, "127.0.0.1", 3128), target, target)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil {
			return c, 0, ""
		}
		if resp.StatusCode != http.StatusOK {
			return c, resp.StatusCode, ""
		}
		buf := make([]byte, 4)
		io.ReadFull(br, buf)
		return c, resp.StatusCode, string(buf)
	}
	a, ca, echo := open("10.0.0.1")
	defer a.Close()
	b, cb, _ := open("10.0.0.2")
	defer b.Close()
	c, cc, _ := open("10.0.0.1")
	c.Close()
	if ca != 200 || cb != 200 || cc != http.StatusTooManyRequests || echo != "ping" {
		t.Fatalf("CONNECT codes %d %d %d, echo %q; want 200 200 429 \"ping\" (cap 1 per client behind the balancer)", ca, cb, cc, echo)
	}
	// The tunnel carries more (spliced once the header's buffer is drained).
	a.Write([]byte("more"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(a, buf); err != nil || string(buf) != "more" {
		t.Errorf("tunnel echo = %q, %v", buf, err)
	}
}

// TestProxyProtocolTransparent: on a transparent listener the client is
// the header's, the original destination the socket's.
func TestProxyProtocolTransparent(t *testing.T) {
	hsrv, _ := originHTTP(t)
	var sawSocket atomic.Bool
	dsts := &dstMap{}
	e := startEnv(t, testSpec(), func(o *Options) {
		o.ProxyProtocolFrom = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
		o.AllowedClients = []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}
		o.OriginalDestination = func(c net.Conn) (netip.AddrPort, error) {
			_, isSocket := c.(*net.TCPConn)
			sawSocket.Store(isSocket)
			return dsts.hook(c)
		}
	})
	ha, _ := startTransparent(t, e)
	dsts.set(ha, hsrv.Listener.Addr().String())
	c := dialFrom(t, "127.0.0.1", ha)
	// The header names another destination: it is not used.
	hdr := v2Header(0x21, 0x11, netip.MustParseAddrPort("127.0.0.2:4000"), netip.MustParseAddrPort("192.0.2.80:80"))
	req := "GET /t HTTP/1.1\r\nHost: social.test\r\nConnection: close\r\n\r\n"
	c.Write(append(hdr, req...))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.HasPrefix(string(body), "origin:") {
		t.Errorf("transparent through the balancer: %d %q, want the origin's answer", resp.StatusCode, body)
	}
	if !sawSocket.Load() {
		t.Errorf("the original destination was not asked of the socket")
	}
	e.waitLog("msg=decision", "front=transparent", "client=127.0.0.2", "verdict=allow")
}

// TestProxyProtocolOffAndReload: off, a PROXY line is a bad request from
// anyone and a reload does not turn it on (the listener was started
// without); on, a reload changes the balancers, or empties the list, for
// the next connections.
func TestProxyProtocolOffAndReload(t *testing.T) {
	_, port := originHTTP(t)
	url := "http://social.test:" + port + "/"
	hdr := []byte(v1Header("127.0.0.2", 1, "127.0.0.1", 2))
	lb1 := []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	lb3 := []netip.Prefix{netip.MustParsePrefix("127.0.0.3/32")}
	for _, start := range [][]netip.Prefix{nil, lb3} {
		var opts Options
		e := startEnv(t, testSpec(), func(o *Options) {
			o.AllowedClients = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
			o.ProxyProtocolFrom = start
			opts = *o
		})
		reload := func(from []netip.Prefix) {
			opts.ProxyProtocolFrom = from
			if err := e.p.Reconfigure(opts); err != nil {
				t.Fatal(err)
			}
		}
		status := func(from string, prefix []byte) int {
			code, _ := getThrough(t, dialFrom(t, from, e.addr), prefix, url)
			return code
		}
		if start == nil {
			if code := status("127.0.0.1", hdr); code != http.StatusBadRequest {
				t.Errorf("off: a PROXY line answered %d, want 400", code)
			}
			reload(lb1)
			if code := status("127.0.0.1", hdr); code != http.StatusBadRequest {
				t.Errorf("off at start, on by reload: a PROXY line answered %d, want 400 until a restart", code)
			}
			continue
		}
		if code := status("127.0.0.1", hdr); code != 0 {
			t.Errorf("127.0.0.1 not yet a balancer: a header answered %d, want closed", code)
		}
		reload(lb1)
		if code := status("127.0.0.1", hdr); code != http.StatusOK {
			t.Errorf("after the reload: %d, want 200 (client 127.0.0.2 from the header)", code)
		}
		if code := status("127.0.0.1", nil); code != 0 {
			t.Errorf("after the reload, no header from the balancer: %d, want closed", code)
		}
		if code := status("127.0.0.3", hdr); code != 0 {
			t.Errorf("127.0.0.3 no longer a balancer: a header answered %d, want closed", code)
		}
		if got := e.metric("balise_proxy_refusals_total", map[string]string{"reason": "proxy_protocol"}); got != 3 {
			t.Errorf("refusals{proxy_protocol} = %v, want 3", got)
		}
		reload(nil)
		if code := status("127.0.0.1", hdr); code != http.StatusBadRequest {
			t.Errorf("list emptied by a reload: a PROXY line answered %d, want 400", code)
		}
		if code := status("127.0.0.1", nil); code != http.StatusForbidden {
			t.Errorf("list emptied by a reload: a plain request from 127.0.0.1 answered %d, want 403 (decided as itself)", code)
		}
	}
}

// BenchmarkProxyProtocolConn measures a connection from dial to the
// first byte after the header: on the bare listener (PROXY protocol off
// at start), through the wrapper with the list emptied by a reload, and
// with a v2 header from a listed balancer. The differences are what the wrapper and the header cost per
// connection (both ends run in this process; compare cpu-ns/op).
func BenchmarkProxyProtocolConn(b *testing.B) {
	hdr := v2Header(0x21, 0x11, netip.MustParseAddrPort("10.0.0.7:40000"), netip.MustParseAddrPort("127.0.0.1:3128"))
	for _, name := range []string{"bare", "emptied", "v2"} {
		on := name == "v2"
		b.Run(name, func(b *testing.B) {
			pol, err := policy.New(testSpec())
			if err != nil {
				b.Fatal(err)
			}
			opts := Options{Policy: &atomic.Pointer[policy.Policy]{}}
			opts.Policy.Store(pol)
			if on {
				opts.ProxyProtocolFrom = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
			}
			p, err := New(opts)
			if err != nil {
				b.Fatal(err)
			}
			raw, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			var ln net.Listener = raw // without the wrapper, as before it existed
			if name != "bare" {
				ln = p.proxyProtocol(raw, modeExplicit)
			}
			defer ln.Close()
			msg := []byte("x")
			if on {
				msg = append(append([]byte(nil), hdr...), 'x')
			}
			var before, after syscall.Rusage
			syscall.Getrusage(syscall.RUSAGE_SELF, &before)
			for b.Loop() {
				c, err := net.Dial("tcp", raw.Addr().String())
				if err != nil {
					b.Fatal(err)
				}
				c.Write(msg)
				s, err := ln.Accept()
				if err != nil {
					b.Fatal(err)
				}
				var one [1]byte
				if _, err := s.Read(one[:]); err != nil || one[0] != 'x' {
					b.Fatalf("read %q, %v", one, err)
				}
				if on && s.RemoteAddr().String() != "10.0.0.7:40000" {
					b.Fatalf("client %s", s.RemoteAddr())
				}
				s.Close()
				c.Close()
			}
			syscall.Getrusage(syscall.RUSAGE_SELF, &after)
			cpu := time.Duration(after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano())
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
		})
	}
}
