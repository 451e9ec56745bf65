package dnsfilter

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/balise-net/balise/internal/policy"
)

// stub is an upstream resolver written for the tests: it answers from a
// table of behaviours keyed by lower-case name, over UDP and TCP.
type stub struct {
	t     *testing.T
	addr  string
	udp   *dns.Server
	tcp   *dns.Server
	mu    sync.Mutex
	names map[string]behaviour
	// queries counts the queries received per lower-case name.
	queries map[string]int
	total   atomic.Int64
}

// behaviour is how the stub answers one name.
type behaviour struct {
	rcode    int
	answer   []string // RRs in presentation format
	ns       []string
	delay    time.Duration
	truncUDP bool // UDP answers carry TC and nothing else
	drop     bool
}

func newStub(t *testing.T) *stub {
	t.Helper()
	s := &stub{t: t, names: make(map[string]behaviour), queries: make(map[string]int)}
	var pc net.PacketConn
	var ln net.Listener
	for attempt := 0; ; attempt++ {
		var err error
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		// The UDP port of the same number may be taken: try another.
		if pc, err = net.ListenPacket("udp", ln.Addr().String()); err == nil {
			break
		}
		ln.Close()
		if attempt == 10 {
			t.Fatal(err)
		}
	}
	s.addr = pc.LocalAddr().String()
	started := make(chan struct{}, 2)
	s.udp = &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(s.serve), NotifyStartedFunc: func() { started <- struct{}{} }}
	s.tcp = &dns.Server{Listener: ln, Handler: dns.HandlerFunc(s.serve), NotifyStartedFunc: func() { started <- struct{}{} }}
	go s.udp.ActivateAndServe()
	go s.tcp.ActivateAndServe()
	<-started
	<-started
	t.Cleanup(s.kill)
	return s
}

// kill stops the stub: from now on every query to it times out.
func (s *stub) kill() {
	s.udp.Shutdown()
	s.tcp.Shutdown()
}

func (s *stub) set(name string, b behaviour) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.names[dns.Fqdn(strings.ToLower(name))] = b
}

func (s *stub) count(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queries[dns.Fqdn(strings.ToLower(name))]
}

func (s *stub) serve(w dns.ResponseWriter, r *dns.Msg) {
	s.total.Add(1)
	name := strings.ToLower(r.Question[0].Name)
	s.mu.Lock()
	s.queries[name]++
	b, ok := s.names[name]
	s.mu.Unlock()
	m := new(dns.Msg)
	m.SetReply(r)
	if o := r.IsEdns0(); o != nil {
		m.SetEdns0(o.UDPSize(), o.Do())
	}
	if !ok {
		if name == "." {
			m.Answer = append(m.Answer, rr(s.t, ". 3600 IN NS a.root-servers.net."))
		} else {
			// Unknown names get one A record, TTL 300.
			m.Answer = append(m.Answer, rr(s.t, name+" 300 IN A 192.0.2.1"))
		}
		w.WriteMsg(m)
		return
	}
	if b.delay > 0 {
		time.Sleep(b.delay)
	}
	if b.drop {
		return
	}
	m.Rcode = b.rcode
	_, isUDP := w.RemoteAddr().(*net.UDPAddr)
	if b.truncUDP && isUDP {
		m.Truncated = true
		w.WriteMsg(m)
		return
	}
	for _, a := range b.answer {
		m.Answer = append(m.Answer, rr(s.t, a))
	}
	for _, a := range b.ns {
		m.Ns = append(m.Ns, rr(s.t, a))
	}
	w.WriteMsg(m)
}

func rr(t *testing.T, s string) dns.RR {
	t.Helper()
	r, err := dns.NewRR(s)
	if err != nil {
		t.Fatalf("dns.NewRR(%q): %v", s, err)
	}
	return r
}

