package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"html"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/balise-net/balise/internal/adtest"
)

// End-to-end tests of identity: the release binary against a real Samba
// AD domain controller (internal/adtest), with MIT kinit, curl
// --proxy-negotiate, dig and headless Chromium. Every test starts its own
// Balise (bindings live in memory) on the one DC of the test binary.

// idBlockPage reports whether body is Balise's block page for the
// service named display (it carries the request form).
func idBlockPage(body, display string) bool {
	return strings.Contains(body, display) && strings.Contains(body, `action="/.balise/request"`) &&
		!strings.Contains(body, "hello from")
}

// idHello reports whether body is the test origin's page for host.
func idHello(body, host string) bool { return strings.Contains(body, "hello from "+host) }

// TestIdentityProxy: from one workstation address, alice (in a group
// nested in the authorized one) reaches the listed service over HTTP and
// CONNECT; bob gets the block page (403; a refused CONNECT without
// [proxy.tls]); without credentials an unlisted host is never challenged,
// a listed host whose verdict depends on who asks gets a 407 Negotiate
// whose body is the block page, and a listed host blocked for everyone
// gets the 403 at once.
func TestIdentityProxy(t *testing.T) {
	requireTool(t, "curl")
	d := idSetup(t)
	s := idStartSites(t)
	in := d.start(t, s, idOptions{})
	alice, bob := d.login(t, "alice"), d.login(t, "bob")
	social := "http://www.social.test:" + s.httpPort + "/"
	socialTLS := "https://www.social.test:" + s.tlsPort + "/"
	intranet := "http://www.intranet.test:" + s.httpPort + "/"
	intranetTLS := "https://www.intranet.test:" + s.tlsPort + "/"
	const ws = "127.0.0.1"

	t.Run("alice HTTP", func(t *testing.T) {
		r := d.curl(t, in, ws, &alice, social)
		if r.Code != http.StatusOK || !idHello(r.Body, "www.social.test") {
			t.Errorf("alice GET %s: %v\nwant 200 from the origin", social, r)
		}
	})
	t.Run("alice CONNECT", func(t *testing.T) {
		r := d.curl(t, in, ws, &alice, socialTLS)
		if r.Connect != http.StatusOK || r.Code != http.StatusOK || !idHello(r.Body, "www.social.test") {
			t.Errorf("alice CONNECT %s: %v\nwant the tunnel and 200 from the origin", socialTLS, r)
		}
	})
	t.Run("bob HTTP", func(t *testing.T) {
		r := d.curl(t, in, ws, &bob, social)
		if r.Code != http.StatusForbidden || !idBlockPage(r.Body, "Social Test") {
			t.Errorf("bob GET %s: %v\nwant 403 and the block page", social, r)
		}
	})
	t.Run("bob CONNECT", func(t *testing.T) {
		r := d.curl(t, in, ws, &bob, socialTLS)
		if r.Connect != http.StatusForbidden || idHello(r.Body, "www.social.test") {
			t.Errorf("bob CONNECT %s: %v\nwant the CONNECT refused with 403", socialTLS, r)
		}
	})
	t.Run("unlisted without credentials", func(t *testing.T) {
		for _, u := range []string{intranet, intranetTLS} {
			r := d.curl(t, in, ws, nil, u)
			if r.Code != http.StatusOK || !idHello(r.Body, "www.intranet.test") || r.ProxyAuthenticate() || r.Connect == http.StatusProxyAuthRequired {
				t.Errorf("GET %s without credentials: %v\nwant 200 and no challenge", u, r)
			}
		}
	})
	t.Run("listed without credentials", func(t *testing.T) {
		r := d.curl(t, in, ws, nil, social)
		if r.Code != http.StatusProxyAuthRequired || !r.HasNegotiateChallenge() || !idBlockPage(r.Body, "Social Test") {
			t.Errorf("GET %s without credentials: %v\nwant 407, Proxy-Authenticate: Negotiate and the block page", social, r)
		}
		r = d.curl(t, in, ws, nil, socialTLS)
		if r.Connect != http.StatusProxyAuthRequired || !r.HasNegotiateChallenge() || idHello(r.Body, "www.social.test") {
			t.Errorf("CONNECT %s without credentials: %v\nwant 407 and Proxy-Authenticate: Negotiate", socialTLS, r)
		}
	})
	t.Run("listed for nobody", func(t *testing.T) {
		// blog.test is listed and no rule names a user or a directory
		// group for it: who asks cannot change its verdict.
		u := "http://www.blog.test:" + s.httpPort + "/"
		r := d.curl(t, in, ws, nil, u)
		if r.Code != http.StatusForbidden || r.ProxyAuthenticate() || !idBlockPage(r.Body, "Blog Test") {
			t.Errorf("GET %s without credentials: %v\nwant 403 and the block page, no challenge", u, r)
		}
	})
	// Unlisted traffic is never logged, even when the client sent a
	// token of its own accord (curl does).
	if r := d.curl(t, in, ws, &alice, intranet); r.Code != http.StatusOK {
		t.Errorf("alice GET %s: %v", intranet, r)
	}
	if l := idDecisions(in, 0, "www.intranet.test"); len(l) != 0 {
		t.Errorf("decision lines for an unlisted host: %v", l)
	}
}

