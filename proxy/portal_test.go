package proxy

import (
	"bufio"
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/balise-net/balise/internal/policy"
)

func TestPAC(t *testing.T) {
	e := startEnv(t, testSpec(), func(o *Options) {
		o.DirectDomains = []string{"CISSS.local.", "intranet.example"}
		o.DirectNetworks = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}
	})
	for _, path := range []string{"/proxy.pac", "/wpad.dat"} {
		resp, err := http.Get("http://" + e.addr + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ns-proxy-autoconfig" {
			t.Fatalf("GET %s = %d %q", path, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		for _, want := range []string{
			"function FindProxyForURL(url, host)",
			`dnsDomainIs(host, ".cisss.local")`,
			`dnsDomainIs(host, ".intranet.example")`,
			`isInNet(ip, "10.0.0.0", "255.0.0.0")`,
			`isInNetEx(host, "fd00::/8")`,
			`return "PROXY ` + e.addr + `";`,
		} {
			if !strings.Contains(string(body), want) {
				t.Errorf("GET %s lacks %q:\n%s", path, want, body)
			}
		}
	}
	e2 := startEnv(t, testSpec(), func(o *Options) { o.PACProxy = "proxy.cisss.example:3128" })
	resp, err := http.Get("http://" + e2.addr + "/proxy.pac")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `"PROXY proxy.cisss.example:3128"`) {
		t.Errorf("PAC with PACProxy set:\n%s", body)
	}
	// A hostile Host header cannot inject script.
	c, _ := net.Dial("tcp", e2.addr)
	defer c.Close()
	io.WriteString(c, "GET /proxy.pac HTTP/1.1\r\nHost: x\";alert(1);//:1\r\n\r\n")
	resp, err = http.ReadResponse(bufio.NewReader(c), nil)
	if err == nil {
		body, _ = io.ReadAll(resp.Body)
		if strings.Contains(string(body), "alert") {
			t.Errorf("PAC reflects a hostile Host header:\n%s", body)
		}
	}
}

func TestPortal(t *testing.T) {
	spec := testSpec()
	w, _ := policy.ParseWindow("daily 12:00-13:00")
	spec.Schedules = []policy.Schedule{{Name: "pauses", Windows: []policy.Window{w}}}
	spec.Rules = append(spec.Rules, policy.Rule{Name: "breaks", Groups: []string{"*"}, Categories: []string{"networking"}, During: []string{"pauses"}, Action: policy.Allow})
	now := time.Date(2026, 11, 23, 10, 30, 0, 0, time.UTC)
	e := startEnv(t, spec, func(o *Options) {
		o.Clock = func() time.Time { return now }
		o.ServiceHosts = map[string]string{"social": "social.test"}
	})
	get := func(from string) string {
		tr := &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}).DialContext}
		resp, err := (&http.Client{Transport: tr}).Get("http://" + e.addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || resp.Header.Get("Cache-Control") != "no-store" {
			t.Fatalf("GET / = %d", resp.StatusCode)
		}
		return string(b)
	}
	body := get("127.0.0.1")
	for _, want := range []string{"Social Test", "Other &lt;Service&gt;", "bloqué / blocked", "Accès possible dès 12 h 00", "Prochaine ouverture : dès 12 h 00"} {
		if !strings.Contains(body, want) {
			t.Errorf("portal for 127.0.0.1 lacks %q", want)
		}
	}
	if strings.Count(body, "bloqué / blocked") != 1 {
		t.Errorf("portal decided on other.test before any traffic named it")
	}
	// Once traffic named a host of other.test, the portal can decide on it.
	resp, err := e.client(nil, "").Get("http://www.other.test/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	body = get("127.0.0.1")
	if strings.Count(body, "bloqué / blocked") != 2 {
		t.Errorf("portal after traffic to other.test: want both services blocked")
	}
	body = get("127.0.0.2")
	if strings.Contains(body, "bloqué / blocked") || !strings.Contains(body, "autorisé / allowed") {
		t.Errorf("portal for the authorized group shows a block")
	}
	resp, err = http.Get("http://" + e.addr + "/nothing")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("GET /nothing = %d, want 404", resp.StatusCode)
	}
}

