//go:build linux

package tests

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// End-to-end tests of transparent mode with the gateway rule sets of
// deploy/gateway, in the laboratory of transparent_lab_test.go.

// tgRuleVars are the values substituted into a deploy/gateway rule set.
type tgRuleVars struct {
	WSIf, BaliseUser, Mark string
	// LocalIntercept enables the rules, disabled in the shipped files,
	// that send the gateway's own processes through Balise.
	LocalIntercept bool
	// Bypass is a source network that goes around Balise: the bypass_v4
	// set (nftables) or the commented RETURN rules (iptables).
	Bypass string
}

var tgDefine = regexp.MustCompile(`(?m)^define (\w+) = .*$`)

// tgRenderNft returns an nftables file of deploy/gateway with its
// definitions replaced by v.
func tgRenderNft(t *testing.T, name string, v tgRuleVars) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "deploy", "gateway", name))
	if err != nil {
		t.Fatal(err)
	}
	vals := map[string]string{"WS_IF": fmt.Sprintf("%q", v.WSIf), "HTTP_PORT": "3129", "HTTPS_PORT": "3130",
		"BALISE_USER": fmt.Sprintf("%q", v.BaliseUser), "TPROXY_MARK": v.Mark}
	s := tgDefine.ReplaceAllStringFunc(string(b), func(line string) string {
		k := tgDefine.FindStringSubmatch(line)[1]
		val, ok := vals[k]
		if !ok {
			t.Fatalf("%s: unknown definition %s", name, k)
		}
		return "define " + k + " = " + val
	})
	if v.LocalIntercept {
		s = tgUncomment(t, name, s, `(?m)^(\s*)#(.*# local-intercept)$`, "$1$2")
	}
	if v.Bypass != "" {
		s = tgUncomment(t, name, s, `(?m)^(\s*set bypass_v4 \{[^}]*)#elements = \{ 10\.40\.0\.0/24 \}`, "${1}elements = { "+v.Bypass+" }")
	}
	return s
}

// tgRenderIptables returns an iptables-restore file of deploy/gateway with
// its placeholders replaced by v.
func tgRenderIptables(t *testing.T, name string, v tgRuleVars) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "deploy", "gateway", name))
	if err != nil {
		t.Fatal(err)
	}
	s := strings.NewReplacer("@WS_IF@", v.WSIf, "@HTTP_PORT@", "3129", "@HTTPS_PORT@", "3130",
		"@BALISE_USER@", v.BaliseUser, "@TPROXY_MARK@", v.Mark).Replace(string(b))
	if v.LocalIntercept {
		s = tgUncomment(t, name, s, `(?m)^#(-A BALISE_OUTPUT .* REDIRECT .*)$`, "$1")
	}
	if v.Bypass != "" {
		s = tgUncomment(t, name, s, `(?m)^#(-A BALISE_\w+ -s )10\.40\.0\.0/24( -j RETURN)$`, "${1}"+v.Bypass+"$2")
	}
	if m := regexp.MustCompile(`@[A-Z_]+@`).FindString(s); m != "" {
		t.Fatalf("%s: placeholder %s left", name, m)
	}
	return s
}

// tgUncomment replaces every match of pattern in the rule set text by repl,
// failing the test when there is none: the optional rules the test
// enables must exist in the shipped file.
func tgUncomment(t *testing.T, name, text, pattern, repl string) string {
	t.Helper()
	re := regexp.MustCompile(pattern)
	if !re.MatchString(text) {
		t.Fatalf("%s: no line matches %s", name, pattern)
	}
	return re.ReplaceAllString(text, repl)
}