// TestIdentityDNS: the DNS filter decides for the one user bound to an
// address (alice, after she authenticated through the proxy from it),
// falls back to the network groups once a second user (bob) has
// authenticated there (shared_after = 2), and decides an address nobody
// authenticated from by its network groups alone.
func TestIdentityDNS(t *testing.T) {
	requireTool(t, "curl")
	requireTool(t, "dig")
	d := idSetup(t)
	s := idStartSites(t)
	in := d.start(t, s, idOptions{})
	alice, bob := d.login(t, "alice"), d.login(t, "bob")
	social := "http://www.social.test:" + s.httpPort + "/"
	const ws, name = "127.0.0.1", "www.social.test"

	resolves := func(src string) bool {
		t.Helper()
		a, rcode := idDig(t, in, src, name)
		return rcode == "NOERROR" && slices.Contains(a, "127.0.0.1")
	}
	if resolves(ws) {
		t.Fatalf("%s resolves from %s before anyone authenticated there", name, ws)
	}
	if !resolves("127.0.0.4") {
		t.Fatalf("%s does not resolve from 127.0.0.4, whose network group is allowed", name)
	}
	if r := d.curl(t, in, ws, &alice, social); r.Code != http.StatusOK {
		t.Fatalf("alice through the proxy: %v", r)
	}
	if !resolves(ws) {
		a, rc := idDig(t, in, ws, name)
		t.Fatalf("after alice authenticated from %s, %s = %s %v, want 127.0.0.1 (allowed for her)", ws, name, rc, a)
	}
	if resolves("127.0.0.2") {
		t.Errorf("%s resolves from 127.0.0.2, where nobody authenticated (network groups: blocked)", name)
	}
	if r := d.curl(t, in, ws, &bob, social); r.Code != http.StatusForbidden {
		t.Fatalf("bob through the proxy: %v", r)
	}
	if resolves(ws) {
		t.Errorf("after bob also authenticated from %s (shared_after = 2), %s still resolves: want the network decision (blocked)", ws, name)
	}
	if !resolves("127.0.0.4") {
		t.Errorf("127.0.0.4 (network group) no longer resolves %s", name)
	}
	// The proxy still decides per connection on the shared address.
	if r := d.curl(t, in, ws, &alice, social); r.Code != http.StatusOK {
		t.Errorf("alice through the proxy on the shared address: %v", r)
	}
}