// TestParentProxy sends plain HTTP and tunnels through a parent proxy
// that requires Basic credentials.
func TestParentProxy(t *testing.T) {
	_, hport := originHTTP(t)
	_, roots, tport := originTLS(t)
	var connects, gets atomic.Int32
	const cred = "balise:s3cret"
	wantAuth := "Basic " + base64.StdEncoding.EncodeToString([]byte(cred))
	parent := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Proxy-Authorization") != wantAuth {
			w.WriteHeader(http.StatusProxyAuthRequired)
			return
		}
		if r.Method == http.MethodConnect {
			connects.Add(1)
			_, port, _ := net.SplitHostPort(r.Host)
			o, err := net.Dial("tcp", "127.0.0.1:"+port)
			if err != nil {
				w.WriteHeader(502)
				return
			}
			c, _, err := w.(http.Hijacker).Hijack()
			if err != nil {
				o.Close()
				return
			}
			io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
			go func() { io.Copy(o, c); o.Close() }()
			io.Copy(c, o)
			c.Close()
			return
		}
		gets.Add(1)
		_, port, _ := net.SplitHostPort(r.URL.Host)
		r.URL.Host = "127.0.0.1:" + port
		r.RequestURI = ""
		r.Header.Del("Proxy-Authorization")
		resp, err := http.DefaultTransport.RoundTrip(r)
		if err != nil {
			w.WriteHeader(502)
			return
		}
		defer resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	})}
	pln, _ := net.Listen("tcp", "127.0.0.1:0")
	go parent.Serve(pln)
	defer parent.Close()
	credFile := t.TempDir() + "/cred"
	if err := writeFile(credFile, cred+"\n"); err != nil {
		t.Fatal(err)
	}
	e := startEnv(t, testSpec(), func(o *Options) {
		o.Parent, _ = url.Parse("http://" + pln.Addr().String())
		o.ParentCredentialsFile = credFile
		o.ConnectPorts = []uint16{mustPort(t, tport)}
	})
	resp, err := e.client(nil, "").Get("http://parent-only.test:" + hport + "/p")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(string(body), "origin:") || gets.Load() != 1 {
		t.Errorf("plain HTTP via parent = %d %q (parent GETs %d)", resp.StatusCode, body, gets.Load())
	}
	resp, err = e.client(roots, "example.com").Get("https://parent-only.test:" + tport + "/t")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "origin:/t" || connects.Load() != 1 {
		t.Errorf("tunnel via parent = %q (parent CONNECTs %d)", body, connects.Load())
	}
	// Blocked hosts never reach the parent.
	resp, err = e.client(nil, "").Get("http://social.test:" + hport + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 || gets.Load() != 1 {
		t.Errorf("blocked host via parent = %d, parent GETs %d, want 403 and 1", resp.StatusCode, gets.Load())
	}
}

func TestParentCredentialsErrors(t *testing.T) {
	var pol atomic.Pointer[policy.Policy]
	u, _ := url.Parse("http://127.0.0.1:1")
	for _, tt := range []struct {
		name string
		opts Options
	}{
		{"missing file", Options{Policy: &pol, Parent: u, ParentCredentialsFile: "/nonexistent/cred"}},
		{"https parent", Options{Policy: &pol, Parent: &url.URL{Scheme: "https", Host: "x:1"}}},
		{"bad resolver", Options{Policy: &pol, Resolver: "no-port"}},
	} {
		if _, err := New(tt.opts); err == nil {
			t.Errorf("New(%s) = nil error, want an error", tt.name)
		}
	}
}

// TestPortalExceptionForm: with the register on, the portal links each
// blocked service to its request form and shows the form for the one asked,
// never for a reachable service; without the register there is no link.
func TestPortalExceptionForm(t *testing.T) {
	now := time.Date(2026, 11, 23, 10, 30, 0, 0, time.UTC)
	get := func(e *env, query string) string {
		t.Helper()
		resp, err := http.Get("http://" + e.addr + "/" + query)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("GET /%s = %d", query, resp.StatusCode)
		}
		return string(b)
	}
	withHosts := func(o *Options) {
		o.Clock = func() time.Time { return now }
		o.ServiceHosts = map[string]string{"social": "social.test"}
	}
	e := startEnv(t, testSpec(), func(o *Options) { withHosts(o); o.Exceptions = &fakeExceptions{} })
	body := get(e, "")
	if !strings.Contains(body, `href="/?service=social#demande"`) {
		t.Errorf("portal lacks the request link for the blocked service:\n%s", body)
	}
	if strings.Contains(body, "<form") {
		t.Errorf("portal shows a form before one was asked for")
	}
	body = get(e, "?service=social")
	if !strings.Contains(body, `<section id="demande"><form method="post" action="/.balise/request" class="exc-fr"><input type="hidden" name="service" value="social">`) {
		t.Errorf("portal ?service=social lacks the form:\n%s", body)
	}
	if body = get(e, "?service=%3Cscript%3E"); strings.Contains(body, "<form") || strings.Contains(body, "<script>") {
		t.Errorf("portal with an unknown service shows a form or echoes it:\n%s", body)
	}

	off := startEnv(t, testSpec(), withHosts)
	if body := get(off, "?service=social"); strings.Contains(body, "demande") || strings.Contains(body, "<form") {
		t.Errorf("portal without the register offers a request:\n%s", body)
	}
}
