package config

import (
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/balise-net/balise/internal/policy"
)

// dohProviders are the public resolvers whose DoH/DoT host names the
// catalog must block, written here independently of catalog/doh.toml.
var dohProviders = map[string][]string{
	"Google":                   {"dns.google", "dns.google.com", "dns64.dns.google", "8888.google"},
	"Cloudflare":               {"cloudflare-dns.com", "one.one.one.one", "1dot1dot1dot1.cloudflare-dns.com", "mozilla.cloudflare-dns.com", "chrome.cloudflare-dns.com", "security.cloudflare-dns.com", "family.cloudflare-dns.com", "dns.cloudflare.com"},
	"Cloudflare Zero Trust":    {"abc123xyz.cloudflare-gateway.com", "dns.cloudflare-gateway.com"},
	"Quad9":                    {"dns.quad9.net", "dns9.quad9.net", "dns10.quad9.net", "dns11.quad9.net"},
	"OpenDNS / Cisco Umbrella": {"doh.opendns.com", "doh.familyshield.opendns.com", "doh.sandbox.opendns.com", "dns.opendns.com"},
	"AdGuard":                  {"dns.adguard-dns.com", "unfiltered.adguard-dns.com", "family.adguard-dns.com", "abc123.d.adguard-dns.com", "dns.adguard.com"},
	"NextDNS":                  {"dns.nextdns.io", "abc123.dns.nextdns.io", "firefox.dns.nextdns.io", "chromium.dns.nextdns.io"},
	"CleanBrowsing":            {"doh.cleanbrowsing.org", "family-filter-dns.cleanbrowsing.org", "adult-filter-dns.cleanbrowsing.org", "security-filter-dns.cleanbrowsing.org"},
	"Mullvad":                  {"dns.mullvad.net", "adblock.dns.mullvad.net", "all.dns.mullvad.net", "doh.mullvad.net"},
	"Control D":                {"freedns.controld.com", "p2.freedns.controld.com", "dns.controld.com"},
	"DNS.SB":                   {"doh.dns.sb", "dns.sb", "dot.sb"},
	"Comcast Xfinity":          {"doh.xfinity.com", "dot.xfinity.com"},
	"Alibaba":                  {"dns.alidns.com", "12345.alidns.com"},
	"DNSPod / Tencent":         {"doh.pub", "dot.pub", "sm2.doh.pub", "dns.pub"},
	"360":                      {"doh.360.cn", "dot.360.cn"},
	"CIRA Canadian Shield":     {"private.canadianshield.cira.ca", "protected.canadianshield.cira.ca", "family.canadianshield.cira.ca"},
	"LibreDNS":                 {"doh.libredns.gr", "dot.libredns.gr"},
	"Applied Privacy":          {"doh.applied-privacy.net", "dot1.applied-privacy.net"},
	"dns0.eu":                  {"zero.dns0.eu"},
	"Yandex":                   {"common.dot.dns.yandex.net", "safe.dot.dns.yandex.net", "family.dot.dns.yandex.net"},
	"DNS4EU":                   {"protective.joindns4.eu", "unfiltered.joindns4.eu", "child-noads.joindns4.eu"},
	"Apple":                    {"doh.dns.apple.com"},
	"Chrome/Edge list":         {"doh.cox.net", "odvr.nic.cz", "public.dns.iij.jp", "dns.levonet.sk", "doh.quickline.ch", "doh-01.spectrum.com", "doh-02.spectrum.com"},
	"Firefox TRR":              {"mozilla.cloudflare-dns.com", "firefox.dns.nextdns.io", "doh.xfinity.com", "private.canadianshield.cira.ca"},
	"Others":                   {"wikimedia-dns.org", "ordns.he.net", "dns.switch.ch", "dns.digitale-gesellschaft.ch", "dnsforge.de", "doh.ffmuc.net", "dns.twnic.tw", "basic.rethinkdns.com", "dns.surfsharkdns.com"},
}

// notDoH are names near DoH endpoints that must stay unlisted: the
// providers' other services.
var notDoH = []string{"www.google.com", "google.com", "www.cloudflare.com", "quad9.net", "www.opendns.com",
	"nextdns.io", "my.nextdns.io", "www.apple.com", "mullvad.net", "controld.com", "www.cira.ca", "yandex.ru"}