// TestIdentityGrantFollowsUser: alice asks for videotest from the block
// page over her authenticated connection; the register records her; a
// grant to the person (--subject user) lets her reach it from another
// workstation, through the proxy and, once she authenticated there,
// through DNS; bob and the first workstation's other users stay blocked.
func TestIdentityGrantFollowsUser(t *testing.T) {
	requireTool(t, "curl")
	requireTool(t, "dig")
	d := idSetup(t)
	s := idStartSites(t)
	in := d.start(t, s, idOptions{})
	alice, bob := d.login(t, "alice"), d.login(t, "bob")
	video := "http://www.video.test:" + s.httpPort + "/"

	r := d.curl(t, in, "127.0.0.1", &alice, video)
	m := exTokenRE.FindStringSubmatch(r.Body)
	if r.Code != http.StatusForbidden || m == nil || !idBlockPage(r.Body, "Video Test") {
		t.Fatalf("alice GET %s: %v\nwant 403 and the block page with its form", video, r)
	}
	// The form goes over the connection the block page came on, once
	// authenticated: the GET first, then the POST in the same curl.
	r = d.curlAfter(t, in, "127.0.0.1", &alice, video, video+".balise/request",
		"--data-urlencode", "service=videotest", "--data-urlencode", "host=www.video.test",
		"--data-urlencode", "token="+html.UnescapeString(m[1]), "--data-urlencode", "lang=fr",
		"--data-urlencode", "name=Alice Tremblay", "--data-urlencode", "contact=poste 4321",
		"--data-urlencode", "justification=Vidéos de la campagne de vaccination pour le site web",
		"--data-urlencode", "duration=4h")
	if r.Code != http.StatusOK || !strings.Contains(r.Body, "EX-0001") || !r.Reused {
		t.Fatalf("alice's request: %v (connection reused: %v)\nwant 200 with EX-0001 over the authenticated connection", r, r.Reused)
	}
	list := exList(t, in.ConfigPath)
	if len(list) != 1 || list[0].User == nil || !strings.EqualFold(*list[0].User, "alice") {
		user := "<null>"
		if len(list) == 1 && list[0].User != nil {
			user = idQuote(*list[0].User)
		}
		t.Fatalf("list --json = %+v, user %s\nwant EX-0001 recorded for user alice", list, user)
	}
	if out, errOut, code := exCLI(t, in.ConfigPath, "approve", "EX-0001", "--for", "4h", "--by", "RSI Dupont", "--subject", "user"); code != 0 {
		t.Fatalf("approve --subject user = %d\n%s%s", code, out, errOut)
	}
	idEventually(t, 5*time.Second, "alice from 127.0.0.3 after the grant", func() error {
		r := d.curl(t, in, "127.0.0.3", &alice, video)
		if r.Code != http.StatusOK || !idHello(r.Body, "www.video.test") {
			return fmt.Errorf("%v", r)
		}
		return nil
	})
	if a, rc := idDig(t, in, "127.0.0.3", "www.video.test"); rc != "NOERROR" || !slices.Contains(a, "127.0.0.1") {
		t.Errorf("DNS from 127.0.0.3, where alice authenticated: %s %v, want her grant to resolve it", rc, a)
	}
	if r := d.curl(t, in, "127.0.0.5", &bob, video); r.Code != http.StatusForbidden {
		t.Errorf("bob from 127.0.0.5: %v\nwant 403: the grant is alice's", r)
	}
	if a, rc := idDig(t, in, "127.0.0.5", "www.video.test"); rc == "NOERROR" && len(a) > 0 {
		t.Errorf("DNS from 127.0.0.5 (bob's): %s %v, want blocked", rc, a)
	}
	if r := d.curl(t, in, "127.0.0.6", nil, video); r.Code != http.StatusProxyAuthRequired {
		t.Errorf("no credentials from 127.0.0.6: %v\nwant 407 (a grant to a person is no grant to an address)", r)
	}
}

