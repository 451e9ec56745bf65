package tests

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// creditBreak is the credit of the end-to-end test: 0.2 minutes (12 s)
// per hour, so that a break runs out within the test.
const creditBreak = 12 * time.Second

var creditRefillRE = regexp.MustCompile(`class="break-refill">([^<]+)<`)

// creditTLSBackend is the "social network" over TLS (for CONNECT
// tunnels), keeping connections alive.
func creditTLSBackend(t *testing.T) string {
	t.Helper()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello from social.test\n")
	}))
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	return port
}

// creditTunnel opens a CONNECT tunnel through the proxy from 127.0.0.1,
// speaks TLS and HTTP once inside it, and returns the connection (kept
// alive by the backend) and its reader.
func creditTunnel(t *testing.T, proxyAddr, hostport string) (net.Conn, *bufio.Reader, error) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", proxyAddr)
	if err != nil {
		return nil, nil, err
	}
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", hostport, hostport)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		c.Close()
		return nil, nil, fmt.Errorf("CONNECT: %v %v", resp, err)
	}
	host, _, _ := net.SplitHostPort(hostport)
	tc := tls.Client(&prefixConn{Conn: c, r: br}, &tls.Config{ServerName: host, InsecureSkipVerify: true})
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(tc, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", hostport)
	tr := bufio.NewReader(tc)
	resp, err = http.ReadResponse(tr, nil)
	if err != nil {
		tc.Close()
		return nil, nil, err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "hello from social.test") {
		tc.Close()
		return nil, nil, fmt.Errorf("through the tunnel: %d %q", resp.StatusCode, body)
	}
	tc.SetDeadline(time.Time{})
	return tc, tr, nil
}

// prefixConn reads what the bufio.Reader already buffered first.
type prefixConn struct {
	net.Conn
	r *bufio.Reader
}

func (p *prefixConn) Read(b []byte) (int, error) { return p.r.Read(b) }

// creditDigTTL returns the A records and the smallest TTL of the answer.
func creditDigTTL(t *testing.T, dnsAddr, src, name string) ([]string, int) {
	t.Helper()
	host, port, _ := net.SplitHostPort(dnsAddr)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "dig", "@"+host, "-p", port, "-b", src, "+noall", "+answer", "+tries=2", "+time=3", name, "A").Output()
	if err != nil {
		t.Fatalf("dig: %v\n%s", err, out)
	}
	var addrs []string
	ttl := -1
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) == 5 && f[3] == "A" && f[4] != "0.0.0.0" {
			addrs = append(addrs, f[4])
			if n, err := strconv.Atoi(f[1]); err == nil && (ttl < 0 || n < ttl) {
				ttl = n
			}
		}
	}
	return addrs, ttl
}

