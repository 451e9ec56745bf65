package proxy

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/balise-net/balise/internal/policy"
)

func TestNewRequiresPolicy(t *testing.T) {
	if _, err := New(Options{}); err == nil {
		t.Fatal("New(Options{}) = nil error, want an error")
	}
}

func TestClientNotAllowed(t *testing.T) {
	e := startEnv(t, testSpec(), func(o *Options) {
		o.AllowedClients = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	})
	_, port := originHTTP(t)
	resp, err := e.client(nil, "").Get("http://unlisted.test:" + port + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || resp.Header.Get("X-Origin") != "" {
		t.Errorf("GET from a client outside allowed_clients = %d (origin header %q), want 403 not proxied", resp.StatusCode, resp.Header.Get("X-Origin"))
	}
	if ps := resp.Header.Get("Proxy-Status"); !strings.Contains(ps, "http_request_denied") {
		t.Errorf("Proxy-Status = %q, want http_request_denied", ps)
	}
	c, _, code := rawConnect(t, e.addr, "", "unlisted.test:443")
	c.Close()
	if code != http.StatusForbidden {
		t.Errorf("CONNECT from a client outside allowed_clients = %d, want 403", code)
	}
	if got := e.metric("balise_proxy_refusals_total", map[string]string{"mode": "explicit", "reason": "client"}); got != 2 {
		t.Errorf("refusals{reason=client} = %v, want 2", got)
	}
}

func TestPlainHTTP(t *testing.T) {
	e := startEnv(t, testSpec(), nil)
	_, port := originHTTP(t)
	tests := []struct {
		name       string
		from       string
		url        string
		lang       string
		wantStatus int
		wantBody   []string
		wantFirst  string // the language section that must come first
	}{
		{"unlisted passes", "127.0.0.1", "http://unlisted.test:" + port + "/a", "", 200, []string{"origin:unlisted.test:" + port + "/a"}, ""},
		{"listed blocked, French first", "127.0.0.1", "http://www.social.test:" + port + "/", "", 403, []string{"Social Test", "www.social.test", "Balise"}, "fr"},
		{"listed blocked, English preferred", "127.0.0.1", "http://social.test:" + port + "/x", "en-CA,en;q=0.9,fr;q=0.5", 403, []string{"Social Test"}, "en"},
		{"listed blocked, French preferred", "127.0.0.1", "http://social.test:" + port + "/x", "fr-CA,en;q=0.5", 403, []string{"Social Test"}, "fr"},
		{"escaped service name", "127.0.0.1", "http://other.test:" + port + "/", "", 403, []string{"Other &lt;Service&gt;"}, "fr"},
		{"authorized group allowed", "127.0.0.2", "http://social.test:" + port + "/y", "", 200, []string{"origin:social.test:" + port + "/y"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := e.client(nil, "").Transport.(*http.Transport)
			tr.DialContext = (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(tt.from)}}).DialContext
			req, _ := http.NewRequest("GET", tt.url, nil)
			if tt.lang != "" {
				req.Header.Set("Accept-Language", tt.lang)
			}
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("GET %s = %d, want %d; body %.200s", tt.url, resp.StatusCode, tt.wantStatus, body)
			}
			for _, w := range tt.wantBody {
				if !strings.Contains(string(body), w) {
					t.Errorf("GET %s body lacks %q", tt.url, w)
				}
			}
			if tt.wantStatus == 403 {
				checkBlockPage(t, resp.Header, string(body), tt.wantFirst)
			}
		})
	}
	logs := e.logs.String()
	if strings.Contains(logs, "unlisted.test") {
		t.Errorf("unlisted browsing was logged:\n%s", logs)
	}
	if !strings.Contains(logs, "front=http") || !strings.Contains(logs, "service=social") {
		t.Errorf("no decision line for social.test in logs:\n%s", logs)
	}
	if got := e.metric("balise_proxy_requests_total", map[string]string{"mode": "explicit", "kind": "http", "verdict": "block", "reason": "default"}); got != 4 {
		t.Errorf("requests{http,block,default} = %v, want 4", got)
	}
	if got := e.metric("balise_proxy_requests_total", map[string]string{"kind": "http", "verdict": "allow", "reason": "unlisted"}); got != 1 {
		t.Errorf("requests{http,allow,unlisted} = %v, want 1", got)
	}
}

