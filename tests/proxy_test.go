package tests

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// pxDNS answers every A query for a name under .test with 127.0.0.1
// (NXDOMAIN for anything else): the proxy's resolver in these tests.
func pxDNS(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		switch {
		case !strings.HasSuffix(strings.ToLower(q.Name), ".test."):
			m.Rcode = dns.RcodeNameError
		case q.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
				A: net.IPv4(127, 0, 0, 1)})
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

// pxOrigins starts a plain HTTP and an HTTPS origin on 127.0.0.1. Both
// answer "origin <path>"; /stream sends a byte every 100 ms for a minute.
func pxOrigins(t *testing.T) (httpPort, httpsPort string) {
	t.Helper()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stream" {
			for range 600 {
				if _, err := io.WriteString(w, "."); err != nil {
					return
				}
				w.(http.Flusher).Flush()
				select {
				case <-r.Context().Done():
					return
				case <-time.After(100 * time.Millisecond):
				}
			}
			return
		}
		io.WriteString(w, "origin "+r.URL.Path)
	})
	plain := httptest.NewUnstartedServer(h)
	plain.Config.ErrorLog = log.New(io.Discard, "", 0)
	plain.Start()
	t.Cleanup(plain.Close)
	tls := httptest.NewUnstartedServer(h)
	tls.Config.ErrorLog = log.New(io.Discard, "", 0)
	tls.StartTLS()
	t.Cleanup(tls.Close)
	_, httpPort, _ = net.SplitHostPort(plain.Listener.Addr().String())
	_, httpsPort, _ = net.SplitHostPort(tls.Listener.Addr().String())
	return httpPort, httpsPort
}

// pxConfig lists e2e-social.test (display name "E2E Social"), blocked by
// default and allowed for the group of 127.0.0.2. The origins of these
// tests listen on loopback, so allow_destinations exempts it (Balise's
// own listeners stay refused: destinations_test.go). proxyExtra is
// appended to [proxy]; tail comes after it (e.g. [proxy.tls],
// [[schedule]]).
func pxConfig(resolver, httpsPort, proxyExtra, tail string) string {
	return fmt.Sprintf(`
timezone = "UTC"
institution = "CISSS de l'Essai"
block_message = "Les médias sociaux sont réservés aux pauses."
block_message_en = "Social media are for breaks."

[[list]]
name = "e2e-social"
display_name = "E2E Social"
category = "networking"
domains = ["e2e-social.test"]

[[group]]
name = "comms"
networks = ["127.0.0.2/32"]

[[rule]]
name = "comms"
groups = ["comms"]
services = ["*"]
action = "allow"

[metrics]
listen = "127.0.0.1:0"

[dns]
listen = "127.0.0.1:0"
upstreams = ["127.0.0.1:1"]

[proxy]
listen = "127.0.0.1:0"
resolver = %q
connect_ports = [443, %s]
allow_destinations = ["127.0.0.0/8", "::1/128"]
%s
%s`, resolver, httpsPort, proxyExtra, tail)
}

// pxRequireProxy skips (or fails under BALISE_E2E=1) when this build
// logs no proxy listener.
func pxRequireProxy(t *testing.T, in *instance) string {
	t.Helper()
	if len(in.Addrs("proxy")) == 0 {
		if e2eStrict {
			t.Fatal("BALISE_E2E=1 but this build logs no proxy listener")
		}
		t.Skip("this build has no proxy front-end")
	}
	return in.Addr("proxy")
}