// dohPolicies are the configurations the DoH names are decided under:
// the embedded default, and an authorized group given "every service" in
// each way a rule can say it, with default_action block and allow.
func dohPolicies(t *testing.T) map[string]*policy.Policy {
	t.Helper()
	out := map[string]*policy.Policy{}
	p, err := Default().Compile()
	if err != nil {
		t.Fatalf("default: %v", err)
	}
	out["embedded default"] = p
	for _, rule := range map[string]string{
		`services = ["*"]`:   `services = ["*"]`,
		`categories = ["*"]`: `categories = ["*"]`,
		"no services":        ``,
	} {
		for _, def := range []string{"block", "allow"} {
			src := `default_action = "` + def + `"
[[group]]
name = "autorises"
networks = ["10.20.30.0/24"]
[[rule]]
name = "autorises"
groups = ["autorises"]
` + rule + `
action = "allow"
`
			c, err := Parse("doh-"+def+".toml", []byte(src))
			if err != nil {
				t.Fatalf("%s: %v", src, err)
			}
			p, err := c.Compile()
			if err != nil {
				t.Fatalf("%s: compile: %v", src, err)
			}
			out[rule+", default_action "+def] = p
		}
	}
	return out
}

var (
	authorized = netip.MustParseAddr("10.20.30.12")
	// dohAt is a Tuesday inside the default policy's lunch break, when
	// its pauses rule (services = ["*"]) is active.
	dohAt = time.Date(2026, 5, 12, 12, 30, 0, 0, time.FixedZone("EDT", -4*3600))
)

// TestDoHProvidersBlocked: every provider's DoH/DoT host names are
// decided Block by the default policy and by a policy whose authorized
// group has "*", for the authorized group and everyone else.
func TestDoHProvidersBlocked(t *testing.T) {
	for pname, p := range dohPolicies(t) {
		for provider, hosts := range dohProviders {
			for _, h := range hosts {
				for _, client := range []netip.Addr{authorized, netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("10.1.2.3")} {
					d := p.Decide(policy.Query{Host: h, Client: client, Time: dohAt})
					if d.Verdict != policy.Block || d.Service != "doh" || !d.Bypass {
						t.Errorf("%s: %s: Decide(%s from %v) = %v, want block service=doh", pname, provider, h, client, d)
					}
				}
			}
		}
		for _, h := range notDoH {
			if d := p.Decide(policy.Query{Host: h, Client: authorized, Time: dohAt}); d.Service == "doh" {
				t.Errorf("%s: Decide(%s) = %v, want it outside the doh service", pname, h, d)
			}
		}
	}
}

// TestDoHSourceData checks catalog/doh.toml, the source data of the doh
// service: every host is listed by the embedded catalog's doh service by
// default, blocked for the authorized group with "*", and cites a source.
func TestDoHSourceData(t *testing.T) {
	var f struct {
		Sources   map[string]string `toml:"sources"`
		Providers []struct {
			Name  string `toml:"name"`
			Hosts []struct {
				Name    string   `toml:"name"`
				Sources []string `toml:"sources"`
			} `toml:"hosts"`
		} `toml:"provider"`
	}
	data, err := os.ReadFile("catalog/doh.toml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := toml.Decode(string(data), &f); err != nil {
		t.Fatal(err)
	}
	if len(f.Providers) < 30 {
		t.Errorf("doh.toml lists %d providers, want at least 30", len(f.Providers))
	}
	cat := embeddedCatalog()
	doh, ok := cat.service("doh")
	if !ok {
		t.Fatal("no doh service in the catalog")
	}
	listed := map[string]bool{}
	for _, d := range doh.Domains {
		listed[d] = true
	}
	p := dohPolicies(t)[`services = ["*"], default_action allow`]
	for _, prov := range f.Providers {
		for _, h := range prov.Hosts {
			if !listed[h.Name] {
				t.Errorf("%s: %s is not in the catalog's doh domains: run go generate ./config", prov.Name, h.Name)
			}
			if len(h.Sources) == 0 {
				t.Errorf("%s: %s cites no source", prov.Name, h.Name)
			}
			if d := p.Decide(policy.Query{Host: h.Name, Client: authorized, Time: dohAt}); d.Verdict != policy.Block {
				t.Errorf("%s: Decide(%s) = %v, want block", prov.Name, h.Name, d)
			}
		}
	}
}