// checkBlockPage checks what every block page must be.
func checkBlockPage(t *testing.T, h http.Header, body, first string) {
	t.Helper()
	if ct := h.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("block page Content-Type = %q", ct)
	}
	if cc := h.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("block page Cache-Control = %q, want no-store", cc)
	}
	for _, bad := range []string{"<script", "<link", "src=", "@import", "url("} {
		if strings.Contains(body, bad) {
			t.Errorf("block page has an external resource or script (%q)", bad)
		}
	}
	if !strings.Contains(body, "<style>") {
		t.Errorf("block page has no inline style")
	}
	fr := strings.Index(body, `<section lang="fr"`)
	en := strings.Index(body, `<section lang="en"`)
	if fr < 0 || en < 0 {
		t.Fatalf("block page lacks a French or English section")
	}
	if (first == "fr") != (fr < en) {
		t.Errorf("block page first section: fr at %d, en at %d, want %s first", fr, en, first)
	}
}

func TestBlockPageReopens(t *testing.T) {
	loc, err := time.LoadLocation("America/Toronto")
	if err != nil {
		t.Skip("no tzdata")
	}
	spec := testSpec()
	spec.Location = loc
	w, _ := policy.ParseWindow("mon-fri 12:00-13:00")
	spec.Schedules = []policy.Schedule{{Name: "pauses", Windows: []policy.Window{w}}}
	spec.Rules = append(spec.Rules, policy.Rule{Name: "breaks", Groups: []string{"*"}, Categories: []string{"networking"}, During: []string{"pauses"}, Action: policy.Allow})
	tests := []struct {
		now    time.Time
		wantFR string
		wantEN string
	}{
		{time.Date(2026, 11, 23, 11, 0, 0, 0, loc), "Accès possible dès 12 h 00", "Access possible from 12:00"},                 // Monday morning
		{time.Date(2026, 11, 23, 14, 0, 0, 0, loc), "Accès possible demain dès 12 h 00", "Access possible tomorrow from 12:00"}, // Monday afternoon
		{time.Date(2026, 11, 27, 14, 0, 0, 0, loc), "Accès possible dès lundi 30 novembre, 12 h 00", "Access possible from Monday, November 30, 12:00"},
	}
	for _, tt := range tests {
		now := tt.now
		e := startEnv(t, spec, func(o *Options) {
			o.Clock = func() time.Time { return now }
			o.Institution = "CISSS de Test"
			o.BlockMessage = "Règle de l'établissement."
		})
		_, port := originHTTP(t)
		resp, err := e.client(nil, "").Get("http://social.test:" + port + "/")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, want := range []string{tt.wantFR, tt.wantEN, "CISSS de Test", "Règle de l&#39;établissement."} {
			if !strings.Contains(string(body), want) {
				t.Errorf("block page at %v lacks %q", now, want)
			}
		}
		// other.test (media-sharing) has no break: no reopening promised.
		resp, err = e.client(nil, "").Get("http://other.test:" + port + "/")
		if err != nil {
			t.Fatal(err)
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(body), "Accès possible") || !strings.Contains(string(body), "Aucune plage") {
			t.Errorf("block page for a service without a break promises a reopening")
		}
		e.stop()
	}
}