// pxCurl runs curl with args and returns its exit code, stdout and stderr.
func pxCurl(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "curl", append([]string{"-sS", "--max-time", "20"}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return exitCode(err), out.String(), errb.String()
}

// pxStatus is curl's -w %{http_code} appended to the body.
func pxStatus(out string) (string, string) {
	i := strings.LastIndexByte(out, '\n')
	if i < 0 {
		return out, ""
	}
	return out[i+1:], out[:i]
}

// pxCA runs `balise ca init` into a new directory and returns it.
func pxCA(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if out, errs, code := runBalise(t, "ca", "init", "--out", dir); code != 0 {
		t.Fatalf("balise ca init = %d\n%s%s", code, out, errs)
	}
	return dir
}

func TestCAInit(t *testing.T) {
	dir := pxCA(t)
	st, err := os.Stat(filepath.Join(dir, "ca-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("ca-key.pem mode = %v, want 0600", st.Mode().Perm())
	}
	b, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatal("ca.pem holds no PEM block")
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil || !cert.IsCA {
		t.Fatalf("ca.pem: %v, IsCA %v", err, cert != nil && cert.IsCA)
	}
	if _, _, code := runBalise(t, "ca", "init", "--out", dir); code != 1 {
		t.Errorf("balise ca init over existing files = %d, want 1", code)
	}
	if _, _, code := runBalise(t, "ca", "init"); code != 2 {
		t.Errorf("balise ca init without --out = %d, want 2", code)
	}
	requireTool(t, "openssl")
	out, err := exec.Command("openssl", "x509", "-in", filepath.Join(dir, "ca.pem"), "-noout", "-text").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "CA:TRUE") {
		t.Errorf("openssl x509 on ca.pem: %v\n%s", err, out)
	}
}

func TestProxyCurl(t *testing.T) {
	requireTool(t, "curl")
	httpPort, httpsPort := pxOrigins(t)
	caDir := pxCA(t)
	cfg := pxConfig(pxDNS(t), httpsPort, `direct_domains = ["intranet.test"]`, fmt.Sprintf(`
[proxy.tls]
ca_cert = %q
ca_key = %q
`, filepath.Join(caDir, "ca.pem"), filepath.Join(caDir, "ca-key.pem")))
	in := startBalise(t, cfg)
	px := pxRequireProxy(t, in)
	proxyURL := "http://" + px
	blocked := "http://e2e-social.test:" + httpPort + "/page"

	t.Run("plain HTTP blocked shows the block page", func(t *testing.T) {
		code, out, errs := pxCurl(t, "-x", proxyURL, "-D", "-", "-w", "\n%{http_code}", blocked)
		status, body := pxStatus(out)
		if code != 0 || status != "403" {
			t.Fatalf("curl %s = exit %d status %s\n%s", blocked, code, status, errs)
		}
		for _, want := range []string{"E2E Social", "CISSS de l&#39;Essai", "Les médias sociaux sont réservés aux pauses.", "Social media are for breaks.", "Cache-Control: no-store"} {
			if !strings.Contains(body, want) {
				t.Errorf("block page lacks %q", want)
			}
		}
		if strings.Index(body, `lang="fr"`) > strings.Index(body, `<section lang="en"`) {
			t.Errorf("block page is not French first")
		}
		_, out, _ = pxCurl(t, "-x", proxyURL, "-H", "Accept-Language: en-CA,en;q=0.9", blocked)
		if strings.Index(out, `<section lang="en"`) > strings.Index(out, `<section lang="fr"`) {
			t.Errorf("block page is not English first for an English browser")
		}
	})
	t.Run("unlisted passes", func(t *testing.T) {
		_, out, errs := pxCurl(t, "-x", proxyURL, "-w", "\n%{http_code}", "http://elsewhere.test:"+httpPort+"/x")
		if status, body := pxStatus(out); status != "200" || body != "origin /x" {
			t.Errorf("unlisted through proxy = %s %q %s", status, body, errs)
		}
	})
	t.Run("authorized group passes", func(t *testing.T) {
		_, out, errs := pxCurl(t, "-x", proxyURL, "--interface", "127.0.0.2", "-w", "\n%{http_code}", blocked)
		if status, body := pxStatus(out); status != "200" || body != "origin /page" {
			t.Errorf("authorized client = %s %q %s", status, body, errs)
		}
	})
	t.Run("HTTPS blocked is intercepted with the CA", func(t *testing.T) {
		_, out, errs := pxCurl(t, "-x", proxyURL, "--cacert", filepath.Join(caDir, "ca.pem"), "-w", "\n%{http_code}", "https://www.e2e-social.test/")
		status, body := pxStatus(out)
		if status != "403" || !strings.Contains(body, "E2E Social") {
			t.Errorf("blocked HTTPS with the CA trusted = %s %.200q %s", status, body, errs)
		}
	})
	t.Run("HTTPS allowed is never decrypted", func(t *testing.T) {
		// The origin's own certificate comes through (curl -k), not one of the CA.
		_, out, errs := pxCurl(t, "-x", proxyURL, "-k", "-v", "-w", "\n%{http_code}", "https://elsewhere.test:"+httpsPort+"/tls")
		if status, body := pxStatus(out); status != "200" || body != "origin /tls" {
			t.Errorf("allowed HTTPS = %s %q", status, body)
		}
		if strings.Contains(errs, "Balise pilot CA") {
			t.Errorf("allowed HTTPS was intercepted:\n%s", errs)
		}
	})
	t.Run("CONNECT to a port not allowed", func(t *testing.T) {
		code, _, errs := pxCurl(t, "-x", proxyURL, "-v", "https://elsewhere.test:8443/")
		if code == 0 || !strings.Contains(errs, "403") {
			t.Errorf("CONNECT to port 8443 = exit %d\n%s", code, errs)
		}
	})
	t.Run("PAC", func(t *testing.T) {
		_, out, _ := pxCurl(t, "-D", "-", proxyURL+"/proxy.pac")
		for _, want := range []string{"application/x-ns-proxy-autoconfig", "FindProxyForURL", `"PROXY ` + px + `"`, `".intranet.test"`} {
			if !strings.Contains(out, want) {
				t.Errorf("PAC lacks %q:\n%s", want, out)
			}
		}
		_, out, _ = pxCurl(t, "-D", "-", proxyURL+"/wpad.dat")
		if !strings.Contains(out, "FindProxyForURL") {
			t.Errorf("wpad.dat:\n%s", out)
		}
	})
	t.Run("portal", func(t *testing.T) {
		_, out, _ := pxCurl(t, "-w", "\n%{http_code}", proxyURL+"/")
		if status, body := pxStatus(out); status != "200" || !strings.Contains(body, "E2E Social") {
			t.Errorf("portal = %s %.300q", status, body)
		}
	})
	t.Run("decision log", func(t *testing.T) {
		var sawHTTP bool
		for _, l := range in.Lines() {
			if l.Msg() != "decision" {
				continue
			}
			if strings.Contains(l.Str("host"), "elsewhere") {
				t.Errorf("unlisted browsing was logged: %v", l)
			}
			if l.Str("front") == "http" && l.Str("service") == "e2e-social" && l.Str("verdict") == "block" {
				sawHTTP = true
			}
		}
		if !sawHTTP {
			t.Errorf("no decision line for the blocked HTTP request")
		}
		_, body := in.Get("/metrics")
		for _, want := range []string{
			`balise_proxy_requests_total{kind="http",mode="explicit",reason="default",verdict="block"}`,
			`balise_proxy_refusals_total{mode="explicit",reason="port"} 1`,
			`balise_proxy_interceptions_total 1`,
		} {
			if !strings.Contains(body, want) {
				t.Errorf("/metrics lacks %s", want)
			}
		}
	})
}

func TestProxyNotOpen(t *testing.T) {
	requireTool(t, "curl")
	httpPort, httpsPort := pxOrigins(t)
	in := startBalise(t, pxConfig(pxDNS(t), httpsPort, `allowed_clients = ["127.0.0.2/32"]`, ""))
	px := pxRequireProxy(t, in)
	_, out, _ := pxCurl(t, "-x", "http://"+px, "-D", "-", "-w", "\n%{http_code}", "http://elsewhere.test:"+httpPort+"/")
	if status, body := pxStatus(out); status != "403" || !strings.Contains(body, "Proxy-Status: balise; error=http_request_denied") {
		t.Errorf("client outside allowed_clients = %s\n%s", status, body)
	}
	_, out, _ = pxCurl(t, "-x", "http://"+px, "--interface", "127.0.0.2", "-w", "\n%{http_code}", "http://elsewhere.test:"+httpPort+"/")
	if status, _ := pxStatus(out); status != "200" {
		t.Errorf("client inside allowed_clients = %s", status)
	}
}

func TestProxyHTTPSWithoutCA(t *testing.T) {
	requireTool(t, "curl")
	_, httpsPort := pxOrigins(t)
	in := startBalise(t, pxConfig(pxDNS(t), httpsPort, "", ""))
	px := pxRequireProxy(t, in)
	code, _, errs := pxCurl(t, "-x", "http://"+px, "-v", "https://e2e-social.test/")
	if code == 0 || !strings.Contains(errs, "403") || !strings.Contains(errs, "Proxy-Status: balise; error=http_request_denied") || !strings.Contains(errs, "E2E Social") {
		t.Errorf("blocked CONNECT without CA = exit %d, want 403 with Proxy-Status naming the service\n%s", code, errs)
	}
}

// TestProxySNI checks the ClientHello's server name against the policy
// with openssl s_client: an allowed CONNECT host does not let a listed
// SNI through.
func TestProxySNI(t *testing.T) {
	requireTool(t, "openssl")
	_, httpsPort := pxOrigins(t)
	in := startBalise(t, pxConfig(pxDNS(t), httpsPort, "", ""))
	px := pxRequireProxy(t, in)
	run := func(servername string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, "openssl", "s_client", "-proxy", px, "-connect", "allowed-host.test:"+httpsPort,
			"-servername", servername, "-brief")
		cmd.Stdin = strings.NewReader("")
		out, _ := cmd.CombinedOutput()
		return string(out)
	}
	out := run("e2e-social.test")
	if !strings.Contains(strings.ToLower(out), "access denied") {
		t.Errorf("s_client with a listed SNI behind an allowed CONNECT:\n%s\nwant a TLS access_denied alert", out)
	}
	out = run("example.com")
	if !strings.Contains(out, "CONNECTION ESTABLISHED") && !strings.Contains(out, "Protocol version") {
		t.Errorf("s_client with an unlisted SNI:\n%s\nwant a handshake", out)
	}
	_, body := in.Get("/metrics")
	if !strings.Contains(body, `balise_proxy_sni_mismatch_total{mode="explicit"} 1`) {
		t.Errorf("/metrics lacks sni_mismatch 1")
	}
}

