package tests

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// dnsAccessConfig is a DNS-only configuration whose [dns] section ends
// with extra (allowed_clients, limits, refuse_any...).
func dnsAccessConfig(upstream, extra string) string {
	return fmt.Sprintf(`timezone = "UTC"
default_action = "block"

[[list]]
name = "videos"
category = "media-sharing"
domains = ["videos-acl.example"]

[metrics]
listen = "127.0.0.1:0"

[proxy]
listen = []

[dns]
listen = "127.0.0.1:0"
upstreams = [%q]
timeout = "300ms"
rate_limit = 0
%s
`, upstream, extra)
}

// openTCP dials n connections to addr from src and returns those that
// connected (the others were reset by Balise before connect returned).
func openTCP(t *testing.T, addr, src string, n int) []net.Conn {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	var conns []net.Conn
	for range n {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			continue
		}
		conns = append(conns, c)
	}
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	return conns
}

// stillOpen returns how many of conns Balise keeps open for wait: a read
// times out rather than ending with EOF or a reset.
func stillOpen(conns []net.Conn, wait time.Duration) int {
	var mu sync.Mutex
	var wg sync.WaitGroup
	open := 0
	deadline := time.Now().Add(wait)
	for _, c := range conns {
		wg.Go(func() {
			c.SetReadDeadline(deadline)
			var b [1]byte
			if _, err := c.Read(b[:]); errors.Is(err, os.ErrDeadlineExceeded) {
				mu.Lock()
				open++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return open
}

// TestDNSAccess drives the fail-closed access rules of the DNS filter
// with dig and kdig from several loopback source addresses: clients
// outside dns.allowed_clients are refused without leaking the cache, ANY
// gets the RFC 8482 answer, one client holding a thousand idle TCP
// connections does not shut another out, idle connections close, and a
// reload changes all of it without a restart.
func TestDNSAccess(t *testing.T) {
	requireTool(t, "dig")
	requireTool(t, "kdig")
	up := newDNSUpstream(t)
	in := startBalise(t, dnsAccessConfig(up.addr, `allowed_clients = ["127.0.0.1/32", "127.0.0.2/32", "127.0.0.3/32"]
tcp_idle_timeout = "30s"`))
	addr := in.Addr("dns-udp")
	started := 0
	for _, l := range in.Lines() {
		if l.Msg() == "started" {
			started++
		}
	}

	t.Run("outside client refused, inside answered", func(t *testing.T) {
		const shared = "shared-acl.example"
		// Positive control, which also puts the answer in the cache.
		if r := dnsLookup(t, "dig", addr, "127.0.0.1", shared, "A", false); r.status != "NOERROR" || len(r.answers) != 1 {
			t.Fatalf("inside client: status %s answers %v, want the address\n%s", r.status, r.answers, r.raw)
		}
		for _, tool := range []string{"dig", "kdig"} {
			for _, tcp := range []bool{false, true} {
				for _, name := range []string{shared, "outsider-acl.example"} {
					r := dnsLookup(t, tool, addr, "127.0.0.9", name, "A", tcp)
					if r.status != "REFUSED" || len(r.answers)+len(r.auth) != 0 {
						t.Errorf("%s from 127.0.0.9 (tcp %v) for %s: status %s answers %v, want REFUSED and nothing else\n%s", tool, tcp, name, r.status, r.answers, r.raw)
					}
				}
			}
		}
		if n := up.count("outsider-acl.example"); n != 0 {
			t.Errorf("upstream asked %d times for the outside client's name, want 0", n)
		}
		if n := up.count(shared); n != 1 {
			t.Errorf("upstream asked %d times for %s, want 1", n, shared)
		}
		if v, ok := in.MetricValue("balise_dns_refusals_total", "reason=client"); !ok || v != 8 {
			t.Errorf("balise_dns_refusals_total{reason=client} = %v (found %v), want 8", v, ok)
		}
		if v, ok := in.MetricValue("balise_dns_queries_total", "proto=tcp", "verdict=refused", "reason=client"); !ok || v != 4 {
			t.Errorf("balise_dns_queries_total{tcp,refused,client} = %v (found %v), want 4", v, ok)
		}
		var logged bool
		for _, l := range in.Lines() {
			if l.Msg() == "refused" && l.Str("front") == "dns" && l.Str("reason") == "client" && l.Str("client") == "127.0.0.9" {
				logged = true
			}
		}
		if !logged {
			t.Error("no refusal log line (front dns, reason client, client 127.0.0.9)")
		}
	})

	t.Run("ANY gets the RFC 8482 answer", func(t *testing.T) {
		const name = "any-acl.example"
		for _, tool := range []string{"dig", "kdig"} {
			r := dnsLookup(t, tool, addr, "127.0.0.1", name, "ANY", tool == "kdig")
			if r.status != "NOERROR" || len(r.answers) != 1 || r.answers[0].typ != "HINFO" || !strings.Contains(r.answers[0].data, `"RFC8482"`) {
				t.Errorf("%s ANY: status %s answers %v, want one HINFO \"RFC8482\"\n%s", tool, r.status, r.answers, r.raw)
			}
		}
		if n := up.count(name); n != 0 {
			t.Errorf("upstream asked %d times for ANY, want 0", n)
		}
		// A blocked name stays blocked for every type, ANY included.
		if r := dnsLookup(t, "dig", addr, "127.0.0.1", "www.videos-acl.example", "ANY", false); r.status != "NXDOMAIN" {
			t.Errorf("ANY for a blocked name: status %s, want NXDOMAIN", r.status)
		}
		if v, ok := in.MetricValue("balise_dns_refusals_total", "reason=any"); !ok || v != 2 {
			t.Errorf("balise_dns_refusals_total{reason=any} = %v (found %v), want 2", v, ok)
		}
	})

	// One client (127.0.0.2) opens more idle TCP connections than Balise
	// has slots for all clients (1,024).
	const hogConns = 1100
	var hog []net.Conn
	t.Run("1100 idle TCP connections from one client", func(t *testing.T) {
		hog = openTCP(t, in.Addr("dns-tcp"), "127.0.0.2", hogConns)
		deadline := time.Now().Add(10 * time.Second)
		for {
			v, _ := in.MetricValue("balise_dns_refusals_total", "reason=tcp_limit")
			if v >= hogConns-16 || time.Now().After(deadline) {
				if v != hogConns-16 {
					t.Errorf("balise_dns_refusals_total{reason=tcp_limit} = %v, want %d (every connection past the 16th)", v, hogConns-16)
				}
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if n := stillOpen(hog, 500*time.Millisecond); n != 16 {
			t.Errorf("%d of the first client's %d connections kept open, want 16 (max_tcp_per_client)", n, hogConns)
		}
		if v, ok := in.MetricValue("balise_dns_tcp_connections"); !ok || v != 16 {
			t.Errorf("balise_dns_tcp_connections = %v (found %v), want 16", v, ok)
		}
		// Another client is still answered over TCP, by both tools.
		for _, tool := range []string{"kdig", "dig"} {
			r := dnsLookup(t, tool, addr, "127.0.0.3", "other-acl.example", "A", true)
			if r.status != "NOERROR" || len(r.answers) != 1 {
				t.Errorf("%s +tcp from 127.0.0.3 while 127.0.0.2 holds its connections: status %s answers %v, want the address\n%s", tool, r.status, r.answers, r.raw)
			}
		}
	})

	t.Run("reload applies access settings without a restart", func(t *testing.T) {
		if r := dnsLookup(t, "dig", addr, "127.0.0.9", "late-acl.example", "A", false); r.status != "REFUSED" {
			t.Fatalf("before the reload: 127.0.0.9 got %s, want REFUSED", r.status)
		}
		from := len(in.Lines())
		in.WriteConfig(dnsAccessConfig(up.addr, `allowed_clients = ["127.0.0.1/32", "127.0.0.2/32", "127.0.0.3/32", "127.0.0.9/32"]
tcp_idle_timeout = "2s"
refuse_any = false
blocked_ttl = "30s"`))
		if l := in.Reload(); l.Msg() != "configuration reloaded" {
			t.Fatalf("reload: %s %v", l.Msg(), l)
		}
		for _, tool := range []string{"dig", "kdig"} {
			r := dnsLookup(t, tool, addr, "127.0.0.9", "late-acl.example", "A", tool == "kdig")
			if r.status != "NOERROR" || len(r.answers) != 1 {
				t.Errorf("%s from 127.0.0.9 after adding it to allowed_clients: status %s answers %v, want the address\n%s", tool, r.status, r.answers, r.raw)
			}
		}
		// refuse_any = false: ANY goes upstream now.
		if r := dnsLookup(t, "dig", addr, "127.0.0.1", "any2-acl.example", "ANY", false); r.status != "NOERROR" || len(r.answers) != 0 || up.count("any2-acl.example") != 1 {
			t.Errorf("ANY with refuse_any = false: status %s answers %v, upstream asked %d times; want it forwarded", r.status, r.answers, up.count("any2-acl.example"))
		}
		// The connections idle for longer than the new 2 s timeout close.
		if n := stillOpen(hog, 2500*time.Millisecond); n != 0 {
			t.Errorf("%d held connections still open 2.5 s after tcp_idle_timeout became 2s, want 0", n)
		}
		// A fresh idle connection closes after about 2 s.
		c := openTCP(t, in.Addr("dns-tcp"), "127.0.0.3", 1)
		if len(c) != 1 {
			t.Fatal("cannot open a TCP connection from 127.0.0.3")
		}
		began := time.Now()
		if stillOpen(c, 6*time.Second) != 0 {
			t.Error("an idle connection stays open 6 s with tcp_idle_timeout = 2s")
		} else if took := time.Since(began); took < 1500*time.Millisecond || took > 4*time.Second {
			t.Errorf("idle connection closed after %v, want about 2 s", took)
		}
		// The warning names exactly the changed keys that need a restart.
		var warned []string
		for _, l := range in.Lines()[from:] {
			if strings.HasPrefix(l.Msg(), "[dns] changed") {
				warned = append(warned, l.Str("keys"))
			}
		}
		if len(warned) != 1 || warned[0] != "dns.blocked_ttl" {
			t.Errorf("restart warnings %q, want one naming exactly dns.blocked_ttl", warned)
		}
		n := 0
		for _, l := range in.Lines() {
			if l.Msg() == "started" {
				n++
			}
		}
		if exited, _ := in.Exited(); exited || n != started {
			t.Errorf("balise restarted or exited (exited %v, %d started lines, want %d)", exited, n, started)
		}
	})
}