// TestCreditBreak is the break credit end to end with the real binary: the
// block page offers « Commencer ma pause » with the credit left; a POST
// with the page's token starts the break; the proxy (plain and CONNECT)
// and the DNS filter let that workstation through, with DNS TTLs clamped
// to the break's end; when the minutes run out the tunnel closes, the DNS
// answer turns blocked, and the page shows when the credit refills. A
// second workstation is unaffected all along.
func TestCreditBreak(t *testing.T) {
	requireTool(t, "curl")
	requireTool(t, "dig")
	dnsAddr := exSocialDNS(t)
	port := exBackend(t)
	tlsPort := creditTLSBackend(t)
	in := startBalise(t, creditConfig(dnsAddr, tlsPort)+`
[[group]]
name = "personnel"
networks = ["127.0.0.0/8"]

[[credit]]
name = "pause-quart"
groups = ["personnel"]
services = ["socialtest"]
minutes = 0.2
per = "1h"
`)
	exRequireFrontEnds(t, in)
	proxyAddr, filter := in.Addr("proxy"), in.Addr("dns-udp")
	site := "http://www.social.test:" + port + "/"
	tlsHost := "www.social.test:" + tlsPort

	// The block page offers the break, the workstation's.
	code, page := exCurl(t, proxyAddr, "127.0.0.1", site)
	m := exTokenRE.FindStringSubmatch(page)
	if code != http.StatusForbidden || m == nil || !strings.Contains(page, "Commencer ma pause") ||
		!strings.Contains(page, "Le crédit de pause de ce poste") || !strings.Contains(page, `class="break-left">12 s<`) ||
		!strings.Contains(page, `action="/.balise/break/start"`) {
		t.Fatalf("block page = %d\n%s\nwant « Commencer ma pause » with 12 s left", code, page)
	}
	if a := exDig(t, filter, "127.0.0.1", "www.social.test"); len(a) != 0 {
		t.Fatalf("DNS before the break = %v, want blocked", a)
	}
	// A forged or foreign token is refused.
	if code, _ := exCurl(t, proxyAddr, "127.0.0.2", site+".balise/break/start", "--data-urlencode", "credit=pause-quart",
		"--data-urlencode", "service=socialtest", "--data-urlencode", "token="+html.UnescapeString(m[1])); code != http.StatusForbidden {
		t.Fatalf("break started with another workstation's token: %d, want 403", code)
	}
	start := time.Now()
	code, answer := exCurl(t, proxyAddr, "127.0.0.1", site+".balise/break/start",
		"--data-urlencode", "credit=pause-quart", "--data-urlencode", "service=socialtest",
		"--data-urlencode", "host=www.social.test", "--data-urlencode", "token="+html.UnescapeString(m[1]),
		"--data-urlencode", "lang=fr")
	if code != http.StatusOK || !strings.Contains(answer, "Pause commencée") {
		t.Fatalf("start = %d\n%s", code, answer)
	}
	end := start.Add(creditBreak)

	// Through the proxy and the DNS filter, for this workstation only.
	exEventually(t, "the break reaches the proxy", func() error {
		if code, body := exCurl(t, proxyAddr, "127.0.0.1", site); code != http.StatusOK || !strings.Contains(body, "hello") {
			return fmt.Errorf("proxy = %d %.60q", code, body)
		}
		return nil
	})
	addrs, ttl := creditDigTTL(t, filter, "127.0.0.1", "www.social.test")
	if len(addrs) != 1 || ttl < 0 || ttl > int(creditBreak/time.Second) {
		t.Fatalf("DNS during the break = %v ttl %d, want 127.0.0.1 with a TTL clamped to the break (≤ %v)", addrs, ttl, creditBreak)
	}
	tun, tr, err := creditTunnel(t, proxyAddr, tlsHost)
	if err != nil {
		t.Fatalf("tunnel during the break: %v", err)
	}
	defer tun.Close()
	if code, _ := exCurl(t, proxyAddr, "127.0.0.2", site); code != http.StatusForbidden {
		t.Fatalf("second workstation during the break: %d, want 403", code)
	}
	if a := exDig(t, filter, "127.0.0.2", "www.social.test"); len(a) != 0 {
		t.Fatalf("second workstation's DNS during the break = %v, want blocked", a)
	}
	if out, _, code := runBalise(t, "explain", "--config", in.ConfigPath, "--client", "127.0.0.1", "--host", "www.social.test"); code != 0 ||
		!strings.Contains(out, "reason    credit") || !strings.Contains(out, "credit    pause-quart") {
		t.Fatalf("explain during the break = %d\n%s", code, out)
	}

	// The tunnel closes when the minutes run out.
	tun.SetReadDeadline(end.Add(5 * time.Second))
	_, err = tr.ReadByte()
	closedAt := time.Now()
	if err == nil || closedAt.Before(end.Add(-time.Second)) || closedAt.After(end.Add(3*time.Second)) {
		t.Fatalf("tunnel: read %v at %v after start, want it closed at the break's end (%v)", err, closedAt.Sub(start), creditBreak)
	}
	// DNS blocked (the cached answer does not outlive the break), proxy
	// blocked, and the page says when the credit refills.
	exEventually(t, "after the break", func() error {
		if a := exDig(t, filter, "127.0.0.1", "www.social.test"); len(a) != 0 {
			return fmt.Errorf("DNS = %v, want blocked", a)
		}
		code, page = exCurl(t, proxyAddr, "127.0.0.1", site)
		if code != http.StatusForbidden {
			return fmt.Errorf("proxy = %d, want 403", code)
		}
		return nil
	})
	r := creditRefillRE.FindStringSubmatch(page)
	if !strings.Contains(page, "Crédit épuisé") || r == nil || strings.Contains(page, "Commencer ma pause") {
		t.Fatalf("block page after the break:\n%s\nwant « Crédit épuisé » with the refill time", page)
	}
	loc, _ := time.LoadLocation("America/Toronto") // the default timezone
	wantRefill := start.Add(time.Hour).In(loc).Format("15:04")
	if !strings.HasPrefix(r[1], wantRefill) && !strings.HasPrefix(r[1], start.Add(time.Hour+time.Minute).In(loc).Format("15:04")) {
		t.Errorf("refill shown %q, want about %s", r[1], wantRefill)
	}
	// The second workstation still has its whole credit.
	if _, page2 := exCurl(t, proxyAddr, "127.0.0.2", site); !strings.Contains(page2, `class="break-left">12 s<`) {
		t.Fatalf("second workstation's page:\n%s\nwant 12 s left", page2)
	}
	// The second workstation starts a break, then ends it from the
	// portal (« Terminer ma pause »): blocked again at once, and the
	// unused time stays.
	_, page2 := exCurl(t, proxyAddr, "127.0.0.2", site)
	m2 := exTokenRE.FindStringSubmatch(page2)
	if code, body := exCurl(t, proxyAddr, "127.0.0.2", site+".balise/break/start", "--data-urlencode", "credit=pause-quart",
		"--data-urlencode", "service=socialtest", "--data-urlencode", "token="+html.UnescapeString(m2[1])); code != http.StatusOK {
		t.Fatalf("second workstation's start = %d\n%s", code, body)
	}
	exEventually(t, "second workstation's break", func() error {
		if code, _ := exCurl(t, proxyAddr, "127.0.0.2", site); code != http.StatusOK {
			return fmt.Errorf("proxy = %d", code)
		}
		return nil
	})
	time.Sleep(2 * time.Second)
	portal := func() string {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "curl", "-sS", "--interface", "127.0.0.2", "http://"+proxyAddr+"/").Output()
		if err != nil {
			t.Fatalf("portal: %v", err)
		}
		return string(out)
	}
	p := portal()
	mp := exTokenRE.FindStringSubmatch(p)
	if !strings.Contains(p, "Pause en cours") || !strings.Contains(p, "Terminer ma pause") || mp == nil {
		t.Fatalf("portal during the break:\n%s", p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "curl", "-sS", "--interface", "127.0.0.2", "http://"+proxyAddr+"/.balise/break/end",
		"--data-urlencode", "credit=pause-quart", "--data-urlencode", "token="+html.UnescapeString(mp[1]), "--data-urlencode", "lang=fr").Output()
	if err != nil || !strings.Contains(string(out), "Pause terminée") {
		t.Fatalf("end from the portal: %v\n%s", err, out)
	}
	exEventually(t, "after ending the break", func() error {
		if code, _ := exCurl(t, proxyAddr, "127.0.0.2", site); code != http.StatusForbidden {
			return fmt.Errorf("proxy = %d, want 403", code)
		}
		return nil
	})
	if p := portal(); !strings.Contains(p, "Il reste") || strings.Contains(p, "Pause en cours") || !strings.Contains(p, "Commencer ma pause") {
		t.Fatalf("portal after ending the break:\n%s\nwant the minutes left", p)
	}
	// Counts without identity.
	if v, ok := in.MetricValue("balise_credit_breaks_started_total", "credit=pause-quart"); !ok || v != 2 {
		t.Errorf("balise_credit_breaks_started_total = %v, %v; want 2", v, ok)
	}
	exEventually(t, "minutes used", func() error {
		if v, ok := in.MetricValue("balise_credit_seconds_used_total", "credit=pause-quart"); !ok || v < 13 || v > 18 {
			return fmt.Errorf("balise_credit_seconds_used_total = %v, %v; want 12 + the second break's 2 to 4", v, ok)
		}
		return nil
	})
	for _, l := range strings.Split(in.Metrics(), "\n") {
		if strings.HasPrefix(l, "balise_credit_") && !strings.HasPrefix(l, "balise_credit_breaks_started_total{credit=\"pause-quart\"}") &&
			!strings.HasPrefix(l, "balise_credit_seconds_used_total{credit=\"pause-quart\"}") {
			t.Errorf("unexpected credit series %q (no identity in labels)", l)
		}
	}
}