// TestProxyTunnelClosesWhenBreakEnds opens a tunnel to the listed service
// during a break that ends a few seconds later: curl's transfer is cut
// when the break ends.
func TestProxyTunnelClosesWhenBreakEnds(t *testing.T) {
	requireTool(t, "curl")
	_, httpsPort := pxOrigins(t)
	// The break ends 8 s from now: long enough for Balise to start and
	// curl to get through on a loaded machine, short enough for a test.
	const breakLeft = 8 * time.Second
	now := time.Now().UTC()
	end := now.Add(breakLeft)
	if end.Day() != now.Day() || now.Add(-time.Minute).Day() != now.Day() {
		time.Sleep(breakLeft + time.Second) // do not straddle midnight
		now = time.Now().UTC()
		end = now.Add(breakLeft)
	}
	tail := fmt.Sprintf(`
[[schedule]]
name = "pause"
windows = ["daily %s-%s"]

[[rule]]
name = "pause"
groups = ["*"]
services = ["e2e-social"]
during = ["pause"]
action = "allow"
`, now.Add(-time.Minute).Format("15:04:05"), end.Format("15:04:05"))
	in := startBalise(t, pxConfig(pxDNS(t), httpsPort, "", tail))
	px := pxRequireProxy(t, in)
	start := time.Now()
	code, out, errs := pxCurl(t, "-x", "http://"+px, "-k", "https://e2e-social.test:"+httpsPort+"/stream")
	el := time.Since(start)
	if code == 0 {
		t.Fatalf("curl finished normally after %v, want the tunnel cut at the break's end", el)
	}
	if len(out) == 0 {
		t.Errorf("no byte came through the tunnel during the break (curl: %s)", errs)
	}
	if until := time.Until(end); el > 15*time.Second || until > time.Second {
		t.Errorf("tunnel closed after %v (break end in %v)", el, until)
	}
	_, body := in.Get("/metrics")
	if !strings.Contains(body, `balise_proxy_tunnels_closed_total{cause="until",mode="explicit"} 1`) {
		t.Errorf("/metrics: tunnels_closed{until} is not 1")
	}
	// After the break, the service is blocked again.
	code, _, errs = pxCurl(t, "-x", "http://"+px, "-k", "-v", "https://e2e-social.test:"+httpsPort+"/")
	if code == 0 || !strings.Contains(errs, "403") {
		t.Errorf("after the break: curl exit %d\n%s", code, errs)
	}
}