// apply loads a rendered rule set into gw with the given command (nft -f
// or iptables-restore --noflush) reading it from a file.
func (l *tgLab) apply(t *testing.T, text string, cmd ...string) {
	t.Helper()
	f := filepath.Join(l.dir, fmt.Sprintf("rules-%d", time.Now().UnixNano()))
	if err := os.WriteFile(f, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	l.gw.run(t, append(cmd, f)...)
}

// is listed and blocked by default, allowed for the autorises group.
func tgConfig(resolver, mode, tail string) string {
	return fmt.Sprintf(`
timezone = "UTC"
institution = "CISSS de l'Essai"

[[list]]
name = "essai-social"
display_name = %q
category = "networking"
domains = [%q]

[[group]]
name = "autorises"
networks = ["%s/32"]

[[group]]
name = "personnel"
networks = ["192.0.2.0/24"]

[[rule]]
name = "autorises"
groups = ["autorises"]
services = ["*"]
action = "allow"

[metrics]
listen = "127.0.0.1:0"

[dns]
listen = []

[proxy]
listen = []
allowed_clients = ["192.0.2.0/24", "2001:db8:1::/64", "%s/32"]
resolver = %q
transparent_http = "0.0.0.0:3129"
transparent_https = "0.0.0.0:3130"
transparent_mode = %q
%s`, tgService, tgListed, tgAutorises, tgGatewayOut, resolver, mode, tail)
}

// tgRequireTransparent skips (or fails under BALISE_E2E=1) when this build
// logs no transparent listeners.
func tgRequireTransparent(t *testing.T, in *instance) {
	t.Helper()
	if len(in.Addrs("transparent-http")) == 0 || len(in.Addrs("transparent-https")) == 0 {
		if e2eStrict {
			t.Fatalf("BALISE_E2E=1 but this build logs no transparent listeners; log:\n%s", in.Stderr())
		}
		t.Skip("this build has no transparent listeners (the gateway plumbing and rule sets passed)")
	}
}

// TestGatewayRuleSets checks that every rule set of deploy/gateway loads
// (nft -c, iptables-restore --test, ip6tables-restore --test) in a fresh
// namespace once its placeholders are filled in, and that none leaves one
// unfilled.
func TestGatewayRuleSets(t *testing.T) {
	requireRoot(t)
	requireTool(t, "ip")
	v := tgRuleVars{WSIf: "eth1", BaliseUser: "root", Mark: "0x1"}
	n := tgNetns(fmt.Sprintf("bal-chk-%x%x", os.Getpid()&0xfff, tgSeq.Add(1)))
	tgIP(t, "netns", "add", string(n))
	t.Cleanup(func() { exec.Command("ip", "netns", "del", string(n)).Run() })
	dir := t.TempDir()
	check := func(t *testing.T, text string, cmd ...string) {
		t.Helper()
		f := filepath.Join(dir, "rules")
		if err := os.WriteFile(f, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		n.run(t, append(cmd, f)...)
	}
	for _, name := range []string{"nftables-redirect.nft", "nftables-tproxy.nft"} {
		t.Run(name, func(t *testing.T) {
			requireTool(t, "nft")
			check(t, tgRenderNft(t, name, v), "nft", "-c", "-f")
			lv := v
			lv.LocalIntercept, lv.Bypass = strings.Contains(name, "redirect"), "192.0.2.0/24"
			check(t, tgRenderNft(t, name, lv), "nft", "-c", "-f")
		})
	}
	for _, name := range []string{"iptables-redirect.rules", "iptables-tproxy.rules"} {
		t.Run(name, func(t *testing.T) {
			for _, tool := range []string{"iptables-restore", "ip6tables-restore"} {
				requireTool(t, tool)
				check(t, tgRenderIptables(t, name, v), tool, "--noflush", "--test")
			}
			lv := v
			lv.LocalIntercept, lv.Bypass = strings.Contains(name, "redirect"), "192.0.2.0/24"
			check(t, tgRenderIptables(t, name, lv), "iptables-restore", "--noflush", "--test")
		})
	}
	t.Run("tproxy-routing.sh", func(t *testing.T) {
		requireTool(t, "sh")
		n.run(t, "sh", "-n", filepath.Join("..", "deploy", "gateway", "tproxy-routing.sh"))
	})
}

// TestTransparentGateway proves transparent interception end to end, per
// rule set of deploy/gateway: a workstation's HTTP and HTTPS to a listed
// name are blocked (block page, or a TLS alert without the CA), an
// unlisted name and an authorized address reach the origin through
// Balise, the server name decides rather than the address, no_sni works
// both ways, QUIC does not cross the gateway, Balise's own connections
// never loop, the transparent ports refuse direct connections, and the
// bypass set goes around Balise.
func TestTransparentGateway(t *testing.T) {
	requireRoot(t)
	requireTool(t, "ip")
	requireTool(t, "curl")
	requireTool(t, "setpriv")
	for _, tc := range []struct {
		name, mode, tool string
		apply            func(t *testing.T, l *tgLab, v tgRuleVars)
	}{
		{"nftables-redirect", "redirect", "nft", func(t *testing.T, l *tgLab, v tgRuleVars) {
			l.apply(t, tgRenderNft(t, "nftables-redirect.nft", v), "nft", "-f")
		}},
		{"nftables-tproxy", "tproxy", "nft", func(t *testing.T, l *tgLab, v tgRuleVars) {
			l.apply(t, tgRenderNft(t, "nftables-tproxy.nft", v), "nft", "-f")
			l.gw.run(t, "env", "TPROXY_MARK="+v.Mark, "sh", filepath.Join("..", "deploy", "gateway", "tproxy-routing.sh"), "add")
		}},
		{"iptables-redirect", "redirect", "iptables-restore", func(t *testing.T, l *tgLab, v tgRuleVars) {
			l.apply(t, tgRenderIptables(t, "iptables-redirect.rules", v), "iptables-restore", "--noflush")
			v.Bypass = "" // the same file for IPv6, without IPv4 addresses
			l.apply(t, tgRenderIptables(t, "iptables-redirect.rules", v), "ip6tables-restore", "--noflush")
		}},
		{"iptables-tproxy", "tproxy", "iptables-restore", func(t *testing.T, l *tgLab, v tgRuleVars) {
			l.apply(t, tgRenderIptables(t, "iptables-tproxy.rules", v), "iptables-restore", "--noflush")
			v.Bypass = ""
			l.apply(t, tgRenderIptables(t, "iptables-tproxy.rules", v), "ip6tables-restore", "--noflush")
			l.gw.run(t, "env", "TPROXY_MARK="+v.Mark, "sh", filepath.Join("..", "deploy", "gateway", "tproxy-routing.sh"), "add")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			requireTool(t, tc.tool)
			tgGateway(t, tc.mode, tc.apply)
		})
	}
}

func tgGateway(t *testing.T, mode string, apply func(*testing.T, *tgLab, tgRuleVars)) {
	l := newTGLab(t)

	// Plumbing, before any rule: the workstation reaches the origins
	// directly (the origin sees the workstation's own address).
	if code, status, body := l.curl(t, tgPersonnel, "--resolve", tgUnlisted+":80:"+tgUnlistedIP, "http://"+tgUnlisted+"/"); code != 0 || status != "200" || !strings.Contains(body, "from="+tgPersonnel) {
		t.Fatalf("before the rules, HTTP from the workstation = curl %d, %s %q; want 200 from %s", code, status, body, tgPersonnel)
	}
	if code, status, body := l.curl(t, tgPersonnel6, "--resolve", tgUnlisted+":80:["+tgUnlistedIP6+"]", "http://"+tgUnlisted+"/"); code != 0 || status != "200" || !strings.Contains(body, "from="+tgPersonnel6) {
		t.Fatalf("before the rules, IPv6 HTTP from the workstation = curl %d, %s %q; want 200 from %s", code, status, body, tgPersonnel6)
	}
	if !l.udpPasses(t, tgPersonnel, "443") {
		t.Fatal("before the rules, UDP 443 does not reach the internet namespace: the QUIC check would prove nothing")
	}

	// Balise runs as root here, so root is the account the loop guard
	// exempts; the gateway's own test client runs as nobody.
	apply(t, l, tgRuleVars{WSIf: l.wsIf, BaliseUser: "root", Mark: "0x1", LocalIntercept: mode == "redirect", Bypass: tgBypass + "/32"})

	t.Run("QUIC dropped", func(t *testing.T) {
		if l.udpPasses(t, tgPersonnel, "443") {
			t.Error("a UDP 443 datagram from a workstation crossed the gateway")
		}
		if !l.udpPasses(t, tgPersonnel, "4443") {
			t.Error("a UDP 4443 datagram from a workstation did not cross the gateway: the rule set drops more than QUIC")
		}
		if !l.udpPasses(t, tgBypass, "443") {
			t.Error("a UDP 443 datagram from the bypass set did not cross the gateway")
		}
	})

	resolver := l.startStubDNS(t)
	caDir := t.TempDir()
	if out, errs, code := runBalise(t, "ca", "init", "--out", caDir); code != 0 {
		t.Fatalf("balise ca init = %d\n%s%s", code, out, errs)
	}
	caPEM := filepath.Join(caDir, "ca.pem")
	listedHTTP := "http://" + tgListed + "/"
	listedHTTPS := "https://" + tgListed + "/"
	resolve80 := tgListed + ":80:" + tgListedIP
	resolve443 := tgListed + ":443:" + tgListedIP

	// Without the institution's CA, a blocked HTTPS connection ends with a
	// TLS alert: no certificate, no response, no hang. With no_sni =
	// "deny" (the default, set here all the same), so does a ClientHello
	// without a server name.
	in := l.startBalise(t, tgConfig(resolver, mode, `no_sni = "deny"`))
	tgRequireTransparent(t, in)
	t.Run("HTTPS blocked without CA", func(t *testing.T) {
		l.wantTLSAlert(t, tgListed, tgListedIP+":443")
		if code, status, body := l.curl(t, tgPersonnel, "--resolve", resolve443, "--cacert", l.originCA, listedHTTPS); code == 0 || status != "000" || strings.Contains(body, "origin ") {
			t.Errorf("curl HTTPS to the listed name without CA = curl %d, %s %q; want a TLS failure and no response", code, status, body)
		}
	})
	t.Run("HTTPS without SNI denied", func(t *testing.T) {
		l.wantTLSAlert(t, "", tgUnlistedIP+":443")
	})
	if code := in.Stop(); code != 0 {
		t.Fatalf("balise exited with %d", code)
	}

	in = l.startBalise(t, tgConfig(resolver, mode, fmt.Sprintf("no_sni = \"allow\"\n[proxy.tls]\nca_cert = %q\nca_key = %q\n", caPEM, filepath.Join(caDir, "ca-key.pem"))))
	tgRequireTransparent(t, in)
	viaBalise := "from=" + tgGatewayOut
	for _, c := range []struct {
		name, src      string
		args           []string
		status, inBody string
	}{
		{"HTTP listed blocked", tgPersonnel, []string{"--resolve", resolve80, listedHTTP}, "403", tgService},
		{"HTTPS listed block page", tgPersonnel, []string{"--resolve", resolve443, "--cacert", caPEM, listedHTTPS}, "403", tgService},
		{"HTTP unlisted through Balise", tgPersonnel, []string{"--resolve", tgUnlisted + ":80:" + tgUnlistedIP, "http://" + tgUnlisted + "/"},
			"200", "origin " + tgUnlistedIP + " http host=" + tgUnlisted + " " + viaBalise},
		{"HTTPS unlisted through Balise", tgPersonnel, []string{"--resolve", tgUnlisted + ":443:" + tgUnlistedIP, "--cacert", l.originCA, "https://" + tgUnlisted + "/"},
			"200", "origin " + tgUnlistedIP + " https host=" + tgUnlisted + " " + viaBalise},
		{"HTTP listed allowed for autorises", tgAutorises, []string{"--resolve", resolve80, listedHTTP},
			"200", "origin " + tgListedIP + " http host=" + tgListed + " " + viaBalise},
		{"HTTPS listed allowed for autorises", tgAutorises, []string{"--resolve", resolve443, "--cacert", l.originCA, listedHTTPS},
			"200", "origin " + tgListedIP + " https host=" + tgListed + " " + viaBalise},
		// The server name decides, not the address: a listed name sent
		// to the unlisted name's address is still blocked.
		{"HTTPS listed SNI to an unlisted address", tgPersonnel, []string{"--resolve", tgListed + ":443:" + tgUnlistedIP, "--cacert", caPEM, listedHTTPS}, "403", tgService},
		{"HTTPS listed SNI to an unlisted address for autorises", tgAutorises, []string{"--resolve", tgListed + ":443:" + tgUnlistedIP, "--cacert", l.originCA, listedHTTPS},
			"200", "origin " + tgUnlistedIP + " https host=" + tgListed + " " + viaBalise},
		// no_sni = "allow" (set above; "deny" is the default): decided on
		// the destination address.
		{"HTTPS without SNI allowed", tgPersonnel, []string{"-k", "https://" + tgUnlistedIP + "/"},
			"200", "origin " + tgUnlistedIP + " https host=" + tgUnlistedIP + " " + viaBalise},
		// IPv6 (IP6T_SO_ORIGINAL_DST, or TPROXY over IPv6).
		{"IPv6 HTTP listed blocked", tgPersonnel6, []string{"--resolve", tgListed + ":80:[" + tgListedIP6 + "]", listedHTTP}, "403", tgService},
		{"IPv6 HTTPS listed block page", tgPersonnel6, []string{"--resolve", tgListed + ":443:[" + tgListedIP6 + "]", "--cacert", caPEM, listedHTTPS}, "403", tgService},
		{"IPv6 HTTP unlisted through Balise", tgPersonnel6, []string{"--resolve", tgUnlisted + ":80:[" + tgUnlistedIP6 + "]", "http://" + tgUnlisted + "/"},
			"200", "origin " + tgUnlistedIP6 + " http host=" + tgUnlisted + " from=" + tgGatewayOut6},
		{"IPv6 HTTPS unlisted through Balise", tgPersonnel6, []string{"--resolve", tgUnlisted + ":443:[" + tgUnlistedIP6 + "]", "--cacert", l.originCA, "https://" + tgUnlisted + "/"},
			"200", "origin " + tgUnlistedIP6 + " https host=" + tgUnlisted + " from=" + tgGatewayOut6},
		// The bypass set goes around Balise: the origin sees the
		// workstation itself.
		{"bypass set not redirected", tgBypass, []string{"--resolve", resolve80, listedHTTP}, "200", "from=" + tgBypass},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, status, body := l.curl(t, c.src, c.args...)
			if code != 0 || status != c.status || !strings.Contains(body, c.inBody) {
				t.Errorf("curl from %s %v = curl %d, %s %.300q; want %s with %q", c.src, c.args, code, status, body, c.status, c.inBody)
			}
		})
	}
	// A workstation connecting to the transparent ports directly would
	// have Balise connect to itself: the rule sets refuse it.
	t.Run("transparent ports not reachable directly", func(t *testing.T) {
		for _, u := range []string{"http://" + tgGatewayWS + ":3129/", "https://" + tgGatewayWS + ":3130/"} {
			if code, status, body := l.curl(t, tgPersonnel, "-k", u); code != 7 {
				t.Errorf("curl %s from the workstation = curl %d, %s %.200q; want 7 (connection refused)", u, code, status, body)
			}
		}
	})
	if mode == "redirect" {
		// The gateway's own processes, redirected by the local-intercept
		// rules, reach the origin through Balise; Balise's own
		// connections are exempt, or this would loop (HTTP: a 502 on its
		// own Via header).
		t.Run("local process through Balise without loop", func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			out, err := l.gw.cmd(ctx, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
				"curl", "-sS", "--max-time", "10", "--resolve", tgUnlisted+":80:"+tgUnlistedIP, "http://"+tgUnlisted+"/").CombinedOutput()
			if err != nil || !strings.Contains(string(out), "origin "+tgUnlistedIP+" http host="+tgUnlisted+" "+viaBalise) || strings.Contains(string(out), "via=-") {
				t.Errorf("curl as nobody on the gateway = %v\n%s\nwant the origin, through Balise (with a Via header)", err, out)
			}
		})
	}
	// Decisions about the listed service are logged, with the transparent
	// front and the workstation's address; unlisted browsing never is.
	t.Run("decision log", func(t *testing.T) {
		found := false
		for _, line := range in.Lines() {
			if line.Msg() != "decision" {
				continue
			}
			if h := line.Str("host"); h != tgListed {
				t.Errorf("decision line about %q, want only %s: %v", h, tgListed, line)
			}
			if line.Str("front") == "transparent" && line.Str("client") == tgPersonnel && line.Str("verdict") == "block" {
				found = true
			}
		}
		if !found {
			t.Errorf("no decision line front=transparent client=%s verdict=block host=%s", tgPersonnel, tgListed)
		}
	})
	t.Run("metrics", func(t *testing.T) {
		m := l.metrics(t, in)
		for _, c := range []struct {
			name   string
			labels []string
			min    float64
		}{
			{"balise_proxy_requests_total", []string{"mode=transparent", "kind=http", "verdict=block"}, 1},
			{"balise_proxy_requests_total", []string{"mode=transparent", "kind=connect", "verdict=block"}, 1},
			{"balise_proxy_requests_total", []string{"mode=transparent", "kind=connect", "verdict=allow"}, 1},
			{"balise_proxy_interceptions_total", nil, 2},
			{"balise_proxy_sni_mismatch_total", []string{"mode=transparent"}, 1},
		} {
			if v := tgMetricSum(m, c.name, c.labels...); v < c.min {
				t.Errorf("gateway %s%v = %v, want >= %v", c.name, c.labels, v, c.min)
			}
		}
	})
}

// tgMetricSum adds up every sample of metric name whose labels include
// every "key=value" of labels, in a Prometheus text exposition.
func tgMetricSum(text, name string, labels ...string) float64 {
	var sum float64
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name) {
			continue
		}
		if v, ok := metricValue(line, name, labels...); ok {
			sum += v
		}
	}
	return sum
}