// creditConfig is exProxyConfig with CONNECT allowed to the TLS
// backend's port.
func creditConfig(dnsAddr, tlsPort string) string {
	return fmt.Sprintf(`
[metrics]
listen = "127.0.0.1:0"

[dns]
listen = "127.0.0.1:0"
upstreams = [%q]

[proxy]
listen = "127.0.0.1:0"
resolver = %q
connect_ports = [443, %s]
allow_destinations = ["127.0.0.0/8", "::1/128"]
`, dnsAddr, dnsAddr, tlsPort) + exceptionsConfig
}

// TestCreditBrowser presses « Commencer ma pause » in headless Chromium
// going through the proxy, reaches the site during the break, and sees
// « Crédit épuisé » with the refill time once the minutes run out.
func TestCreditBrowser(t *testing.T) {
	path, err := exec.LookPath("chromium")
	if err != nil {
		path = requireTool(t, "chromium-browser")
	}
	dnsAddr := exSocialDNS(t)
	port := exBackend(t)
	in := startBalise(t, exProxyConfig(dnsAddr, `
[[group]]
name = "personnel"
networks = ["127.0.0.0/8"]

[[credit]]
name = "pause-quart"
groups = ["personnel"]
services = ["socialtest"]
minutes = 0.1
per = "1h"
`))
	exRequireFrontEnds(t, in)
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path),
		chromedp.Flag("headless", true), chromedp.DisableGPU, chromedp.UserDataDir(t.TempDir()),
		chromedp.ProxyServer("http://"+in.Addr("proxy")), chromedp.Flag("proxy-bypass-list", "<-loopback>"))
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox)
	}
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancel()
	ctx, cancel2 := chromedp.NewContext(actx)
	defer cancel2()
	ctx, cancel3 := context.WithTimeout(ctx, 60*time.Second)
	defer cancel3()
	site := "http://www.social.test:" + port + "/"
	start := `div.balise-break[lang=fr] button.break-start`
	if err := chromedp.Do(ctx, chromedp.Navigate(site), chromedp.WaitVisible(chromedp.CSS(start))); err != nil {
		t.Fatalf("block page with the break button: %v", err)
	}
	left, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(`div.balise-break[lang=fr] .break-left`)))
	if err != nil || left != "6 s" {
		t.Fatalf("minutes left shown = %q, %v; want 6 s", left, err)
	}
	// The answer page's sections sit directly in <body>; the block page's
	// sit in <main>: waiting for the former cannot return on the page the
	// click leaves.
	answer := "body > section[lang=fr] > h1"
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(start)), chromedp.WaitVisible(chromedp.CSS(answer))); err != nil {
		t.Fatal(err)
	}
	if h, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(answer))); h != "Pause commencée" {
		t.Fatalf("after the click: %q, want « Pause commencée »", h)
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		chromedp.Do(ctx, chromedp.Navigate(site))
		body, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("body")))
		if strings.Contains(body, "hello from social.test") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the site during the break: %q", body)
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(7 * time.Second)
	if err := chromedp.Do(ctx, chromedp.Navigate(site), chromedp.WaitVisible(chromedp.CSS(`div.balise-break[lang=fr] .break-spent`))); err != nil {
		t.Fatalf("block page after the break: %v", err)
	}
	spent, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(`div.balise-break[lang=fr] .break-spent`)))
	if !strings.Contains(spent, "Crédit épuisé") || !creditClockRE.MatchString(spent) {
		t.Fatalf("after the break: %q, want « Crédit épuisé » with the refill time", spent)
	}
}