// TestIdentityDirectoryDown: with the DC stopped, alice keeps her cached
// memberships (proxy and DNS); balise_directory_up goes to 0, the contact
// age grows and stale lookups are counted; a user never looked up is
// decided on network groups (blocked) promptly, and within
// directory.timeout when the DC hangs instead; the DC back, lookups
// succeed again.
func TestIdentityDirectoryDown(t *testing.T) {
	requireTool(t, "curl")
	requireTool(t, "dig")
	requireTool(t, "kvno")
	d := idSetup(t)
	s := idStartSites(t)
	const timeout = 1500 * time.Millisecond
	in := d.start(t, s, idOptions{CacheTTL: "2s", Timeout: timeout.String()})
	alice, carol, dave := d.login(t, "alice"), d.login(t, "carol"), d.login(t, "dave")
	// Carol and dave get their ticket for the proxy while the KDC runs.
	d.serviceTicket(t, carol)
	d.serviceTicket(t, dave)
	social := "http://www.social.test:" + s.httpPort + "/"

	if r := d.curl(t, in, "127.0.0.1", &alice, social); r.Code != http.StatusOK {
		t.Fatalf("alice with the DC up: %v", r)
	}
	if v := idMetric(in, "balise_directory_up"); v != 1 {
		t.Fatalf("balise_directory_up = %v with the DC up, want 1", v)
	}

	d.dc.Stop()
	t.Cleanup(func() { d.dc.Start() })
	stopped := time.Now()
	time.Sleep(2500 * time.Millisecond) // past cache_ttl: alice's entry must be asked again
	staleBefore := idMetric(in, "balise_directory_lookups_total", "result=stale")
	if r := d.curl(t, in, "127.0.0.1", &alice, social); r.Code != http.StatusOK || !idHello(r.Body, "www.social.test") {
		t.Errorf("alice with the DC stopped: %v\nwant 200 on her cached memberships", r)
	}
	if a, rc := idDig(t, in, "127.0.0.1", "www.social.test"); rc != "NOERROR" || !slices.Contains(a, "127.0.0.1") {
		t.Errorf("DNS for alice's address with the DC stopped: %s %v, want allowed", rc, a)
	}
	idEventually(t, 5*time.Second, "balise_directory_up with the DC stopped", func() error {
		if v := idMetric(in, "balise_directory_up"); v != 0 {
			return fmt.Errorf("balise_directory_up = %v, want 0", v)
		}
		return nil
	})
	if v := idMetric(in, "balise_directory_lookups_total", "result=stale"); v <= staleBefore {
		t.Errorf("balise_directory_lookups_total{result=\"stale\"} = %v, was %v: the stale answer was not counted", v, staleBefore)
	}
	age1 := idMetric(in, "balise_directory_contact_age_seconds")
	time.Sleep(1100 * time.Millisecond)
	age2 := idMetric(in, "balise_directory_contact_age_seconds")
	if age1 < time.Since(stopped).Seconds()-1.2 || age2 < age1+1 {
		t.Errorf("balise_directory_contact_age_seconds = %v then %v, %v after the DC stopped: want it to grow with the outage", age1, age2, time.Since(stopped))
	}

	// Carol, never looked up, with the DC stopped (connections refused).
	r := d.curl(t, in, "127.0.0.7", &carol, social)
	t.Logf("carol's first request with the DC stopped: %d in %v", r.Code, r.Elapsed)
	if r.Code != http.StatusForbidden || !idBlockPage(r.Body, "Social Test") || r.Elapsed > timeout+2*time.Second {
		t.Errorf("carol with the DC stopped: %v in %v\nwant 403 (network groups) within directory.timeout (%v)", r, r.Elapsed, timeout)
	}

	// explain, a process of its own with no cache, says so.
	out, errOut, code := runBalise(t, "explain", "--config", in.ConfigPath, "--client", "127.0.0.1",
		"--host", "www.social.test", "--user", "alice", "--json")
	var e explainJSON
	if code != 0 || json.Unmarshal([]byte(out), &e) != nil || e.Identity != "user+directory-unavailable" || e.Verdict != "block" {
		t.Errorf("explain --user alice with the DC stopped = %d %+v\n%s%s\nwant block, identity user+directory-unavailable", code, e, out, errOut)
	}

	// The DC back, then hanging (SIGSTOP): dave, never looked up, is
	// decided when the timeout runs out.
	if err := d.dc.Start(); err != nil {
		t.Fatal(err)
	}
	idEventually(t, 10*time.Second, "balise_directory_up after the DC restarted", func() error {
		d.curl(t, in, "127.0.0.1", &alice, social)
		if v := idMetric(in, "balise_directory_up"); v != 1 {
			return fmt.Errorf("balise_directory_up = %v, want 1", v)
		}
		return nil
	})
	d.dc.Pause()
	t.Cleanup(d.dc.Resume)
	r = d.curl(t, in, "127.0.0.8", &dave, social)
	d.dc.Resume()
	t.Logf("dave's first request with the DC hanging: %d in %v", r.Code, r.Elapsed)
	if r.Code != http.StatusForbidden || r.Elapsed > timeout+2*time.Second {
		t.Errorf("dave with the DC hanging: %v in %v\nwant 403 (network groups) within directory.timeout (%v)", r, r.Elapsed, timeout)
	}
	if r := d.curl(t, in, "127.0.0.1", &alice, social); r.Code != http.StatusOK {
		t.Errorf("alice after the DC came back: %v", r)
	}
}

