package proxy

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestDestinationsCheck is the classifier's table: every form of an
// always-refused address, Balise's listeners (specific and wildcard, in
// mapped, NAT64 and 6to4 forms), deny_destinations, and how
// allow_destinations exempts only the always-refused set.
func TestDestinationsCheck(t *testing.T) {
	iface := netip.MustParseAddr("192.0.2.1") // an address of "this host"
	local := &localAddrs{list: func() ([]net.Addr, error) {
		return []net.Addr{&net.IPNet{IP: iface.AsSlice(), Mask: net.CIDRMask(24, 32)}}, nil
	}}
	deny := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("127.0.0.9/32")}
	allow := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128"), netip.MustParsePrefix("169.254.0.0/16")}
	mk := func(allow []netip.Prefix) *destinations {
		g := newDestinations(deny, allow, local)
		g.addListener(netip.MustParseAddrPort("127.0.0.1:9464"), false) // metrics
		g.addListener(netip.MustParseAddrPort("[::]:5353"), false)      // DNS, wildcard
		g.addListener(netip.MustParseAddrPort("0.0.0.0:3128"), true)    // proxy, wildcard
		return g
	}
	plain, exempt := mk(nil), mk(allow)
	tests := []struct {
		dst       string
		why       string // without allow_destinations ("" = may connect)
		whyExempt string // with allow 127.0.0.0/8, ::1/128, 169.254.0.0/16
	}{
		{"93.184.216.34:80", "", ""},
		{"[2606:4700::1]:443", "", ""},
		{"[::ffff:93.184.216.34]:80", "", ""},
		// loopback
		{"127.0.0.1:80", whyLoopback, ""},
		{"127.8.9.10:80", whyLoopback, ""},
		{"[::1]:80", whyLoopback, ""},
		{"[::ffff:127.0.0.1]:80", whyLoopback, ""},
		{"[::ffff:7f00:2]:80", whyLoopback, ""},
		{"[::127.0.0.1]:80", whyLoopback, ""},
		// link-local (cloud metadata) and its forms
		{"169.254.169.254:80", whyLinkLocal, ""},
		{"[::ffff:169.254.169.254]:80", whyLinkLocal, ""},
		{"[fe80::1]:80", whyLinkLocal, whyLinkLocal},
		{"[fe80::1%eth0]:80", whyLinkLocal, whyLinkLocal},
		// unspecified
		{"0.0.0.0:80", whyUnspecified, whyUnspecified},
		{"0.1.2.3:80", whyUnspecified, whyUnspecified},
		{"[::]:80", whyUnspecified, whyUnspecified},
		{"[::ffff:0.0.0.0]:80", whyUnspecified, whyUnspecified},
		// multicast, broadcast
		{"224.0.0.1:80", whyMulticast, whyMulticast},
		{"239.1.2.3:80", whyMulticast, whyMulticast},
		{"[ff02::1]:80", whyMulticast, whyMulticast},
		{"[::ffff:224.0.0.251]:80", whyMulticast, whyMulticast},
		{"255.255.255.255:80", whyBroadcast, whyBroadcast},
		// NAT64 (64:ff9b::/96, and the local-use /48)
		{"[64:ff9b::7f00:1]:80", whyLoopback, ""},
		{"[64:ff9b::a9fe:a9fe]:80", whyLinkLocal, ""},
		{"[64:ff9b::808:808]:80", "", ""},
		{"[64:ff9b:1::7f00:1]:80", whyLoopback, ""},
		{"[64:ff9b:1:7f00:0:1::]:80", whyLoopback, ""},
		// 6to4 (2002::/16)
		{"[2002:7f00:1::1]:80", whyLoopback, ""},
		{"[2002:a9fe:a9fe::1]:80", whyLinkLocal, ""},
		{"[2002:808:808::1]:80", "", ""},
		// Teredo: server 127.0.0.1; client 127.0.0.1 obfuscated
		{"[2001:0:7f00:1::]:80", whyLoopback, ""},
		{"[2001:0:808:808::80ff:fffe]:80", whyLoopback, ""},
		// Balise's listeners: never exempt
		{"127.0.0.1:9464", whyListener, whyListener},
		{"[::ffff:127.0.0.1]:9464", whyListener, whyListener},
		{"[64:ff9b::7f00:1]:9464", whyListener, whyListener},
		{"[2002:7f00:1::]:9464", whyListener, whyListener},
		{"0.0.0.0:9464", whyListener, whyListener},
		{"127.0.0.2:9464", whyLoopback, ""}, // not the metrics listener's address
		{"192.0.2.1:9464", "", ""},          // specific listener: other addresses are not it
		// a wildcard listener: every address of this host on its port
		{"127.0.0.5:5353", whyListener, whyListener},
		{"[::1]:5353", whyListener, whyListener},
		{"192.0.2.1:5353", whyListener, whyListener},
		{"[::ffff:192.0.2.1]:5353", whyListener, whyListener},
		{"[2002:c000:201::]:5353", whyListener, whyListener},
		{"198.51.100.7:5353", "", ""},
		{"192.0.2.1:3128", whyListener, whyListener},
		{"192.0.2.2:3128", "", ""},
		// deny_destinations, in every form, and never exempt
		{"10.1.2.3:80", whyDenied, whyDenied},
		{"[::ffff:10.1.2.3]:80", whyDenied, whyDenied},
		{"[64:ff9b::a01:203]:80", whyDenied, whyDenied},
		{"[2002:a01:203::]:80", whyDenied, whyDenied},
		{"127.0.0.9:80", whyDenied, whyDenied},
	}
	for _, tt := range tests {
		ap := netip.MustParseAddrPort(tt.dst)
		for _, c := range []struct {
			g    *destinations
			want string
		}{{plain, tt.why}, {exempt, tt.whyExempt}} {
			got := ""
			if err := c.g.check(ap); err != nil {
				de, ok := asDestinationError(err)
				if !ok {
					t.Fatalf("check(%s) = %v, not a destinationError", tt.dst, err)
				}
				got = de.why
			}
			if got != c.want {
				t.Errorf("check(%s) allow=%v = %q, want %q", tt.dst, c.g.lists.Load().allow != nil, got, c.want)
			}
			// The Control hook sees the same text the dialer builds.
			if err := c.g.control("tcp", ap.String(), nil); (err != nil) != (c.want != "") {
				t.Errorf("control(%s) allow=%v = %v, want refused=%v", ap, c.g.lists.Load().allow != nil, err, c.want != "")
			}
		}
	}
	if !plain.isOwn(netip.MustParseAddrPort("192.0.2.1:3128"), true) || plain.isOwn(netip.MustParseAddrPort("127.0.0.1:9464"), true) {
		t.Errorf("isOwn(proxyOnly) does not tell the proxy's listeners from the others")
	}
}

