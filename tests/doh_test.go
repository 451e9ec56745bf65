package tests

import (
	"fmt"
	"strings"
	"testing"

	"github.com/balise-net/balise/config"
)

// dohNames are public DNS-over-HTTPS/TLS endpoints of several providers,
// as browsers and operating systems ask for them.
var dohNames = []string{
	"dns.google", "mozilla.cloudflare-dns.com", "chrome.cloudflare-dns.com", "one.one.one.one",
	"doh.opendns.com", "dns.nextdns.io", "abc123.dns.nextdns.io", "dns.quad9.net",
	"dns.adguard-dns.com", "doh.cleanbrowsing.org", "dns.mullvad.net", "freedns.controld.com",
	"doh.dns.sb", "doh.xfinity.com", "dns.alidns.com", "doh.pub", "doh.360.cn",
	"private.canadianshield.cira.ca", "protected.canadianshield.cira.ca",
	"family.canadianshield.cira.ca", "doh.libredns.gr", "doh.applied-privacy.net",
	"common.dot.dns.yandex.net", "protective.joindns4.eu",
}

// dohGroupsConfig gives four loopback clients every service in each way
// a rule can say it, and a fifth the doh category by name:
//
//	127.0.0.2 services = ["*"]      127.0.0.3 categories = ["*"]
//	127.0.0.4 a rule with groups only
//	127.0.0.5 categories = ["doh"] (the positive control), plus services = ["*"]
//
// A [[list]] in the doh category, doh-e2e.test, stands for an endpoint the
// proxy can really reach (resolver answers 127.0.0.1, the origin listens on
// httpsPort).
func dohGroupsConfig(defaultAction, upstream, resolver, httpsPort string) string {
	return fmt.Sprintf(`timezone = "UTC"
default_action = %q

[[list]]
name = "doh-e2e"
display_name = "DoH E2E"
category = "doh"
domains = ["doh-e2e.test"]

[[list]]
name = "social-e2e"
display_name = "Social E2E"
category = "networking"
domains = ["social-e2e.test"]

[[group]]
name = "star-services"
networks = ["127.0.0.2/32"]

[[group]]
name = "star-categories"
networks = ["127.0.0.3/32"]

[[group]]
name = "everything"
networks = ["127.0.0.4/32"]

[[group]]
name = "doh-named"
networks = ["127.0.0.5/32"]

[[rule]]
name = "star-services"
groups = ["star-services"]
services = ["*"]
action = "allow"

[[rule]]
name = "star-categories"
groups = ["star-categories"]
categories = ["*"]
action = "allow"

[[rule]]
name = "everything"
groups = ["everything"]
action = "allow"

[[rule]]
name = "doh-named"
groups = ["doh-named"]
services = ["*"]
categories = ["doh"]
action = "allow"

[metrics]
listen = "127.0.0.1:0"

[dns]
listen = "127.0.0.1:0"
upstreams = [%q]
timeout = "500ms"

[proxy]
listen = "127.0.0.1:0"
resolver = %q
connect_ports = [443, %s]
allow_destinations = ["127.0.0.0/8"]
`, defaultAction, upstream, resolver, httpsPort)
}

// defaultConfigOnLoopback is the embedded default configuration with its
// listeners on ephemeral loopback ports and upstream the test resolver:
// the policy is untouched.
func defaultConfigOnLoopback(t *testing.T, upstream string) string {
	t.Helper()
	text := string(config.DefaultTOML())
	for _, r := range [][2]string{
		{`listen = "127.0.0.1:3128"`, `listen = "127.0.0.1:0"`},
		{`listen = "127.0.0.1:5353"`, `listen = "127.0.0.1:0"`},
		{`listen = "127.0.0.1:9464"`, `listen = "127.0.0.1:0"`},
		{`upstreams = ["9.9.9.9:53", "149.112.112.112:53"]`, fmt.Sprintf("upstreams = [%q]", upstream)},
	} {
		if !strings.Contains(text, r[0]) {
			t.Fatalf("the embedded default configuration no longer holds %s", r[0])
		}
		text = strings.Replace(text, r[0], r[1], 1)
	}
	return text
}

// wantDoHBlocked asks the DNS filter for name from src with dig and kdig,
// over UDP and TCP, and fails unless the answer is NXDOMAIN with an
// Extended DNS Error 15 (Blocked) naming the doh service.
func wantDoHBlocked(t *testing.T, addr, src, name string, i int) {
	t.Helper()
	tool := []string{"dig", "kdig"}[i%2]
	qtype := []string{"A", "AAAA", "HTTPS"}[i%3]
	r := dnsLookup(t, tool, addr, src, name, qtype, i%4 == 3)
	if r.status != "NXDOMAIN" || !strings.Contains(r.ede, "15") || !strings.Contains(r.ede, "Blocked") ||
		!strings.Contains(r.ede, "DNS-over-HTTPS") || len(r.answers) != 0 {
		t.Errorf("%s %s %s from %s: status %s, EDE %q, %d answers; want NXDOMAIN with EDE 15 Blocked naming the doh service\n%s",
			tool, name, qtype, src, r.status, r.ede, len(r.answers), r.raw)
	}
}