// explainJSON is the part of `balise explain --json` these tests read.
type explainJSON struct {
	Verdict         string   `json:"verdict"`
	Reason          string   `json:"reason"`
	Rule            string   `json:"rule"`
	User            string   `json:"user"`
	Groups          []string `json:"groups"`
	DirectoryGroups []string `json:"directory_groups"`
	Identity        string   `json:"identity"`
}

// TestIdentityExplain: explain --user asks the DC for alice's groups
// (nested included) and says so; --offline decides on the name alone.
func TestIdentityExplain(t *testing.T) {
	d := idSetup(t)
	s := idStartSites(t)
	cfg := filepath.Join(t.TempDir(), "balise.toml")
	if err := os.WriteFile(cfg, []byte(d.config(s, idOptions{})), 0o600); err != nil {
		t.Fatal(err)
	}
	explain := func(args ...string) explainJSON {
		t.Helper()
		all := append([]string{"explain", "--config", cfg, "--client", "127.0.0.1", "--host", "www.social.test", "--json"}, args...)
		out, errOut, code := runBalise(t, all...)
		var e explainJSON
		if code != 0 || json.Unmarshal([]byte(out), &e) != nil {
			t.Fatalf("balise %s = %d\n%s%s", strings.Join(all, " "), code, out, errOut)
		}
		return e
	}
	e := explain("--user", "alice")
	if e.Verdict != "allow" || e.Identity != "user+directory" || e.Rule != "communications" ||
		!slices.Contains(e.Groups, "communications") || !slices.ContainsFunc(e.DirectoryGroups, func(g string) bool { return strings.EqualFold(g, "comm-web") }) {
		t.Errorf("explain --user alice = %+v\nwant allow by rule communications, identity user+directory, comm-web among her directory groups", e)
	}
	e = explain("--user", "alice", "--offline")
	if e.Verdict != "block" || e.Identity != "user" {
		t.Errorf("explain --user alice --offline = %+v\nwant block, identity user", e)
	}
	e = explain("--user", "bob")
	if e.Verdict != "block" || e.Identity != "user+directory" || slices.Contains(e.Groups, "communications") {
		t.Errorf("explain --user bob = %+v\nwant block, identity user+directory", e)
	}
	e = explain()
	if e.Verdict != "block" || e.Identity != "address" {
		t.Errorf("explain without --user = %+v\nwant block, identity address", e)
	}
}

// idPseudonymRE is a pseudonym as decision lines carry it.
var idPseudonymRE = regexp.MustCompile(`^u-[0-9a-z]{8,}$`)