var creditClockRE = regexp.MustCompile(`\d\d:\d\d:\d\d`)

// TestCreditFollowsPerson: with identity, the credit is the person's. Alice,
// known on 127.0.0.2, starts her break there; she reaches the service from
// 127.0.0.3 once she authenticates there (proxy and DNS), bob does not,
// and when her minutes run out the new workstation gives her none: her
// page there says « Crédit épuisé ».
func TestCreditFollowsPerson(t *testing.T) {
	requireTool(t, "curl")
	requireTool(t, "dig")
	d := idSetup(t)
	s := idStartSites(t)
	in := startBalise(t, d.config(s, idOptions{})+`
[[credit]]
name = "pause-quart"
groups = ["*"]
services = ["blogtest"]
minutes = 0.2
per = "1h"
`)
	exRequireFrontEnds(t, in)
	alice, bob := d.login(t, "alice"), d.login(t, "bob")
	video := "http://www.video.test:" + s.httpPort + "/"
	blog := "http://www.blog.test:" + s.httpPort + "/"

	// Alice signs in on 127.0.0.2 (a page whose verdict depends on who
	// asks), which binds the address to her.
	if r := d.curl(t, in, "127.0.0.2", &alice, video); r.Code != http.StatusForbidden {
		t.Fatalf("alice on 127.0.0.2: %v", r)
	}
	r := d.curl(t, in, "127.0.0.2", &alice, blog)
	m := exTokenRE.FindStringSubmatch(r.Body)
	if r.Code != http.StatusForbidden || m == nil || !strings.Contains(r.Body, "Votre crédit de pause") || !strings.Contains(r.Body, "Commencer ma pause") {
		t.Fatalf("alice's block page on 127.0.0.2: %v\nwant « Votre crédit de pause » (the person's)", r)
	}
	r = d.curl(t, in, "127.0.0.2", nil, blog+".balise/break/start", "--data-urlencode", "credit=pause-quart",
		"--data-urlencode", "service=blogtest", "--data-urlencode", "token="+html.UnescapeString(m[1]), "--data-urlencode", "lang=fr")
	if r.Code != http.StatusOK || !strings.Contains(r.Body, "Votre pause est commencée") {
		t.Fatalf("start: %v", r)
	}
	start := time.Now()
	// On another workstation, once she authenticates there.
	idEventually(t, 5*time.Second, "alice on 127.0.0.3 during her break", func() error {
		r := d.curlAfter(t, in, "127.0.0.3", &alice, video, blog)
		if r.Code != http.StatusOK || !idHello(r.Body, "www.blog.test") {
			return fmt.Errorf("%v", r)
		}
		return nil
	})
	if a, rc := idDig(t, in, "127.0.0.3", "www.blog.test"); rc != "NOERROR" || len(a) == 0 {
		t.Errorf("DNS from 127.0.0.3, where alice authenticated: %s %v, want her break to resolve it", rc, a)
	}
	if r := d.curlAfter(t, in, "127.0.0.5", &bob, video, blog); r.Code != http.StatusForbidden || !strings.Contains(r.Body, `class="break-left">12 s<`) {
		t.Errorf("bob on 127.0.0.5: %v\nwant 403 with his own whole credit", r)
	}
	// The minutes run out: no fresh credit on the new workstation.
	time.Sleep(time.Until(start.Add(creditBreak + time.Second)))
	idEventually(t, 5*time.Second, "alice on 127.0.0.3 after her break", func() error {
		r := d.curl(t, in, "127.0.0.3", &alice, blog)
		if r.Code != http.StatusForbidden || !strings.Contains(r.Body, "Crédit épuisé") || !strings.Contains(r.Body, "Votre crédit de pause") {
			return fmt.Errorf("%v", r)
		}
		return nil
	})
}