// wantResolved asks for name from src and fails unless the upstream's
// answer comes through.
func wantResolved(t *testing.T, addr, src, name string) {
	t.Helper()
	r := dnsLookup(t, "dig", addr, src, name, "A", false)
	if r.status != "NOERROR" || len(r.answers) == 0 || r.answers[0].data != "192.0.2.44" || r.ede != "" {
		t.Errorf("dig %s from %s: status %s, EDE %q, answers %v; want NOERROR 192.0.2.44\n%s", name, src, r.status, r.ede, r.answers, r.raw)
	}
}

// TestDoHBlockedByDNS: DoH endpoints get NXDOMAIN + EDE under the embedded
// default, under rules that give a group "*" (services, categories, or
// everything), and under default_action = "allow"; only a rule that names
// the doh category opens them.
func TestDoHBlockedByDNS(t *testing.T) {
	requireTool(t, "dig")
	requireTool(t, "kdig")
	up := newDNSUpstream(t)

	t.Run("embedded default", func(t *testing.T) {
		in := startBalise(t, defaultConfigOnLoopback(t, up.addr))
		addr := in.Addr("dns-udp")
		for i, name := range dohNames {
			wantDoHBlocked(t, addr, "127.0.0.1", name, i)
		}
		// The rest of the web resolves: the filter is not simply broken.
		wantResolved(t, addr, "127.0.0.1", "www.santeestrie.qc.ca")
	})

	for _, def := range []string{"block", "allow"} {
		t.Run("default_action "+def, func(t *testing.T) {
			in := startBalise(t, dohGroupsConfig(def, up.addr, "127.0.0.1:1", "8443"))
			addr := in.Addr("dns-udp")
			for _, src := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.1"} {
				for i, name := range append([]string{"doh-e2e.test"}, dohNames...) {
					if src == "127.0.0.1" && i%3 != 0 {
						continue // the ungrouped client: a sample is enough
					}
					wantDoHBlockedOrLocal(t, addr, src, name, i)
				}
				// "*" still reaches every other service.
				if src != "127.0.0.1" || def == "allow" {
					wantResolved(t, addr, src, "www.social-e2e.test")
				}
			}
			// The positive control: a rule that names doh lifts it, for
			// its group only.
			for _, name := range []string{"dns.google", "doh.opendns.com", "abc123.dns.nextdns.io", "doh-e2e.test"} {
				wantResolved(t, addr, "127.0.0.5", name)
			}
			if up.count("dns.google.") == 0 {
				t.Errorf("the upstream never saw dns.google: the positive control did not go through")
			}
		})
	}
}

// wantDoHBlockedOrLocal is wantDoHBlocked, with the local DoH list's own
// display name for doh-e2e.test.
func wantDoHBlockedOrLocal(t *testing.T, addr, src, name string, i int) {
	t.Helper()
	if name != "doh-e2e.test" {
		wantDoHBlocked(t, addr, src, name, i)
		return
	}
	r := dnsLookup(t, "kdig", addr, src, name, "A", false)
	if r.status != "NXDOMAIN" || !strings.Contains(r.ede, "15") || !strings.Contains(r.ede, "DoH E2E") {
		t.Errorf("kdig %s from %s: status %s, EDE %q; want NXDOMAIN with EDE 15 naming DoH E2E\n%s", name, src, r.status, r.ede, r.raw)
	}
}

// TestDoHBlockedByProxy: a CONNECT to a DoH endpoint is refused for a
// group whose rule says services = ["*"], and for everyone; the group
// whose rule names doh gets its tunnel.
func TestDoHBlockedByProxy(t *testing.T) {
	requireTool(t, "curl")
	_, httpsPort := pxOrigins(t)
	up := newDNSUpstream(t)
	in := startBalise(t, dohGroupsConfig("allow", up.addr, pxDNS(t), httpsPort))
	px := pxRequireProxy(t, in)

	for _, src := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.1"} {
		for _, target := range []string{"https://dns.google/dns-query?dns=AAABAAABAAAAAAAAA3d3dwdleGFtcGxlA2NvbQAAAQAB",
			"https://mozilla.cloudflare-dns.com/dns-query", "https://doh.opendns.com/dns-query",
			"https://doh-e2e.test:" + httpsPort + "/dns-query"} {
			code, _, errs := pxCurl(t, "-x", "http://"+px, "--interface", src, "-v", "-k", target)
			if code == 0 || !strings.Contains(errs, "403") || !strings.Contains(errs, "Proxy-Status: balise; error=http_request_denied") {
				t.Errorf("CONNECT for %s from %s = exit %d, want a 403 with Proxy-Status\n%s", target, src, code, errs)
			}
		}
	}
	// Positive controls: the "*" group reaches a listed non-DoH service
	// through the same proxy, and the group whose rule names doh reaches
	// the DoH endpoint.
	if code, out, errs := pxCurl(t, "-x", "http://"+px, "--interface", "127.0.0.2", "-k", "-w", "\n%{http_code}",
		"https://social-e2e.test:"+httpsPort+"/x"); code != 0 || !strings.HasSuffix(out, "\n200") {
		t.Errorf(`"*" group to social-e2e.test = exit %d %q, want 200 through the tunnel\n%s`, code, out, errs)
	}
	if code, out, errs := pxCurl(t, "-x", "http://"+px, "--interface", "127.0.0.5", "-k", "-w", "\n%{http_code}",
		"https://doh-e2e.test:"+httpsPort+"/dns-query"); code != 0 || !strings.HasSuffix(out, "\n200") {
		t.Errorf("doh-named group to doh-e2e.test = exit %d %q, want 200 through the tunnel\n%s", code, out, errs)
	}
}