// pxChromium runs headless Chromium with flags and returns the dumped DOM.
func pxChromium(t *testing.T, flags ...string) string {
	t.Helper()
	bin := requireTool(t, "chromium")
	base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--user-data-dir=" + t.TempDir()}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append(base, flags...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil && out.Len() == 0 {
		t.Fatalf("chromium %v: %v\n%s", flags, err, errb.String())
	}
	return out.String()
}

func TestProxyChromium(t *testing.T) {
	requireTool(t, "chromium")
	httpPort, httpsPort := pxOrigins(t)
	caDir := pxCA(t)
	cfg := pxConfig(pxDNS(t), httpsPort, "", fmt.Sprintf(`
[proxy.tls]
ca_cert = %q
ca_key = %q
`, filepath.Join(caDir, "ca.pem"), filepath.Join(caDir, "ca-key.pem")))
	in := startBalise(t, cfg)
	px := pxRequireProxy(t, in)
	page := "http://e2e-social.test:" + httpPort + "/news"
	isBlockPage := func(how, dom string) {
		t.Helper()
		if !strings.Contains(dom, "E2E Social") || !strings.Contains(dom, `lang="fr"`) || strings.Contains(dom, "origin /") {
			t.Errorf("chromium (%s) did not render the block page:\n%.600s", how, dom)
		}
	}
	t.Run("proxy-server", func(t *testing.T) {
		shot := filepath.Join(t.TempDir(), "block.png")
		pxChromium(t, "--proxy-server=http://"+px, "--window-size=1024,768", "--screenshot="+shot, page)
		if b, err := os.ReadFile(shot); err != nil || !bytes.HasPrefix(b, []byte("\x89PNG")) {
			t.Errorf("no screenshot: %v", err)
		}
		isBlockPage("--proxy-server", pxChromium(t, "--proxy-server=http://"+px, "--dump-dom", page))
	})
	t.Run("proxy-pac-url", func(t *testing.T) {
		isBlockPage("--proxy-pac-url", pxChromium(t, "--proxy-pac-url=http://"+px+"/proxy.pac", "--dump-dom", page))
	})
	t.Run("https with the CA trusted", func(t *testing.T) {
		b, err := os.ReadFile(filepath.Join(caDir, "ca.pem"))
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(b)
		cert, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
		spki := base64.StdEncoding.EncodeToString(sum[:])
		isBlockPage("https", pxChromium(t, "--proxy-server=http://"+px, "--ignore-certificate-errors-spki-list="+spki, "--dump-dom", "https://www.e2e-social.test/"))
	})
}