func TestReservedPathAndForm(t *testing.T) {
	exc := &fakeExceptions{}
	e := startEnv(t, testSpec(), func(o *Options) { o.Exceptions = exc })
	_, port := originHTTP(t)
	c := e.client(nil, "")
	resp, err := c.Get("http://social.test:" + port + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `class="exc-fr"`) || !strings.Contains(string(body), `class="exc-en"`) {
		t.Errorf("block page lacks the exception forms: %.300s", body)
	}
	resp, err = c.Post("http://social.test:"+port+"/.balise/request", "application/x-www-form-urlencoded", strings.NewReader("a=b"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "register:POST /.balise/request" {
		t.Errorf("POST /.balise/ on a blocked host = %q, want the register's answer", body)
	}
	if calls := exc.calls(); len(calls) != 1 || calls[0] != "127.0.0.1" {
		t.Errorf("register saw RemoteAddr %q, want [127.0.0.1]", calls)
	}
	// On an unlisted host the path belongs to the origin.
	resp, err = c.Get("http://unlisted.test:" + port + "/.balise/x")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.HasPrefix(string(body), "origin:") {
		t.Errorf("GET /.balise/ on an unlisted host = %q, want the origin's answer", body)
	}
}

func TestReservedPathWithoutRegister(t *testing.T) {
	e := startEnv(t, testSpec(), nil)
	_, port := originHTTP(t)
	resp, err := e.client(nil, "").Get("http://social.test:" + port + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Contains(string(body), "<form") {
		t.Errorf("block page shows a form without a register")
	}
	resp, err = e.client(nil, "").Post("http://social.test:"+port+"/.balise/request", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("POST /.balise/ without a register = %d, want 404", resp.StatusCode)
	}
}

func TestHeadBlocked(t *testing.T) {
	e := startEnv(t, testSpec(), nil)
	resp, err := e.client(nil, "").Head("http://social.test/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 {
		t.Errorf("HEAD blocked = %d, want 403", resp.StatusCode)
	}
}

func TestInvalidHostAndLoop(t *testing.T) {
	e := startEnv(t, testSpec(), nil)
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET http://bad_host!.test/ HTTP/1.1\r\nHost: bad_host!.test\r\n\r\n")
	buf := make([]byte, 64)
	n, _ := c.Read(buf)
	if !strings.HasPrefix(string(buf[:n]), "HTTP/1.1 400") {
		t.Errorf("GET with an invalid host = %q, want 400", buf[:n])
	}
	// A request addressed to the proxy's own address is its portal, not a loop.
	resp, err := e.client(nil, "").Get("http://" + e.addr + "/proxy.pac")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ns-proxy-autoconfig" {
		t.Errorf("GET proxy's own PAC through itself = %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
}

func TestUpstreamError(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	ln.Close()
	e := startEnv(t, testSpec(), nil)
	resp, err := e.client(nil, "").Get("http://unlisted.test:" + port + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 502 || !strings.Contains(resp.Header.Get("Proxy-Status"), "connection_refused") || strings.Contains(string(body), "dial tcp") {
		t.Errorf("GET to a closed port = %d %q %q, want 502 with Proxy-Status and no internal error text", resp.StatusCode, resp.Header.Get("Proxy-Status"), body)
	}
	// CONNECT to the proxy itself is refused even on an allowed port.
	_, self, _ := net.SplitHostPort(e.addr)
	o := e.p.cfg().Options
	o.ConnectPorts = append(o.ConnectPorts, mustPort(t, self))
	if err := e.p.Reconfigure(o); err != nil {
		t.Fatal(err)
	}
	c, _, code := rawConnect(t, e.addr, "", e.addr)
	c.Close()
	if code != 403 {
		t.Errorf("CONNECT to the proxy itself = %d, want 403", code)
	}
}

// TestLoopDetection sends a request through two Balise proxies chained
// (the second as the first's parent): the chain works, and a request that
// comes back to a proxy it already crossed is refused.
func TestLoopDetection(t *testing.T) {
	_, port := originHTTP(t)
	parent := startEnv(t, testSpec(), nil)
	pu, _ := url.Parse("http://" + parent.addr)
	child := startEnv(t, testSpec(), func(o *Options) { o.Parent = pu })
	resp, err := child.client(nil, "").Get("http://unlisted.test:" + port + "/chain")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "origin:unlisted.test:"+port+"/chain" {
		t.Errorf("GET through two chained proxies = %d %q", resp.StatusCode, body)
	}
	req, _ := http.NewRequest("GET", "http://unlisted.test:"+port+"/", nil)
	req.Header.Set("Via", "1.1 "+child.p.via)
	resp, err = child.client(nil, "").Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusLoopDetected {
		t.Errorf("request carrying this proxy's Via = %d, want 508", resp.StatusCode)
	}
}