// testSpec is the policy of the tests: facebook listed and blocked by
// default, allowed for the "comms" group (127.0.0.2) and during the
// "pause" schedule 10:00-10:15 every day for everyone.
func testSpec() policy.Spec {
	return policy.Spec{
		Location:      time.UTC,
		DefaultAction: policy.Block,
		Services: []policy.Service{
			{ID: "facebook", Name: "Facebook", Category: "social", Domains: []string{"facebook.com", "fbcdn.net"}, CNAMETargets: []string{"fb-cloak.net"}},
			{ID: "tiktok", Name: "TikTok", Category: "social", Domains: []string{"tiktok.com"}},
			{ID: "internal", Name: "Internal", Category: "social", Domains: []string{"social.cisss.local"}},
		},
		Canaries: []string{"use-application-dns.net", "mask.icloud.com"},
		Groups: []policy.Group{
			{Name: "comms", Networks: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}},
		},
		Schedules: []policy.Schedule{{Name: "pause", Windows: []policy.Window{{Days: 0x7F, Start: 10 * time.Hour, End: 10*time.Hour + 15*time.Minute}}}},
		Rules: []policy.Rule{
			{Name: "comms", Groups: []string{"comms"}, Services: []string{"facebook"}, Action: policy.Allow},
			{Name: "pause", Groups: []string{"*"}, Services: []string{"facebook"}, During: []string{"pause"}, Action: policy.Allow},
		},
	}
}

// fakeClock is a settable clock.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

type testFilter struct {
	*Filter
	addr   string // host:port, UDP and TCP
	policy *atomic.Pointer[policy.Policy]
	reg    *prometheus.Registry
}

// startFilter starts a filter on 127.0.0.1:0 with the test policy, the
// given upstreams and whatever edit changes in its options.
func startFilter(t *testing.T, upstreams []string, edit func(*Options)) *testFilter {
	t.Helper()
	p, err := policy.New(testSpec())
	if err != nil {
		t.Fatalf("policy.New: %v", err)
	}
	var ptr atomic.Pointer[policy.Policy]
	ptr.Store(p)
	reg := prometheus.NewRegistry()
	opts := Options{
		Listen:     []string{"127.0.0.1:0"},
		UDPSockets: 2,
		Upstreams:  upstreams,
		Timeout:    300 * time.Millisecond,
		CacheSize:  1000,
		Policy:     &ptr,
		Registerer: reg,
	}
	if edit != nil {
		edit(&opts)
	}
	f, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := f.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := f.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return &testFilter{Filter: f, addr: f.Addrs()[0].String(), policy: &ptr, reg: reg}
}

// ask sends one query from local (an address such as "127.0.0.2", "" for
// any) over network ("udp" or "tcp") and returns the answer.
func ask(t *testing.T, addr, network, local, name string, qtype uint16, edns bool) *dns.Msg {
	t.Helper()
	r, err := exchange(addr, network, local, name, qtype, edns)
	if err != nil {
		t.Fatalf("query %s %s over %s from %q: %v", name, dns.TypeToString[qtype], network, local, err)
	}
	return r
}

func exchange(addr, network, local, name string, qtype uint16, edns bool) (*dns.Msg, error) {
	c := &dns.Client{Net: network, Timeout: 4 * time.Second}
	if local != "" {
		d := &net.Dialer{Timeout: 4 * time.Second}
		if network == "tcp" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
		} else {
			d.LocalAddr = &net.UDPAddr{IP: net.ParseIP(local)}
		}
		c.Dialer = d
	}
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	if edns {
		m.SetEdns0(1232, false)
	}
	r, _, err := c.Exchange(m, addr)
	return r, err
}

// ede returns the Extended DNS Error of r, or -1 and "".
func ede(r *dns.Msg) (int, string) {
	if o := r.IsEdns0(); o != nil {
		for _, opt := range o.Option {
			if e, ok := opt.(*dns.EDNS0_EDE); ok {
				return int(e.InfoCode), e.ExtraText
			}
		}
	}
	return -1, ""
}

func ttls(r *dns.Msg) []uint32 {
	var out []uint32
	for _, sec := range [][]dns.RR{r.Answer, r.Ns} {
		for _, x := range sec {
			out = append(out, x.Header().Ttl)
		}
	}
	return out
}

// value reads a counter or gauge.
func value(t *testing.T, m prometheus.Metric) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		t.Fatal(err)
	}
	if d.Counter != nil {
		return d.Counter.GetValue()
	}
	return d.Gauge.GetValue()
}
