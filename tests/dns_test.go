package tests

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// dnsUpstream is a resolver for the end-to-end tests: every A query gets
// one address (192.0.2.x) with the TTL set for its name (3600 by default).
type dnsUpstream struct {
	addr string
	udp  *dns.Server
	tcp  *dns.Server
	mu   sync.Mutex
	ttl  map[string]uint32
	hits map[string]int
}

func newDNSUpstream(t *testing.T) *dnsUpstream {
	t.Helper()
	u := &dnsUpstream{ttl: map[string]uint32{}, hits: map[string]int{}}
	var pc net.PacketConn
	var ln net.Listener
	for attempt := 0; ; attempt++ {
		var err error
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if pc, err = net.ListenPacket("udp", ln.Addr().String()); err == nil {
			break
		}
		ln.Close()
		if attempt == 10 {
			t.Fatal(err)
		}
	}
	u.addr = pc.LocalAddr().String()
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		name := strings.ToLower(q.Name)
		u.mu.Lock()
		u.hits[name]++
		ttl, ok := u.ttl[name]
		u.mu.Unlock()
		if !ok {
			ttl = 3600
		}
		if q.Qtype == dns.TypeA {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}, A: net.ParseIP("192.0.2.44")})
		}
		w.WriteMsg(m)
	})
	started := make(chan struct{}, 2)
	u.udp = &dns.Server{PacketConn: pc, Handler: h, NotifyStartedFunc: func() { started <- struct{}{} }}
	u.tcp = &dns.Server{Listener: ln, Handler: h, NotifyStartedFunc: func() { started <- struct{}{} }}
	go u.udp.ActivateAndServe()
	go u.tcp.ActivateAndServe()
	<-started
	<-started
	t.Cleanup(u.kill)
	return u
}

func (u *dnsUpstream) kill() {
	u.udp.Shutdown()
	u.tcp.Shutdown()
}

func (u *dnsUpstream) setTTL(name string, ttl uint32) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.ttl[dns.Fqdn(name)] = ttl
}

func (u *dnsUpstream) count(name string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.hits[dns.Fqdn(name)]
}

// digResult is what dig or kdig printed.
type digResult struct {
	status  string
	answers []digRR
	auth    []digRR
	ede     string // "15 (Blocked): ..." or ""
	raw     string
}

type digRR struct {
	name, typ, data string
	ttl             uint32
}

var (
	statusRE = regexp.MustCompile(`status: ([A-Z]+)`)
	edeRE    = regexp.MustCompile(`EDE: (.*)`)
)

// dnsLookup runs tool ("dig" or "kdig") against the DNS filter at addr from
// the source address src, over TCP when tcp is set.
func dnsLookup(t *testing.T, tool, addr, src, name, qtype string, tcp bool) digResult {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	args := []string{"@" + host, "-p", port, "-b", src, name, qtype}
	if tool == "dig" {
		args = append(args, "+tries=1", "+time=4")
	} else {
		args = append(args, "+retry=0", "+timeout=4", "+edns")
	}
	if tcp {
		args = append(args, "+tcp")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, tool, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", tool, strings.Join(args, " "), err, out)
	}
	return parseDigOutput(string(out))
}

func parseDigOutput(out string) digResult {
	r := digResult{raw: out}
	if m := statusRE.FindStringSubmatch(out); m != nil {
		r.status = m[1]
	}
	if m := edeRE.FindStringSubmatch(out); m != nil {
		r.ede = m[1]
	}
	var sec *[]digRR
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(line, ";; ANSWER SECTION"):
			sec = &r.answers
			continue
		case strings.HasPrefix(line, ";; AUTHORITY SECTION"):
			sec = &r.auth
			continue
		case strings.TrimSpace(line) == "" || strings.HasPrefix(line, ";;"):
			sec = nil
			continue
		}
		if sec == nil {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		ttl, err := strconv.ParseUint(f[1], 10, 32)
		if err != nil {
			continue
		}
		*sec = append(*sec, digRR{name: f[0], ttl: uint32(ttl), typ: f[3], data: strings.Join(f[4:], " ")})
	}
	return r
}

// maxTTL is the largest TTL of the answer and authority sections.
func (r digResult) maxTTL() uint32 {
	var m uint32
	for _, x := range append(append([]digRR(nil), r.answers...), r.auth...) {
		m = max(m, x.ttl)
	}
	return m
}