// TestIdentityDecisionLines: proxy decision lines carry a pseudonym for
// the authenticated user (identity.log = "pseudonym"), one per person,
// which `balise identity reveal` turns back into alice; no line names
// alice or bob; DNS decision lines carry no user, even for the address
// alice is bound to; /metrics names nobody.
func TestIdentityDecisionLines(t *testing.T) {
	requireTool(t, "curl")
	requireTool(t, "dig")
	d := idSetup(t)
	s := idStartSites(t)
	in := d.start(t, s, idOptions{})
	alice, bob := d.login(t, "alice"), d.login(t, "bob")
	social := "http://www.social.test:" + s.httpPort + "/"
	videoTLS := "https://www.video.test:" + s.tlsPort + "/"

	// Lines are deduplicated per client, user, service and verdict: one
	// allowed and one blocked decision for alice, one for bob.
	from := len(in.Lines())
	if r := d.curl(t, in, "127.0.0.1", &alice, social); r.Code != http.StatusOK {
		t.Fatalf("alice %s: %v", social, r)
	}
	if r := d.curl(t, in, "127.0.0.1", &alice, videoTLS); r.Connect != http.StatusForbidden {
		t.Fatalf("alice %s: %v\nwant the CONNECT refused", videoTLS, r)
	}
	if r := d.curl(t, in, "127.0.0.9", &bob, social); r.Code != http.StatusForbidden {
		t.Fatalf("bob: %v", r)
	}
	if a, _ := idDig(t, in, "127.0.0.1", "www.social.test"); len(a) == 0 {
		t.Errorf("DNS for alice's address: not allowed (the binding is needed for the next check)")
	}
	in.WaitLog(from, 5*time.Second, func(l logLine) bool { return l.Msg() == "decision" && l.Str("front") == "dns" })
	var aliceNames, bobNames []string
	var dnsLines int
	for _, l := range slices.Concat(idDecisions(in, from, "www.social.test"), idDecisions(in, from, "www.video.test")) {
		switch {
		case l.Str("front") == "dns":
			dnsLines++
			if u, ok := l["user"]; ok && u != "" {
				t.Errorf("DNS decision line carries user %v: %v", u, l)
			}
		case l.Str("client") == "127.0.0.1":
			aliceNames = append(aliceNames, l.Str("user"))
		case l.Str("client") == "127.0.0.9":
			bobNames = append(bobNames, l.Str("user"))
		}
	}
	if len(aliceNames) < 2 || dnsLines == 0 || len(bobNames) == 0 {
		t.Fatalf("decision lines: alice %q (want http allow and connect block), bob %q, %d DNS", aliceNames, bobNames, dnsLines)
	}
	for _, n := range slices.Concat(aliceNames, bobNames) {
		if !idPseudonymRE.MatchString(n) {
			t.Errorf("decision line user %q, want a pseudonym u-…", n)
		}
	}
	if slices.ContainsFunc(aliceNames, func(n string) bool { return n != aliceNames[0] }) || slices.Contains(bobNames, aliceNames[0]) {
		t.Errorf("pseudonyms: alice %q, bob %q; want one stable pseudonym per person", aliceNames, bobNames)
	}
	out, errOut, code := runBalise(t, "identity", "reveal", "--config", in.ConfigPath, "--by", "RSI Dupont",
		"--reason", "enquête e2e", "--candidate", "bob", "--candidate", "alice", aliceNames[0])
	if code != 0 || strings.TrimSpace(out) != aliceNames[0]+"\talice" {
		t.Errorf("identity reveal %s = %d %q\n%s\nwant alice", aliceNames[0], code, out, errOut)
	}
	for _, name := range []string{"alice", "bob"} {
		if strings.Contains(strings.ToLower(in.Stderr()), name) {
			t.Errorf("the log names %s:\n%s", name, in.Stderr())
		}
		if m := strings.ToLower(in.Metrics()); strings.Contains(m, name) || strings.Contains(m, aliceNames[0]) {
			t.Errorf("/metrics names %s or carries a pseudonym", name)
		}
	}
}

