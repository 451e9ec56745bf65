package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"html/template"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/balise-net/balise/internal/decisionlog"
	"github.com/balise-net/balise/internal/exceptions"
	"github.com/balise-net/balise/internal/policy"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testSpec lists social.test (blocked by default, allowed for the
// "comms" group 127.0.0.2) and other.test; everything else is unlisted.
func testSpec() policy.Spec {
	return policy.Spec{
		Location:      time.UTC,
		DefaultAction: policy.Block,
		Services: []policy.Service{
			{ID: "social", Name: "Social Test", Category: "networking", Domains: []string{"social.test"}},
			{ID: "other", Name: "Other <Service>", Category: "media-sharing", Domains: []string{"other.test"}},
		},
		Groups: []policy.Group{{Name: "comms", Networks: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}}},
		Rules:  []policy.Rule{{Name: "comms", Groups: []string{"comms"}, Services: []string{"*"}, Action: policy.Allow}},
	}
}

// startDNS runs a stub DNS server answering every A query with
// 127.0.0.1 (and AAAA with nothing), so that test names reach loopback
// origins through Options.Resolver.
func startDNS(t testing.TB) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if len(r.Question) == 1 && r.Question[0].Qtype == dns.TypeA {
			rr, _ := dns.NewRR(r.Question[0].Name + " 60 IN A 127.0.0.1")
			m.Answer = append(m.Answer, rr)
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

type env struct {
	t      *testing.T
	p      *Proxy
	addr   string
	reg    *prometheus.Registry
	pol    *atomic.Pointer[policy.Policy]
	logs   *syncBuffer
	cancel context.CancelFunc
	done   chan error
}

// startEnv starts a proxy on 127.0.0.1:0 with spec and the stub DNS;
// edit may change the options first.
func startEnv(t *testing.T, spec policy.Spec, edit func(*Options)) *env {
	t.Helper()
	pol, err := policy.New(spec)
	if err != nil {
		t.Fatalf("policy.New: %v", err)
	}
	e := &env{t: t, reg: prometheus.NewRegistry(), pol: &atomic.Pointer[policy.Policy]{}, logs: &syncBuffer{}, done: make(chan error, 1)}
	e.pol.Store(pol)
	logger := slog.New(slog.NewTextHandler(e.logs, nil))
	opts := Options{
		Policy:      e.pol,
		Logger:      logger,
		Registerer:  e.reg,
		Decisions:   decisionlog.New(logger, time.Minute, 0),
		Resolver:    startDNS(t),
		DialTimeout: 2 * time.Second,
		// The test origins listen on loopback, which the proxy refuses
		// unless told otherwise.
		AllowDestinations: loopbackPrefixes,
	}
	if edit != nil {
		edit(&opts)
	}
	p, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	e.p = p
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	go func() { e.done <- p.Serve(ctx, ln) }()
	t.Cleanup(e.stop)
	return e
}

func (e *env) stop() {
	if e.cancel == nil {
		return
	}
	e.cancel()
	e.cancel = nil
	select {
	case err := <-e.done:
		if err != nil {
			e.t.Errorf("Serve = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		e.t.Errorf("Serve did not return after cancel")
	}
}

// client returns an HTTP client using the proxy; roots may be nil.
func (e *env) client(roots *x509.CertPool, serverName string) *http.Client {
	u, _ := url.Parse("http://" + e.addr)
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			Proxy:             http.ProxyURL(u),
			TLSClientConfig:   &tls.Config{RootCAs: roots, ServerName: serverName},
			DisableKeepAlives: true,
		},
	}
}

// metric returns the sum of the counter or gauge series whose labels
// include labels (0 if none).
func (e *env) metric(name string, labels map[string]string) float64 {
	e.t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for k, v := range labels {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == k && lp.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			if c := m.GetCounter(); c != nil {
				sum += c.GetValue()
			}
			if g := m.GetGauge(); g != nil {
				sum += g.GetValue()
			}
		}
	}
	return sum
}

// waitMetric polls until a metric reaches want or the deadline passes.
func (e *env) waitMetric(name string, labels map[string]string, want float64, within time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(within)
	for {
		got := e.metric(name, labels)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s%v = %v, want %v", name, labels, got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rawConnect opens a CONNECT tunnel by hand from a chosen local address
// and returns the connection and the status code.
func rawConnect(t *testing.T, proxyAddr, from, target string, headers ...string) (net.Conn, *bufio.Reader, int) {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	c, err := d.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s\r\n", target, target, strings.Join(headers, ""))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		c.Close()
		t.Fatalf("CONNECT %s: %v", target, err)
	}
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, resp.Body)
	}
	c.SetDeadline(time.Time{})
	return c, br, resp.StatusCode
}

// originTLS is an HTTPS origin answering "origin:" + path.
func originTLS(t *testing.T) (*httptest.Server, *x509.CertPool, string) {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "origin:"+r.URL.Path)
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	return srv, pool, port
}

func originHTTP(t *testing.T) (*httptest.Server, string) {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Origin", "yes")
		io.WriteString(w, "origin:"+r.Host+r.URL.Path)
	}))
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	return srv, port
}

func mustPort(t *testing.T, s string) uint16 {
	t.Helper()
	var p uint16
	if _, err := fmt.Sscan(s, &p); err != nil {
		t.Fatal(err)
	}
	return p
}

// fakeExceptions records calls to the register's web side.
type fakeExceptions struct {
	mu      sync.Mutex
	remotes []string
}

func (f *fakeExceptions) Form(client netip.Addr, d policy.Decision, host, lang string) template.HTML {
	return template.HTML(fmt.Sprintf(`<form method="post" action="/.balise/request" class="exc-%s"><input type="hidden" name="service" value="%s"></form>`, lang, template.HTMLEscapeString(d.Service)))
}

func (f *fakeExceptions) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	rec := r.RemoteAddr
	if u := exceptions.UserFrom(r.Context()); u != "" {
		rec += " user=" + u
	}
	f.remotes = append(f.remotes, rec)
	f.mu.Unlock()
	w.Header().Set("Content-Type", "text/plain")
	io.WriteString(w, "register:"+r.Method+" "+r.URL.Path)
}

func (f *fakeExceptions) calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.remotes...)
}

func bufioReader(c net.Conn) *bufio.Reader { return bufio.NewReader(c) }

func writeFile(path, s string) error { return os.WriteFile(path, []byte(s), 0o600) }

func mustKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func pemKey(t *testing.T, k any) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// loopbackPrefixes exempt loopback from the destinations the proxy
// refuses, for tests whose origins listen there.
var loopbackPrefixes = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
