package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// countingListener counts the connections it accepts.
type countingListener struct {
	net.Listener
	n atomic.Int32
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// startCountingTransparent starts a transparent listener (HTTPS when tls,
// else HTTP) on 127.0.0.1:0 and returns it.
func startCountingTransparent(t *testing.T, e *env, tls bool) *countingListener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := &countingListener{Listener: ln}
	ctx, cancel := context.WithCancel(context.Background())
	var done <-chan error
	if tls {
		done = e.p.StartTransparentHTTPS(ctx, cl)
	} else {
		done = e.p.StartTransparentHTTP(ctx, cl)
	}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("transparent listener: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("transparent listener did not stop")
		}
	})
	return cl
}

// TestTransparentSelfLoop connects to a transparent listener whose
// connections' original destination is Balise itself, in the forms a
// gateway produces: the connection's local address (REDIRECT without a
// redirect), another local address of the host on the same port, a
// v4-mapped form, an interface address (with TPROXY). Each connection must
// be refused once as a loop, without Balise dialing itself.
func TestTransparentSelfLoop(t *testing.T) {
	iface := netip.MustParseAddr("192.0.2.1") // declared local below
	tests := []struct {
		name   string
		tproxy bool
		dst    func(local netip.AddrPort) netip.AddrPort
	}{
		{"local address", false, func(l netip.AddrPort) netip.AddrPort { return l }},
		{"v4-mapped local address", false, func(l netip.AddrPort) netip.AddrPort {
			return netip.AddrPortFrom(netip.AddrFrom16(l.Addr().As16()), l.Port())
		}},
		{"other loopback address", false, func(l netip.AddrPort) netip.AddrPort {
			return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.3"), l.Port())
		}},
		{"interface address", false, func(l netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(iface, l.Port()) }},
		{"interface address tproxy", true, func(l netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(iface, l.Port()) }},
		{"unspecified address", false, func(l netip.AddrPort) netip.AddrPort {
			return netip.AddrPortFrom(netip.IPv4Unspecified(), l.Port())
		}},
	}
	for _, tt := range tests {
		for _, withTLS := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/tls=%v", tt.name, withTLS), func(t *testing.T) {
				e := startEnv(t, testSpec(), func(o *Options) {
					o.TPROXY = tt.tproxy
					o.MaxTunnelsPerClient = 8 // bounds the loop if it is not caught
					o.OriginalDestination = func(c net.Conn) (netip.AddrPort, error) {
						l, err := netip.ParseAddrPort(c.LocalAddr().String())
						if err != nil {
							return netip.AddrPort{}, err
						}
						return tt.dst(l), nil
					}
				})
				e.p.local.list = func() ([]net.Addr, error) {
					return []net.Addr{&net.IPNet{IP: iface.AsSlice(), Mask: net.CIDRMask(24, 32)}}, nil
				}
				ln := startCountingTransparent(t, e, withTLS)
				c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				if withTLS {
					tc := tls.Client(c, &tls.Config{ServerName: "unlisted.test", InsecureSkipVerify: true})
					if err := tc.Handshake(); err == nil {
						t.Errorf("TLS handshake through a looping transparent connection succeeded")
					}
				} else {
					fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: unlisted.test\r\n\r\n")
					resp, err := http.ReadResponse(bufioReader(c), nil)
					if err != nil {
						t.Fatalf("reading the answer: %v", err)
					}
					resp.Body.Close()
					if resp.StatusCode != http.StatusLoopDetected {
						t.Errorf("HTTP through a looping transparent connection = %d, want 508", resp.StatusCode)
					}
				}
				if got := ln.n.Load(); got != 1 {
					t.Errorf("connections accepted = %d, want 1 (Balise dialed itself)", got)
				}
				if got := e.metric("balise_proxy_refusals_total", map[string]string{"mode": "transparent", "reason": "loop"}); got != 1 {
					t.Errorf("refusals{transparent,loop} = %v, want 1", got)
				}
				if got := e.metric("balise_proxy_refusals_total", map[string]string{"mode": "transparent"}); got != 1 {
					t.Errorf("refusals{transparent} = %v, want 1", got)
				}
			})
		}
	}
}

// fakeConn is a connection with only addresses.
type fakeConn struct {
	net.Conn
	local net.Addr
}

func (f fakeConn) LocalAddr() net.Addr { return f.local }