// TestIdentityCost measures (and logs; it asserts no time) Balise's CPU
// per request: an authenticated CONNECT to a listed service (Kerberos
// verification, cached groups, binding) against an unauthenticated
// CONNECT to an unlisted host, and unlisted requests with
// [proxy.auth] mode = "negotiate" against "off". Each request is a new
// connection from a new curl; three instances run side by side (auth on,
// off, and off again as a control whose difference with the first "off"
// is the noise floor) and the series alternate, several rounds, the
// median kept. BALISE_COST_N sets
// the requests per series and round (default 20), BALISE_COST_ROUNDS the
// rounds (default 5).
func TestIdentityCost(t *testing.T) {
	requireTool(t, "curl")
	d := idSetup(t)
	s := idStartSites(t)
	alice := d.login(t, "alice")
	n, rounds := idEnvInt("BALISE_COST_N", 20), idEnvInt("BALISE_COST_ROUNDS", 5)
	socialTLS := "https://www.social.test:" + s.tlsPort + "/"
	intranet := "http://www.intranet.test:" + s.httpPort + "/"
	intranetTLS := "https://www.intranet.test:" + s.tlsPort + "/"
	on := d.start(t, s, idOptions{})
	off := d.start(t, s, idOptions{Auth: "off"})
	ctl := d.start(t, s, idOptions{Auth: "off"}) // a second "off": the noise floor
	series := []struct {
		name string
		in   *instance
		cr   *adtest.Credentials
		url  string
		cost []time.Duration
	}{
		{name: "authenticated CONNECT, listed (alice, Negotiate), auth on", in: on, cr: &alice, url: socialTLS},
		{name: "unauthenticated CONNECT, unlisted, auth on", in: on, url: intranetTLS},
		{name: "unauthenticated CONNECT, unlisted, auth off", in: off, url: intranetTLS},
		{name: "unauthenticated HTTP GET, unlisted, auth on", in: on, url: intranet},
		{name: "unauthenticated HTTP GET, unlisted, auth off", in: off, url: intranet},
		{name: "unauthenticated CONNECT, unlisted, auth off (control)", in: ctl, url: intranetTLS},
		{name: "unauthenticated HTTP GET, unlisted, auth off (control)", in: ctl, url: intranet},
	}
	for range rounds {
		for i := range series {
			sr := &series[i]
			sr.cost = append(sr.cost, d.idCostPerRequest(t, sr.in, n, sr.cr, sr.url, http.StatusOK))
		}
	}
	med := func(c []time.Duration) time.Duration {
		c = slices.Clone(c)
		slices.Sort(c)
		return c[len(c)/2]
	}
	t.Logf("Balise CPU per request (median of %d rounds of %d; each a new connection):", rounds, n)
	for _, sr := range series {
		t.Logf("  %-60s %9v  (rounds: %v)", sr.name, med(sr.cost), sr.cost)
	}
	t.Logf("  %-60s %9v", "added by Kerberos verification and identity per CONNECT", med(series[0].cost)-med(series[1].cost))
	t.Logf("  %-60s %9v", "unlisted CONNECT, auth on minus off", med(series[1].cost)-med(series[2].cost))
	t.Logf("  %-60s %9v", "unlisted HTTP GET, auth on minus off", med(series[3].cost)-med(series[4].cost))
	t.Logf("  %-60s %9v / %v", "control: the same, off minus off (CONNECT / HTTP)", med(series[5].cost)-med(series[2].cost), med(series[6].cost)-med(series[4].cost))
}

// lockedBuffer is a bytes.Buffer safe for the browser's output and the
// test reading it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// idChromiumLocalState is the browser-wide preferences file ("Local
// State") given to Chromium's profile: what an institution sets by policy
// (AuthServerAllowlist, DisableAuthNegotiateCnameLookup), without writing
// a machine-wide policy file under /etc/chromium/policies.
//
// Two settings are required, found with Chromium's net log
// (--log-net-log, --net-log-capture-mode=Everything):
//
//   - auth.disable_negotiate_cname_lookup: Chromium builds the proxy's
//     Kerberos principal from the canonical name of the proxy's host, and
//     --host-resolver-rules="MAP proxy.balise.test 127.0.0.1" makes it
//     "127.0.0.1": Chromium asks the KDC for HTTP@127.0.0.1 ("Server not
//     found in Kerberos database") and answers the 407 with nothing. This
//     Chromium has no command-line switch for it
//     (--auth-negotiate-disable-cname-lookup and
//     --disable-auth-negotiate-cname-lookup are ignored): only the policy
//     or this preference. Real deployments name the proxy in DNS (an A
//     record, not a CNAME) and need neither.
//   - net.received_http_auth_negotiate_headers: on Linux, Chromium refuses
//     the Negotiate challenges it receives before this preference is set
//     (ERR_UNSUPPORTED_AUTH_SCHEME, without loading the GSSAPI library),
//     sets it on the first one, and negotiates from then on. A
//     workstation's browser has long done so; a new user data directory
//     has not, and its first page would show the 407's block page.
const idChromiumLocalState = `{"auth": {"disable_negotiate_cname_lookup": true, "server_allowlist": %q}, "net": {"received_http_auth_negotiate_headers": true}}`