// countingOrigin is a plain HTTP origin that counts the connections it
// accepts.
func countingOrigin(t *testing.T, addr string) (*net.TCPAddr, *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	cl := &countingListener{Listener: ln}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "origin:"+r.URL.Path)
	})}
	go srv.Serve(cl)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr), &cl.n
}

// destGet sends one request through the proxy at proxyAddr and returns
// the status, the Proxy-Status header and the body.
func destGet(t *testing.T, proxyAddr, method, target string, header http.Header) (int, string, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", proxyAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	req, err := http.NewRequest(method, target, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if err := req.WriteProxy(c); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Proxy-Status"), string(b)
}

// TestDestinationRefusedEveryPath sends requests to an origin on
// loopback through every forwarding path of the explicit proxy (pooled
// GET, transport POST, goproxy's upgrade path, CONNECT), by literal, by
// mapped literal and by a name whose DNS answer is loopback: each is
// refused with 403 destination_ip_prohibited, counted and logged, and
// the origin never sees a connection.
func TestDestinationRefusedEveryPath(t *testing.T) {
	addr, conns := countingOrigin(t, "127.0.0.1:0")
	port := addr.Port
	e := startEnv(t, testSpec(), func(o *Options) {
		o.AllowDestinations = nil
		o.ConnectPorts = []uint16{uint16(port)}
	})
	upgrade := http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}, "Sec-Websocket-Version": {"13"}, "Sec-Websocket-Key": {"dGhlIHNhbXBsZSBub25jZQ=="}}
	n := 0
	for _, host := range []string{"127.0.0.1", "[::ffff:127.0.0.1]", "localhost", "rebind.test"} {
		target := fmt.Sprintf("http://%s:%d/x", host, port)
		for _, tc := range []struct {
			method string
			h      http.Header
		}{{"GET", nil}, {"POST", nil}, {"GET", upgrade}} {
			code, ps, body := destGet(t, e.addr, tc.method, target, tc.h)
			n++
			if code != http.StatusForbidden || !strings.Contains(ps, "destination_ip_prohibited") || !strings.Contains(body, "destination interdite") {
				t.Errorf("%s %s (upgrade %v) = %d %q %q, want 403 destination_ip_prohibited", tc.method, target, tc.h != nil, code, ps, body)
			}
		}
		c, br, code := rawConnect(t, e.addr, "", fmt.Sprintf("%s:%d", host, port))
		n++
		if code != http.StatusForbidden {
			t.Errorf("CONNECT %s:%d = %d, want 403", host, port, code)
		}
		if br.Buffered() > 0 {
			b, _ := br.Peek(br.Buffered())
			t.Logf("after CONNECT: %q", b)
		}
		c.Close()
	}
	if got := conns.Load(); got != 0 {
		t.Errorf("the loopback origin accepted %d connections, want 0", got)
	}
	if got := e.metric("balise_proxy_refusals_total", map[string]string{"mode": "explicit", "reason": "destination"}); got != float64(n) {
		t.Errorf("refusals{destination} = %v, want %d", got, n)
	}
	if logs := e.logs.String(); !strings.Contains(logs, "msg=refused") || !strings.Contains(logs, "reason=destination") {
		t.Errorf("no refusal logged:\n%s", logs)
	}
	// Link-local (cloud metadata): refused before any packet leaves.
	if code, ps, _ := destGet(t, e.addr, "GET", "http://169.254.169.254/latest/meta-data/", nil); code != 403 || !strings.Contains(ps, "destination_ip_prohibited") {
		t.Errorf("GET 169.254.169.254 = %d %q, want 403", code, ps)
	}
}

