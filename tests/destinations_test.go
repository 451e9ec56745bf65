package tests

import (
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Destinations the proxy always refuses (loopback, link-local, Balise's
// own listeners...), driven with curl and openssl through the real
// binary: what an attacker on a workstation would try.

// dstFreePort returns a TCP port on 127.0.0.1 that was free a moment ago,
// so that a listener's port can be written into the configuration (and
// into connect_ports) before Balise starts.
func dstFreePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}

// dstConfig is pxConfig's policy with the metrics listener on a known
// port (also a CONNECT port, so that only the destination rule stands
// between a tunnel and it), proxyExtra appended to [proxy] and tail after.
func dstConfig(resolver, metricsPort, httpsPort, proxyExtra, tail string) string {
	return fmt.Sprintf(`
timezone = "UTC"

[[list]]
name = "e2e-social"
display_name = "E2E Social"
category = "networking"
domains = ["e2e-social.test"]

[metrics]
listen = "127.0.0.1:%s"

[dns]
listen = "127.0.0.1:0"
upstreams = ["127.0.0.1:1"]

[proxy]
listen = "127.0.0.1:0"
resolver = %q
connect_ports = [443, %s, %s]
%s
%s`, metricsPort, resolver, metricsPort, httpsPort, proxyExtra, tail)
}

// dstRefused runs curl through the proxy and reports whether the answer
// was Balise's 403 with Proxy-Status destination_ip_prohibited (for a
// CONNECT, curl shows the proxy's answer with -v).
func dstRefused(t *testing.T, proxyURL string, args ...string) (bool, string) {
	t.Helper()
	_, out, errs := pxCurl(t, append([]string{"-g", "-v", "-x", proxyURL}, args...)...)
	all := out + errs
	return strings.Contains(all, "403") && strings.Contains(all, "destination_ip_prohibited"), all
}

func TestDestinationsRefused(t *testing.T) {
	requireTool(t, "curl")
	httpPort, httpsPort := pxOrigins(t)
	metricsPort := dstFreePort(t)
	in := startBalise(t, dstConfig(pxDNS(t), metricsPort, httpsPort, "", ""))
	px := pxRequireProxy(t, in)
	proxyURL := "http://" + px
	dnsPort := ""
	if a := in.Addrs("dns-tcp"); len(a) > 0 {
		_, dnsPort, _ = net.SplitHostPort(a[0])
	}

	refused := []struct {
		name string
		args []string
	}{
		{"metrics by 127.0.0.1", []string{"http://127.0.0.1:" + metricsPort + "/metrics"}},
		{"metrics by ::ffff:127.0.0.1", []string{"http://[::ffff:127.0.0.1]:" + metricsPort + "/metrics"}},
		{"metrics by ::ffff:7f00:1", []string{"http://[::ffff:7f00:1]:" + metricsPort + "/metrics"}},
		{"metrics by localhost", []string{"http://localhost:" + metricsPort + "/metrics"}},
		{"metrics by a name resolving to loopback", []string{"http://rebind.test:" + metricsPort + "/metrics"}},
		{"metrics by 0.0.0.0", []string{"http://0.0.0.0:" + metricsPort + "/metrics"}},
		{"metrics by NAT64", []string{"http://[64:ff9b::7f00:1]:" + metricsPort + "/metrics"}},
		{"::1", []string{"http://[::1]:" + httpPort + "/"}},
		{"loopback origin", []string{"http://127.0.0.1:" + httpPort + "/"}},
		{"loopback origin, other address", []string{"http://127.1.2.3:" + httpPort + "/"}},
		{"name resolving to loopback", []string{"http://rebind.test:" + httpPort + "/"}},
		{"link-local metadata", []string{"http://169.254.169.254/latest/meta-data/"}},
		{"link-local, mapped", []string{"http://[::ffff:169.254.169.254]/latest/meta-data/"}},
		{"6to4 of loopback", []string{"http://[2002:7f00:1::1]:" + httpPort + "/"}},
		{"POST to loopback", []string{"-d", "x=1", "http://127.0.0.1:" + httpPort + "/"}},
		{"WebSocket upgrade to loopback", []string{"-H", "Connection: Upgrade", "-H", "Upgrade: websocket", "http://127.0.0.1:" + httpPort + "/"}},
		{"CONNECT to metrics", []string{"-p", "http://127.0.0.1:" + metricsPort + "/metrics"}},
		{"CONNECT to metrics, mapped", []string{"-p", "http://[::ffff:127.0.0.1]:" + metricsPort + "/metrics"}},
		{"CONNECT to a name resolving to loopback", []string{"-k", "https://rebind.test:" + httpsPort + "/"}},
		{"CONNECT to ::1", []string{"-k", "https://[::1]:" + httpsPort + "/"}},
	}
	if dnsPort != "" {
		refused = append(refused, struct {
			name string
			args []string
		}{"DNS listener", []string{"http://127.0.0.1:" + dnsPort + "/"}})
	}
	for _, tt := range refused {
		ok, out := dstRefused(t, proxyURL, tt.args...)
		if !ok {
			t.Errorf("%s: not refused with 403 destination_ip_prohibited:\n%s", tt.name, out)
		}
		if strings.Contains(out, "balise_proxy_") || strings.Contains(out, "origin /") {
			t.Errorf("%s: the destination answered through the proxy:\n%.400s", tt.name, out)
		}
	}
	// The refusal text is French first, then English.
	_, out, _ := pxCurl(t, "-x", proxyURL, "http://127.0.0.1:"+metricsPort+"/metrics")
	if fr, en := strings.Index(out, "destination interdite"), strings.Index(out, "destination not allowed"); fr < 0 || en < fr {
		t.Errorf("refusal body is not French then English: %q", out)
	}
	n, ok := in.MetricValue("balise_proxy_refusals_total", "mode=explicit", "reason=destination")
	if !ok || n < float64(len(refused)) {
		t.Errorf("balise_proxy_refusals_total{explicit,destination} = %v (%v), want >= %d", n, ok, len(refused))
	}
	logged := false
	for _, l := range in.Lines() {
		if l.Msg() == "refused" && l.Str("reason") == "destination" && l.Str("client") == "127.0.0.1" {
			logged = true
		}
	}
	if !logged {
		t.Errorf("no msg=refused reason=destination line in the log")
	}
}

// TestDestinationsAllowed: allow_destinations covering loopback makes a
// test origin there reachable (by address and by name), while Balise's
// own listeners stay refused.
func TestDestinationsAllowed(t *testing.T) {
	requireTool(t, "curl")
	httpPort, httpsPort := pxOrigins(t)
	metricsPort := dstFreePort(t)
	in := startBalise(t, dstConfig(pxDNS(t), metricsPort, httpsPort, `allow_destinations = ["127.0.0.0/8", "::1/128"]`, ""))
	px := pxRequireProxy(t, in)
	proxyURL := "http://" + px
	for _, u := range []string{"http://127.0.0.1:" + httpPort + "/ok", "http://rebind.test:" + httpPort + "/ok", "http://[::ffff:127.0.0.1]:" + httpPort + "/ok"} {
		_, out, errs := pxCurl(t, "-g", "-x", proxyURL, "-w", "\n%{http_code}", u)
		if status, body := pxStatus(out); status != "200" || body != "origin /ok" {
			t.Errorf("allowed loopback origin %s = %s %q %s", u, status, body, errs)
		}
	}
	_, out, errs := pxCurl(t, "-x", proxyURL, "-k", "-w", "\n%{http_code}", "https://rebind.test:"+httpsPort+"/tls")
	if status, body := pxStatus(out); status != "200" || body != "origin /tls" {
		t.Errorf("allowed loopback HTTPS origin = %s %q %s", status, body, errs)
	}
	dnsTCP := in.Addr("dns-tcp")
	for _, args := range [][]string{
		{"http://" + dnsTCP + "/"},
		{"http://127.0.0.1:" + metricsPort + "/metrics"},
		{"http://[::ffff:127.0.0.1]:" + metricsPort + "/metrics"},
		{"http://rebind.test:" + metricsPort + "/metrics"},
		{"-p", "http://127.0.0.1:" + metricsPort + "/metrics"},
	} {
		if ok, out := dstRefused(t, proxyURL, args...); !ok {
			t.Errorf("metrics listener with loopback allowed (%v): not refused:\n%.600s", args, out)
		}
	}
	// The proxy's own address is its portal, not a destination.
	_, out, _ = pxCurl(t, "-g", "-x", proxyURL, "-w", "\n%{http_code}", "http://[::ffff:127.0.0.1]:"+strings.Split(px, ":")[1]+"/")
	if status, body := pxStatus(out); status != "200" || !strings.Contains(body, "E2E Social") {
		t.Errorf("the proxy's own address, mapped = %s, want the portal", status)
	}
}

// TestDestinationsCAScope: a blocked CONNECT whose ClientHello names an
// unlisted host (here a Microsoft 365 name) gets no certificate at all;
// the blocked listed host gets one that chains to the CA.
func TestDestinationsCAScope(t *testing.T) {
	requireTool(t, "openssl")
	_, httpsPort := pxOrigins(t)
	caDir := pxCA(t)
	caPEM := filepath.Join(caDir, "ca.pem")
	in := startBalise(t, dstConfig(pxDNS(t), dstFreePort(t), httpsPort, "", fmt.Sprintf(`
[proxy.tls]
ca_cert = %q
ca_key = %q
`, caPEM, filepath.Join(caDir, "ca-key.pem"))))
	px := pxRequireProxy(t, in)
	sclient := func(sni string) string {
		t.Helper()
		cmd := exec.Command("openssl", "s_client", "-proxy", px, "-connect", "e2e-social.test:443",
			"-servername", sni, "-CAfile", caPEM, "-verify_return_error", "-showcerts")
		cmd.Stdin = strings.NewReader("")
		out, _ := cmd.CombinedOutput()
		return string(out)
	}
	out := sclient("outlook.office365.com")
	if strings.Contains(out, "BEGIN CERTIFICATE") || !strings.Contains(out, "no peer certificate available") {
		t.Errorf("blocked CONNECT with SNI outlook.office365.com: a certificate was presented:\n%s", out)
	}
	out = sclient("www.e2e-social.test")
	if !strings.Contains(out, "BEGIN CERTIFICATE") || !strings.Contains(out, "Verify return code: 0") || !strings.Contains(out, "www.e2e-social.test") {
		t.Errorf("blocked CONNECT with its own SNI: no certificate chaining to the CA:\n%s", out)
	}
	// Logged (and counted just before) once the failed handshake ends.
	in.WaitLog(0, 5*time.Second, func(l logLine) bool {
		return l.Msg() == "refused" && l.Str("reason") == "cert_scope" && l.Str("destination") == "outlook.office365.com"
	})
	if n, ok := in.MetricValue("balise_proxy_refusals_total", "mode=explicit", "reason=cert_scope"); !ok || n != 1 {
		t.Errorf("balise_proxy_refusals_total{cert_scope} = %v (%v), want 1", n, ok)
	}
}

// TestDestinationsTransparentLoop: a workstation that connects straight
// to the transparent HTTP port (nothing redirected: the original
// destination is Balise itself), by its address or its IPv4-mapped form,
// is refused as a loop, never forwarded back to Balise.
func TestDestinationsTransparentLoop(t *testing.T) {
	requireTool(t, "curl")
	in := startBalise(t, `
timezone = "UTC"

[metrics]
listen = "127.0.0.1:0"

[dns]
listen = []

[proxy]
listen = []
transparent_http = "[::]:0"
`)
	addrs := in.Addrs("transparent-http")
	if len(addrs) == 0 {
		if e2eStrict {
			t.Fatal("BALISE_E2E=1 but this build logs no transparent-http listener")
		}
		t.Skip("this build has no transparent listeners")
	}
	_, port, _ := net.SplitHostPort(addrs[0])
	for _, host := range []string{"127.0.0.1", "[::ffff:127.0.0.1]", "[::1]"} {
		_, out, errs := pxCurl(t, "-g", "-H", "Host: unlisted.test", "-D", "-", "-w", "\n%{http_code}", "http://"+host+":"+port+"/")
		status, body := pxStatus(out)
		// 508 when the kernel reports the original destination (itself),
		// 502 "no usable original destination" when connection tracking
		// is not loaded: either way nothing is forwarded.
		if status != "508" && status != "502" {
			t.Errorf("direct connection to the transparent port via %s = %s, want 508 or 502:\n%s%s", host, status, body, errs)
		}
	}
	loops, _ := in.MetricValue("balise_proxy_refusals_total", "mode=transparent", "reason=loop")
	bad, _ := in.MetricValue("balise_proxy_refusals_total", "mode=transparent", "reason=bad_request")
	if loops+bad != 3 {
		t.Errorf("transparent refusals loop %v + bad_request %v, want 3", loops, bad)
	}
}