// TestIdentityChromium: headless Chromium, with alice's Kerberos
// credentials (KRB5CCNAME, KRB5_CONFIG) and the proxy addressed by name,
// answers the proxy's 407 Negotiate by itself and reaches the listed
// page; a screenshot is saved (BALISE_ARTIFACTS or the test's directory).
func TestIdentityChromium(t *testing.T) {
	chrome := requireTool(t, "chromium")
	requireRoot(t) // the DC, and Chromium as root needs --no-sandbox
	d := idSetup(t)
	s := idStartSites(t)
	in := d.start(t, s, idOptions{})
	alice := d.login(t, "alice")
	_, port, _ := net.SplitHostPort(in.Addr("proxy"))
	dir := t.TempDir()
	netlog := filepath.Join(dir, "netlog.json")
	profile := filepath.Join(dir, "profile")
	if err := os.MkdirAll(profile, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(profile, "Local State"), []byte(fmt.Sprintf(idChromiumLocalState, d.proxy)), 0o600); err != nil {
		t.Fatal(err)
	}
	var out lockedBuffer
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chrome),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.DisableGPU,
		chromedp.UserDataDir(profile),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.ProxyServer("http://" + d.proxy + ":" + port),
		chromedp.Flag("host-resolver-rules", "MAP "+d.proxy+" 127.0.0.1"),
		chromedp.Flag("auth-server-allowlist", d.proxy),
		chromedp.Flag("log-net-log", netlog),
		chromedp.Flag("net-log-capture-mode", "Everything"),
		chromedp.Flag("enable-logging", "stderr"),
		chromedp.Flag("vmodule", "*http_auth*=2,*gssapi*=2"),
		chromedp.Env(alice.Env()...),
		chromedp.CombinedOutput(&out),
	}
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancel()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancel = context.WithTimeout(ctx, 60*time.Second)
	defer cancel()

	page := "http://www.social.test:" + s.httpPort + "/"
	resp, err := chromedp.Run(ctx, chromedp.NavigateResponse(page))
	var body string
	if err == nil {
		body, err = chromedp.Run(ctx, chromedp.Text("body"))
	}
	shot, serr := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if serr == nil {
		p := filepath.Join(idArtifactDir(t), "identity-chromium-alice.png")
		if werr := os.WriteFile(p, shot, 0o644); werr == nil {
			t.Logf("screenshot: %s", p)
		}
	}
	cancel()
	status := int64(0)
	if resp != nil {
		status = resp.Status
	}
	if err != nil || status != 200 || !strings.Contains(body, "hello from www.social.test") {
		nl, _ := os.ReadFile(netlog)
		t.Errorf("Chromium as alice, %s: status %d, err %v, body %.200q\nwant the origin's page\nchromium output:\n%s\nnetlog (auth events):\n%s",
			page, status, err, body, out.String(), idNetlogAuth(nl))
		return
	}
	// Balise saw alice: the allowed decision carries her pseudonym.
	var users []string
	for _, l := range idDecisions(in, 0, "www.social.test") {
		if l.Str("verdict") == "allow" {
			users = append(users, l.Str("user"))
		}
	}
	if len(users) == 0 || !idPseudonymRE.MatchString(users[0]) {
		t.Errorf("allowed decision lines for www.social.test carry users %q, want alice's pseudonym", users)
	}
}

// idNetlogAuth extracts the authentication events of a Chromium net log
// (JSON, possibly unterminated: Chromium is killed), for the failure
// message.
func idNetlogAuth(nl []byte) string {
	lines := strings.Split(string(nl), "\n")
	if len(lines) == 0 {
		return ""
	}
	var head struct {
		Constants struct {
			LogEventTypes map[string]int `json:"logEventTypes"`
		} `json:"constants"`
	}
	json.Unmarshal([]byte(strings.TrimSuffix(lines[0], ",")+"}"), &head)
	names := map[int]string{}
	for k, v := range head.Constants.LogEventTypes {
		names[v] = k
	}
	var b strings.Builder
	for _, l := range lines[1:] {
		var e struct {
			Type   int              `json:"type"`
			Phase  int              `json:"phase"`
			Source struct{ ID int } `json:"source"`
			Params json.RawMessage  `json:"params"`
		}
		if json.Unmarshal([]byte(strings.TrimSuffix(strings.TrimSpace(l), ",")), &e) != nil {
			continue
		}
		n := names[e.Type]
		if strings.Contains(n, "AUTH") || strings.Contains(n, "URL_REQUEST_START_JOB") {
			p := string(e.Params)
			if len(p) > 400 {
				p = p[:400] + "…"
			}
			fmt.Fprintf(&b, "%d %s %d %s\n", e.Source.ID, n, e.Phase, p)
		}
	}
	return b.String()
}
