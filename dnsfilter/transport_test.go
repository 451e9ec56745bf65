package dnsfilter

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/balise-net/balise/internal/policy"
)

// tlsStub serves the stub's behaviours over DNS over TLS with a
// certificate for "dot.test", and returns its address and a pool that
// trusts it.
func tlsStub(t *testing.T, s *stub) (string, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "dot.test"}, DNSNames: []string{"dot.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	srv := &dns.Server{Listener: ln, Net: "tcp-tls", Handler: dns.HandlerFunc(s.serve), NotifyStartedFunc: func() { close(started) }}
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return ln.Addr().String(), pool
}

func TestDNSOverTLSUpstream(t *testing.T) {
	s := newStub(t)
	s.set("dot.example.org.", behaviour{answer: []string{"dot.example.org. 300 IN A 192.0.2.99"}})
	addr, pool := tlsStub(t, s)
	p, err := policy.New(testSpec())
	if err != nil {
		t.Fatal(err)
	}
	var ptr atomic.Pointer[policy.Policy]
	ptr.Store(p)
	f, err := New(Options{Listen: []string{"127.0.0.1:0"}, Upstreams: []string{"tls://" + addr + "#dot.test"}, CacheSize: 10, Policy: &ptr})
	if err != nil {
		t.Fatal(err)
	}
	f.upstreams.ups[0].tls.TLSConfig.RootCAs = pool
	if err := f.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer f.Shutdown(context.Background())
	r := ask(t, f.Addrs()[0].String(), "udp", "", "dot.example.org.", dns.TypeA, false)
	if len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "192.0.2.99" {
		t.Errorf("through a DoT upstream: %v, want 192.0.2.99", r)
	}
	// The second query reuses the idle TLS connection.
	if r := ask(t, f.Addrs()[0].String(), "udp", "", "dot2.example.org.", dns.TypeA, false); len(r.Answer) != 1 {
		t.Errorf("second query through the DoT upstream: %v", r)
	}
	// Three exchanges (the first health probe and two queries), at most
	// two at once: without reuse there would be three connections.
	if n := len(f.upstreams.ups[0].idle); n < 1 || n > 2 {
		t.Errorf("%d idle DoT connections, want 1 or 2 (reused)", n)
	}
	if s.count("dot.example.org.") != 1 {
		t.Errorf("stub asked %d times, want 1", s.count("dot.example.org."))
	}
}

func TestListenersV4V6AndNoBatch(t *testing.T) {
	up := newStub(t)
	listen := []string{"127.0.0.1:0"}
	if ln, err := net.Listen("tcp", "[::1]:0"); err == nil {
		ln.Close()
		listen = append(listen, "[::1]:0")
	} else {
		t.Logf("no IPv6 loopback here: %v", err)
	}
	for _, noBatch := range []bool{false, true} {
		f := startFilter(t, []string{up.addr}, func(o *Options) {
			o.Listen = listen
			o.UDPNoBatch = noBatch
			o.UDPSockets = 3
		})
		addrs := f.Addrs()
		if len(addrs) != 2*len(listen) {
			t.Fatalf("Addrs() = %v, want UDP and TCP per listen address", addrs)
		}
		for _, a := range addrs {
			network := "udp"
			if _, ok := a.(*net.TCPAddr); ok {
				network = "tcp"
			}
			for _, name := range []string{"v.example.org.", "www.facebook.com.", "v.example.org."} {
				r := ask(t, a.String(), network, "", name, dns.TypeA, false)
				want := dns.RcodeSuccess
				if name == "www.facebook.com." {
					want = dns.RcodeNameError
				}
				if r.Rcode != want {
					t.Errorf("noBatch %v, %s %s: rcode %s, want %s", noBatch, network, a, dns.RcodeToString[r.Rcode], dns.RcodeToString[want])
				}
			}
		}
	}
}

func TestOptionsErrors(t *testing.T) {
	var ptr atomic.Pointer[policy.Policy]
	base := func() Options {
		return Options{Listen: []string{"127.0.0.1:0"}, Upstreams: []string{"127.0.0.1:53"}, Policy: &ptr}
	}
	tests := []struct {
		name string
		edit func(*Options)
		want string
	}{
		{"no listen", func(o *Options) { o.Listen = nil }, "listen"},
		{"no upstream", func(o *Options) { o.Upstreams = nil }, "upstreams"},
		{"bad upstream", func(o *Options) { o.Upstreams = []string{"https://x/dns-query"} }, "upstreams[0]"},
		{"bad port", func(o *Options) { o.Upstreams = []string{"1.2.3.4:99999"} }, "bad port"},
		{"bad block", func(o *Options) { o.BlockResponse = "drop" }, "block_response"},
		{"sinkhole without address", func(o *Options) { o.BlockResponse = "sinkhole" }, "sinkhole"},
		{"forward without upstream", func(o *Options) { o.Forward = []Forward{{Zone: "cisss.local"}} }, "forward[0].upstreams"},
		{"nil policy", func(o *Options) { o.Policy = nil }, "policy"},
	}
	for _, tc := range tests {
		o := base()
		tc.edit(&o)
		_, err := New(o)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: New() error = %v, want one mentioning %q", tc.name, err, tc.want)
		}
	}
	for _, u := range []string{"9.9.9.9", "9.9.9.9:53", "[2620:fe::fe]:53", "tls://9.9.9.9:853#dns.quad9.net", "tls://dns.quad9.net", "dns.example.org:5353"} {
		if _, err := parseUpstream(u); err != nil {
			t.Errorf("parseUpstream(%q) = %v, want nil", u, err)
		}
	}
}

func TestTCPSeveralQueriesPerConnection(t *testing.T) {
	up := newStub(t)
	f := startFilter(t, []string{up.addr}, nil)
	conn, err := dns.DialTimeout("tcp", f.addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	names := []string{"one.example.org.", "www.facebook.com.", "two.example.org.", "one.example.org."}
	for i, name := range names {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		m.Id = uint16(100 + i)
		if err := conn.WriteMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	for i, name := range names {
		r, err := conn.ReadMsg()
		if err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
		if r.Id != uint16(100+i) || r.Question[0].Name != name {
			t.Errorf("answer %d: id %d for %s, want %d for %s (in order)", i, r.Id, r.Question[0].Name, 100+i, name)
		}
	}
}

func TestServeDNSHandler(t *testing.T) {
	up := newStub(t)
	f := startFilter(t, []string{up.addr}, nil)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, Handler: f.Filter, NotifyStartedFunc: func() { close(started) }}
	go srv.ActivateAndServe()
	<-started
	defer srv.Shutdown()
	for _, tc := range []struct {
		name  string
		rcode int
	}{{"handler.example.org.", dns.RcodeSuccess}, {"www.facebook.com.", dns.RcodeNameError}, {"handler.example.org.", dns.RcodeSuccess}} {
		r := ask(t, pc.LocalAddr().String(), "udp", "", tc.name, dns.TypeA, true)
		if r.Rcode != tc.rcode {
			t.Errorf("ServeDNS %s: rcode %s, want %s", tc.name, dns.RcodeToString[r.Rcode], dns.RcodeToString[tc.rcode])
		}
	}
	if n := up.count("handler.example.org."); n != 1 {
		t.Errorf("upstream asked %d times, want 1 (the cache is shared)", n)
	}
}