// TestDestinationListenersNeverExempt: with loopback allowed (a test
// origin there is reachable), Balise's other listeners and the proxy
// itself stay refused, in plain and mapped forms.
func TestDestinationListenersNeverExempt(t *testing.T) {
	originAddr, originConns := countingOrigin(t, "127.0.0.1:0")
	metricsAddr, metricsConns := countingOrigin(t, "127.0.0.1:0")
	e := startEnv(t, testSpec(), func(o *Options) {
		o.OwnListeners = []netip.AddrPort{metricsAddr.AddrPort()}
		o.ConnectPorts = []uint16{uint16(metricsAddr.Port), uint16(originAddr.Port)}
	})
	if code, _, body := destGet(t, e.addr, "GET", fmt.Sprintf("http://127.0.0.1:%d/ok", originAddr.Port), nil); code != 200 || body != "origin:/ok" {
		t.Fatalf("allowed loopback origin = %d %q, want 200", code, body)
	}
	if originConns.Load() == 0 {
		t.Fatalf("the allowed origin saw no connection")
	}
	for _, host := range []string{"127.0.0.1", "[::ffff:127.0.0.1]", "localhost", "0.0.0.0"} {
		target := fmt.Sprintf("http://%s:%d/metrics", host, metricsAddr.Port)
		if code, ps, _ := destGet(t, e.addr, "GET", target, nil); code != 403 || !strings.Contains(ps, "destination_ip_prohibited") {
			t.Errorf("GET %s = %d %q, want 403 destination_ip_prohibited", target, code, ps)
		}
		c, _, code := rawConnect(t, e.addr, "", fmt.Sprintf("%s:%d", host, metricsAddr.Port))
		c.Close()
		if code != 403 {
			t.Errorf("CONNECT %s:%d = %d, want 403", host, metricsAddr.Port, code)
		}
	}
	if got := metricsConns.Load(); got != 0 {
		t.Errorf("the metrics listener accepted %d connections through the proxy, want 0", got)
	}
	// The proxy's own address in a mapped form is the portal, not a loop.
	_, pport, _ := net.SplitHostPort(e.addr)
	code, _, body := destGet(t, e.addr, "GET", "http://[::ffff:127.0.0.1]:"+pport+"/", nil)
	if code != 200 || !strings.Contains(body, "Balise") {
		t.Errorf("GET the proxy itself, mapped = %d, want the portal (200)", code)
	}
}