// dnsConfig is a policy with one listed service, "videos"
// (videos-e2e.example), allowed for the "comms" group (127.0.0.2) and for
// everyone during the pause window, whose text is given.
func dnsConfig(upstream, dc, window, metrics string) string {
	return fmt.Sprintf(`timezone = "UTC"
default_action = "block"

[[list]]
name = "videos"
display_name = "Videos E2E"
category = "media-sharing"
domains = ["videos-e2e.example", "videos.corp-e2e.internal"]

[[group]]
name = "comms"
networks = ["127.0.0.2/32"]

[[schedule]]
name = "pause"
windows = [%q]

[[rule]]
name = "comms-videos"
groups = ["comms"]
services = ["videos"]
action = "allow"

[[rule]]
name = "pause-videos"
groups = ["*"]
services = ["videos"]
during = ["pause"]
action = "allow"

[metrics]
listen = %q

[proxy]
listen = []

[dns]
listen = "127.0.0.1:0"
upstreams = [%q]
timeout = "300ms"
blocked_ttl = "60s"
stale_ttl = "30s"
rate_limit = 0

[[dns.forward]]
zone = "corp-e2e.internal"
upstreams = [%q]
`, window, metrics, upstream, dc)
}

// hms formats an instant as HH:MM:SS in UTC.
func hms(t time.Time) string { return t.UTC().Format("15:04:05") }