func TestIsLoop(t *testing.T) {
	e := startEnv(t, testSpec(), nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	e.p.addSelf(&net.TCPAddr{IP: net.IPv6unspecified, Port: 3130})
	e.p.addSelf(ln.Addr())
	e.p.addSelf(&net.TCPAddr{IP: net.ParseIP("203.0.113.5"), Port: 3131}) // a TPROXY listener's address, not an interface's
	lport := ln.Addr().(*net.TCPAddr).Port
	e.p.local.list = func() ([]net.Addr, error) {
		return []net.Addr{
			&net.IPNet{IP: net.ParseIP("192.0.2.1"), Mask: net.CIDRMask(24, 32)},
			&net.IPNet{IP: net.ParseIP("2001:db8::1"), Mask: net.CIDRMask(64, 128)},
		}, nil
	}
	local := func(s string) net.Conn { return fakeConn{local: net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s))} }
	tests := []struct {
		local  string
		orig   string
		tproxy bool
		want   bool
	}{
		{"192.0.2.1:3130", "192.0.2.1:3130", false, true},
		{"192.0.2.1:3130", "192.0.2.1:3130", true, true},
		{"192.0.2.1:3130", "198.51.100.7:443", false, false},
		{"198.51.100.7:3130", "198.51.100.7:3130", true, false}, // TPROXY: a remote host's port 3130
		{"192.0.2.1:3130", "198.51.100.7:3130", false, false},
		{"10.9.9.9:3130", "10.9.9.9:3130", false, true}, // REDIRECT: the connection's own address
		{"192.0.2.1:3130", "[2001:db8::1]:3130", false, true},
		{"192.0.2.1:3130", "[::ffff:192.0.2.1]:3130", false, true},
		{"192.0.2.1:3130", "127.0.0.1:3130", false, true},
		{"192.0.2.1:3130", "[::1]:3130", false, true},
		{"192.0.2.1:3130", "0.0.0.0:3130", false, true},
		{"192.0.2.1:3130", "192.0.2.1:22", false, false}, // not one of Balise's ports
		{"192.0.2.1:3130", fmt.Sprintf("127.0.0.1:%d", lport), false, true},
		{"192.0.2.1:3130", fmt.Sprintf("192.0.2.1:%d", lport), false, true},
		// The listener's own address in mapped, NAT64 and 6to4 forms.
		{"[::ffff:203.0.113.5]:3131", "[::ffff:203.0.113.5]:3131", true, true},
		{"203.0.113.5:3131", "203.0.113.5:3131", true, true},
		{"203.0.113.6:3131", "203.0.113.6:3131", true, false},
		{"192.0.2.1:3130", "[64:ff9b::7f00:1]:3130", false, true},
		{"192.0.2.1:3130", "[2002:c000:201::1]:3130", false, true},
		{"192.0.2.1:3130", "[64:ff9b::c633:6407]:3130", false, false}, // 198.51.100.7
	}
	for _, tt := range tests {
		e.p.opts.TPROXY = tt.tproxy
		if got := e.p.isLoop(local(tt.local), netip.MustParseAddrPort(tt.orig)); got != tt.want {
			t.Errorf("isLoop(local %s, orig %s, tproxy=%v) = %v, want %v", tt.local, tt.orig, tt.tproxy, got, tt.want)
		}
	}
	e.p.opts.TPROXY = false
}

// blockingDNS answers A queries with addr (AAAA with nothing), but only
// once release is closed (or after 10s). Each query is signalled on
// queried (without blocking).
func blockingDNS(t *testing.T, addr string, release <-chan struct{}, queried chan<- struct{}) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		select {
		case queried <- struct{}{}:
		default:
		}
		select {
		case <-release:
		case <-time.After(10 * time.Second):
		}
		m := new(dns.Msg)
		m.SetReply(r)
		if len(r.Question) == 1 && r.Question[0].Qtype == dns.TypeA {
			rr, _ := dns.NewRR(r.Question[0].Name + " 60 IN A " + addr)
			m.Answer = append(m.Answer, rr)
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

// TestTransparentSNICheckInBackground: an allowed connection to a listed
// service whose name resolves elsewhere than its original destination is
// carried at once, while the DNS check is still waiting for its answer,
// and counted as a mismatch when the answer comes.
func TestTransparentSNICheckInBackground(t *testing.T) {
	ssrv, _, _ := originTLS(t)
	release := make(chan struct{})
	queried := make(chan struct{}, 1)
	resolver := blockingDNS(t, "192.0.2.7", release, queried)
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	dsts := &dstMap{}
	e := startEnv(t, testSpec(), func(o *Options) {
		o.OriginalDestination = dsts.hook
		o.Resolver = resolver
	})
	_, sa := startTransparent(t, e)
	dsts.set(sa, ssrv.Listener.Addr().String())

	// 127.0.0.2 is in the "comms" group, allowed to reach social.test.
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	c, err := tls.DialWithDialer(d, "tcp", sa, &tls.Config{ServerName: "social.test", InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("allowed transparent HTTPS while the DNS check waits: %v", err)
	}
	code, body := get2(t, c, "social.test")
	c.Close()
	if code != 200 || body != "origin:/x" {
		t.Errorf("allowed transparent HTTPS = %d %q, want 200 origin:/x", code, body)
	}
	select {
	case <-queried:
	case <-time.After(5 * time.Second):
		t.Fatalf("no DNS query for the SNI/address check")
	}
	if got := e.metric("balise_proxy_sni_mismatch_total", map[string]string{"mode": "transparent"}); got != 0 {
		t.Errorf("sni_mismatch{transparent} before the DNS answer = %v, want 0", got)
	}
	close(release)
	e.waitMetric("balise_proxy_sni_mismatch_total", map[string]string{"mode": "transparent"}, 1, 5*time.Second)
}

func TestCheckSNIAddrBounded(t *testing.T) {
	e := startEnv(t, testSpec(), nil)
	for range cap(e.p.sniChecks) {
		e.p.sniChecks <- struct{}{}
	}
	if e.p.checkSNIAddr(context.Background(), "social.test", netip.MustParseAddr("192.0.2.7")) {
		t.Errorf("checkSNIAddr with every slot taken = true, want false (dropped)")
	}
	for range cap(e.p.sniChecks) {
		<-e.p.sniChecks
	}
	// The stub DNS answers 127.0.0.1: a mismatch for 192.0.2.7.
	if !e.p.checkSNIAddr(context.Background(), "social.test", netip.MustParseAddr("192.0.2.7")) {
		t.Errorf("checkSNIAddr with free slots = false, want true")
	}
	e.waitMetric("balise_proxy_sni_mismatch_total", map[string]string{"mode": "transparent"}, 1, 5*time.Second)
	deadline := time.Now().Add(5 * time.Second)
	for len(e.p.sniChecks) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("background check still holds its slot")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