// TestDestinationSkipsRefusedAddress: a name whose DNS answer holds a
// refused address and an allowed one is reached on the allowed one, and
// the refused one is never dialled.
func TestDestinationSkipsRefusedAddress(t *testing.T) {
	good, goodConns := countingOrigin(t, "127.0.0.2:0")
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", good.Port))
	if err != nil {
		t.Skipf("127.0.0.1:%d is taken: %v", good.Port, err)
	}
	ln.Close()
	_, badConns := countingOrigin(t, fmt.Sprintf("127.0.0.1:%d", good.Port))
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if r.Question[0].Qtype == dns.TypeA {
			for _, a := range []string{"127.0.0.1", "127.0.0.2"} {
				rr, _ := dns.NewRR(r.Question[0].Name + " 60 IN A " + a)
				m.Answer = append(m.Answer, rr)
			}
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	e := startEnv(t, testSpec(), func(o *Options) {
		o.Resolver = pc.LocalAddr().String()
		o.AllowDestinations = []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}
	})
	for i := range 3 {
		code, _, body := destGet(t, e.addr, "GET", fmt.Sprintf("http://two.test:%d/p%d", good.Port, i), nil)
		if code != 200 || body != fmt.Sprintf("origin:/p%d", i) {
			t.Errorf("GET two.test = %d %q, want 200 from 127.0.0.2", code, body)
		}
	}
	if badConns.Load() != 0 || goodConns.Load() == 0 {
		t.Errorf("connections: refused address %d (want 0), allowed %d (want > 0)", badConns.Load(), goodConns.Load())
	}
}

// TestDestinationTransparent: a redirected connection whose original
// destination is refused (here loopback, as a gateway's own service would
// be) is answered 403 (HTTP) or closed with a TLS alert (HTTPS), counted
// in mode transparent, and never dialled.
func TestDestinationTransparent(t *testing.T) {
	addr, conns := countingOrigin(t, "127.0.0.1:0")
	dsts := &dstMap{}
	e := startEnv(t, testSpec(), func(o *Options) {
		o.AllowDestinations = nil
		o.OriginalDestination = dsts.hook
	})
	ha, sa := startTransparent(t, e)
	mapped := fmt.Sprintf("[::ffff:127.0.0.1]:%d", addr.Port)
	dsts.set(ha, mapped)
	dsts.set(sa, mapped)
	c, err := net.Dial("tcp", ha)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: unlisted.test\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	c.Close()
	if err != nil || resp.StatusCode != 403 || !strings.Contains(resp.Header.Get("Proxy-Status"), "destination_ip_prohibited") {
		t.Errorf("transparent HTTP to a loopback destination = %v %v, want 403", resp, err)
	}
	// A CONNECT sent to the transparent HTTP port is dialled like a tunnel.
	cc, _, code := rawConnect(t, ha, "", "unlisted.test:80")
	cc.Close()
	if code == http.StatusOK {
		t.Errorf("CONNECT on the transparent HTTP port to a loopback destination = 200")
	}
	tc, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", sa, &tls.Config{ServerName: "unlisted.test", InsecureSkipVerify: true})
	if err == nil {
		tc.Close()
		t.Errorf("transparent HTTPS to a loopback destination: handshake succeeded")
	}
	if conns.Load() != 0 {
		t.Errorf("the loopback origin accepted %d connections", conns.Load())
	}
	e.waitMetric("balise_proxy_refusals_total", map[string]string{"mode": "transparent", "reason": "destination"}, 2, 5*time.Second)
}

// TestDestinationParent: with a parent proxy, a destination that is (or
// resolves to) a refused address is refused before anything reaches the
// parent; other destinations are handed over, and the parent itself may
// be on loopback.
func TestDestinationParent(t *testing.T) {
	parentAddr, parentConns := countingOrigin(t, "127.0.0.1:0")
	targetAddr, targetConns := countingOrigin(t, "127.0.0.1:0")
	u, _ := url.Parse("http://" + parentAddr.String())
	dsts := &dstMap{}
	e := startEnv(t, testSpec(), func(o *Options) {
		o.AllowDestinations = nil
		o.Parent = u
		o.OriginalDestination = dsts.hook
	})
	// Transparent HTTP (a CONNECT sent to it included) to a loopback
	// destination: refused before the parent, never dialled directly.
	ha, _ := startTransparent(t, e)
	dsts.set(ha, targetAddr.String())
	cc, _, code := rawConnect(t, ha, "", "unlisted.test:80")
	cc.Close()
	if code == http.StatusOK {
		t.Errorf("CONNECT on the transparent HTTP port with a parent, loopback destination = 200")
	}
	if code, ps, _ := destGet(t, ha, "GET", "http://unlisted.test/", nil); code != 403 || !strings.Contains(ps, "destination_ip_prohibited") {
		t.Errorf("transparent HTTP with a parent, loopback destination = %d %q, want 403", code, ps)
	}
	if n := targetConns.Load(); n != 0 {
		t.Errorf("the loopback destination accepted %d connections", n)
	}
	for _, target := range []string{"http://127.0.0.1:8080/", "http://[::ffff:127.0.0.1]/", "http://rebind.test/", "http://169.254.169.254/"} {
		if code, ps, _ := destGet(t, e.addr, "GET", target, nil); code != 403 || !strings.Contains(ps, "destination_ip_prohibited") {
			t.Errorf("GET %s via parent = %d %q, want 403", target, code, ps)
		}
	}
	c, _, code := rawConnect(t, e.addr, "", "rebind.test:443")
	c.Close()
	if code != 403 {
		t.Errorf("CONNECT rebind.test:443 via parent = %d, want 403", code)
	}
	if n := parentConns.Load(); n != 0 {
		t.Errorf("the parent received %d connections for refused destinations", n)
	}
	// An allowed destination reaches the parent (which answers it).
	if code, _, body := destGet(t, e.addr, "GET", "http://192.0.2.10/via-parent", nil); code != 200 || !strings.Contains(body, "via-parent") {
		t.Errorf("GET 192.0.2.10 via parent = %d %q, want the parent's answer", code, body)
	}
}