func TestDNSEndToEnd(t *testing.T) {
	requireTool(t, "dig")
	requireTool(t, "kdig")
	up := newDNSUpstream(t)

	// A pause window a few seconds ahead: blocked now, allowed in it,
	// blocked again after it.
	now := time.Now()
	start := now.Truncate(time.Second).Add(8 * time.Second)
	end := start.Add(6 * time.Second)
	window := "daily " + hms(start) + "-" + hms(end)
	dc := newDNSUpstream(t) // the domain controller of corp-e2e.internal
	in := startBalise(t, dnsConfig(up.addr, dc.addr, window, "127.0.0.1:0"))
	addr := in.Addr("dns-udp")
	if tcp := in.Addr("dns-tcp"); tcp != addr {
		t.Fatalf("dns-tcp on %s, dns-udp on %s: want the same address", tcp, addr)
	}

	const listed = "www.videos-e2e.example"
	t.Run("per-group decisions and no cache leak", func(t *testing.T) {
		steps := []struct {
			tool, src string
			tcp       bool
			status    string
		}{
			{"dig", "127.0.0.2", false, "NOERROR"}, // fills the cache
			{"dig", "127.0.0.1", false, "NXDOMAIN"},
			{"kdig", "127.0.0.1", true, "NXDOMAIN"},
			{"kdig", "127.0.0.2", true, "NOERROR"},
			{"kdig", "127.0.0.1", false, "NXDOMAIN"},
			{"dig", "127.0.0.1", true, "NXDOMAIN"},
			{"dig", "127.0.0.2", true, "NOERROR"},
		}
		for i, s := range steps {
			r := dnsLookup(t, s.tool, addr, s.src, listed, "A", s.tcp)
			if r.status != s.status {
				t.Errorf("step %d: %s from %s (tcp %v): status %q, want %s\n%s", i, s.tool, s.src, s.tcp, r.status, s.status, r.raw)
			}
			if s.status == "NOERROR" && (len(r.answers) != 1 || r.answers[0].data != "192.0.2.44") {
				t.Errorf("step %d: answers %v, want 192.0.2.44", i, r.answers)
			}
			if s.status == "NXDOMAIN" && s.tool == "dig" && !(strings.Contains(r.ede, "15") && strings.Contains(r.ede, "Videos E2E")) {
				t.Errorf("step %d: EDE %q, want 15 (Blocked) naming Videos E2E", i, r.ede)
			}
		}
		if n := up.count(listed); n != 1 {
			t.Errorf("upstream asked %d times about %s, want 1 (then the cache)", n, listed)
		}
		// Every query type of a blocked name is blocked.
		for _, qt := range []string{"AAAA", "HTTPS", "TXT", "MX", "CNAME", "ANY"} {
			if r := dnsLookup(t, "dig", addr, "127.0.0.1", listed, qt, false); r.status != "NXDOMAIN" {
				t.Errorf("%s %s: status %s, want NXDOMAIN", listed, qt, r.status)
			}
		}
		// Names compare case-insensitively and the answer echoes the case.
		r := dnsLookup(t, "dig", addr, "127.0.0.2", "WwW.ViDeOs-E2E.eXaMpLe", "A", false)
		if len(r.answers) != 1 || r.answers[0].name != "WwW.ViDeOs-E2E.eXaMpLe." {
			t.Errorf("mixed case: answers %v, want the question's case echoed", r.answers)
		}
	})

	t.Run("break window clamps TTLs and switches", func(t *testing.T) {
		if time.Until(start) < 2*time.Second {
			t.Fatalf("the first subtest took too long: the window starts in %v", time.Until(start))
		}
		r := dnsLookup(t, "dig", addr, "127.0.0.1", listed, "A", false)
		left := uint32(time.Until(start)/time.Second) + 1
		if r.status != "NXDOMAIN" || r.maxTTL() > left {
			t.Errorf("before the window: status %s TTL %d, want NXDOMAIN with TTL <= %d (the window opens then)\n%s", r.status, r.maxTTL(), left, r.raw)
		}
		time.Sleep(time.Until(start) + 300*time.Millisecond)
		for _, tool := range []string{"dig", "kdig"} {
			r = dnsLookup(t, tool, addr, "127.0.0.1", listed, "A", tool == "kdig")
			left = uint32(time.Until(end)/time.Second) + 1
			if r.status != "NOERROR" || len(r.answers) != 1 || r.answers[0].ttl > left {
				t.Errorf("%s in the window: status %s answers %v, want the address with TTL <= %d, not the upstream's 3600\n%s", tool, r.status, r.answers, left, r.raw)
			}
		}
		time.Sleep(time.Until(end) + 300*time.Millisecond)
		r = dnsLookup(t, "kdig", addr, "127.0.0.1", listed, "A", false)
		if r.status != "NXDOMAIN" {
			t.Errorf("after the window: status %s, want NXDOMAIN\n%s", r.status, r.raw)
		}
	})

	t.Run("conditional forwarding", func(t *testing.T) {
		// Listed, but in a forwarded zone: the policy does not apply, and
		// the domain controller answers, not the default upstream.
		for _, tool := range []string{"dig", "kdig"} {
			r := dnsLookup(t, tool, addr, "127.0.0.1", "videos.corp-e2e.internal", "A", tool == "kdig")
			if r.status != "NOERROR" || len(r.answers) != 1 {
				t.Errorf("%s: forwarded listed name: status %s answers %v, want the DC's answer\n%s", tool, r.status, r.answers, r.raw)
			}
		}
		if dc.count("videos.corp-e2e.internal") != 1 || up.count("videos.corp-e2e.internal") != 0 {
			t.Errorf("DC asked %d times, default upstream %d times; want 1 and 0", dc.count("videos.corp-e2e.internal"), up.count("videos.corp-e2e.internal"))
		}
	})

	t.Run("decision log and metrics", func(t *testing.T) {
		var blockLines, unlistedLines int
		dnsLookup(t, "dig", addr, "127.0.0.1", "private-e2e.example", "A", false)
		for _, l := range in.Lines() {
			if l.Msg() != "decision" {
				continue
			}
			if strings.Contains(l.Str("host"), "private-e2e") {
				unlistedLines++
			}
			if l.Str("front") == "dns" && l.Str("verdict") == "block" && l.Str("service") == "videos" {
				blockLines++
			}
		}
		if blockLines == 0 || unlistedLines != 0 {
			t.Errorf("decision lines: %d dns blocks of videos, %d for an unlisted name; want > 0 and 0", blockLines, unlistedLines)
		}
		if v, ok := in.MetricValue("balise_dns_queries_total", "proto=udp", "verdict=block", "reason=default"); !ok || v < 3 {
			t.Errorf("balise_dns_queries_total{udp,block,default} = %v (found %v), want >= 3", v, ok)
		}
		if v, ok := in.MetricValue("balise_dns_cache_hits_total"); !ok || v < 1 {
			t.Errorf("balise_dns_cache_hits_total = %v, want >= 1", v)
		}
	})

	t.Run("serve-stale when the upstream dies", func(t *testing.T) {
		const name = "stale-e2e.example"
		up.setTTL(name, 1)
		if r := dnsLookup(t, "dig", addr, "127.0.0.1", name, "A", false); r.status != "NOERROR" || len(r.answers) != 1 {
			t.Fatalf("while the upstream lives: %s %v", r.status, r.answers)
		}
		time.Sleep(2 * time.Second) // the answer expires
		up.kill()
		for _, tool := range []string{"dig", "kdig"} {
			began := time.Now()
			r := dnsLookup(t, tool, addr, "127.0.0.1", name, "A", tool == "kdig")
			took := time.Since(began)
			if r.status != "NOERROR" || len(r.answers) != 1 || r.answers[0].ttl != 30 {
				t.Errorf("%s with the upstream dead: status %s answers %v, want the stale answer with TTL 30\n%s", tool, r.status, r.answers, r.raw)
			}
			if took > 3*time.Second {
				t.Errorf("%s: the stale answer took %v, want about 1.8 s at most", tool, took)
			}
		}
		r := dnsLookup(t, "dig", addr, "127.0.0.1", "never-seen-e2e.example", "A", false)
		if r.status != "SERVFAIL" {
			t.Errorf("never-seen name with the upstream dead: status %s, want SERVFAIL", r.status)
		}
		if v, ok := in.MetricValue("balise_dns_stale_answers_total"); !ok || v < 2 {
			t.Errorf("balise_dns_stale_answers_total = %v, want >= 2", v)
		}
	})
}