// TestCertScope: on a blocked CONNECT, the CA issues a certificate for the
// blocked host, or for a server name that is itself blocked and listed,
// and for nothing else: an unlisted server name gets no certificate, and
// the refusal is counted and logged.
func TestCertScope(t *testing.T) {
	ca, roots := testCA(t)
	e := startEnv(t, testSpec(), func(o *Options) { o.CA = ca })
	for _, tt := range []struct {
		sni string
		ok  bool
	}{
		{"social.test", true},
		{"www.social.test", true},
		{"other.test", true},
		{"outlook.office365.com", false},
		{"unlisted.test", false},
	} {
		tc, code, err := tlsOverTunnel(t, e.addr, "", "social.test:443", tt.sni, roots, false)
		if code != 200 {
			t.Fatalf("CONNECT social.test:443 = %d, want 200 (block page)", code)
		}
		if tt.ok != (err == nil) {
			t.Errorf("TLS for %q behind a blocked CONNECT: err %v, want ok=%v", tt.sni, err, tt.ok)
		}
		if err == nil {
			leaf := tc.ConnectionState().PeerCertificates[0]
			if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != tt.sni {
				t.Errorf("certificate for %q names %v", tt.sni, leaf.DNSNames)
			}
			tc.Close()
		}
		// Even a client that trusts nothing must not receive a leaf.
		if !tt.ok {
			_, _, err := tlsOverTunnel(t, e.addr, "", "social.test:443", tt.sni, nil, true)
			if err == nil {
				t.Errorf("TLS for %q (no verification) completed: a certificate was issued", tt.sni)
			}
		}
	}
	// Counted once the server side of the failed handshake is done.
	e.waitMetric("balise_proxy_refusals_total", map[string]string{"reason": "cert_scope"}, 4, 5*time.Second)
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(e.logs.String(), "reason=cert_scope client=127.0.0.1 destination=outlook.office365.com"); {
		if time.Now().After(deadline) {
			t.Fatalf("cert_scope refusal not logged:\n%s", e.logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	var de *destinationError
	if errors.As(errCertScope, &de) {
		t.Fatal("errCertScope must not read as a destination refusal")
	}
}

// TestDestinationsCheckAllocs: an allowed address costs the dialer no
// allocation.
func TestDestinationsCheckAllocs(t *testing.T) {
	g := newDestinations([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, nil, &localAddrs{})
	g.addListener(netip.MustParseAddrPort("0.0.0.0:3128"), true)
	if n := testing.AllocsPerRun(100, func() {
		if g.control("tcp", "[2606:4700::1]:443", nil) != nil || g.control("tcp", "93.184.216.34:3128", nil) != nil {
			t.Fatal("refused")
		}
	}); n != 0 {
		t.Errorf("control on allowed addresses: %v allocations, want 0", n)
	}
}

func BenchmarkDestinationsControl(b *testing.B) {
	g := newDestinations([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, nil, &localAddrs{})
	g.addListener(netip.MustParseAddrPort("127.0.0.1:9464"), false)
	b.ReportAllocs()
	for b.Loop() {
		g.control("tcp", "93.184.216.34:443", nil)
	}
}
