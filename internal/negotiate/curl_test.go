package negotiate

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

func requireTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		if os.Getenv("BALISE_E2E") == "1" {
			t.Fatalf("BALISE_E2E=1 but %s is not installed: %v", name, err)
		}
		t.Skipf("%s is not installed (set BALISE_E2E=1 to make this a failure)", name)
	}
}

// proxy is a tiny forward proxy that only authenticates: 407 Negotiate
// without valid credentials, a greeting naming the user with them.
type proxy struct {
	v        *Verifier
	addr     string
	mu       sync.Mutex
	headers  []string
	reasons  []Reason
	respond  bool // send the response token on success
	accepted []string
}

func startProxy(t *testing.T, v *Verifier, respond bool) *proxy {
	t.Helper()
	p := &proxy{v: v, respond: respond}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	srv := &http.Server{Handler: p, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return p
}

func (p *proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := r.Header.Get("Proxy-Authorization")
	ap, _ := netip.ParseAddrPort(r.RemoteAddr)
	res, err := p.v.Verify(h, ap.Addr())
	p.mu.Lock()
	defer p.mu.Unlock()
	p.headers = append(p.headers, h)
	if err != nil {
		var e *Error
		errors.As(err, &e)
		p.reasons = append(p.reasons, e.Reason)
		w.Header().Set("Proxy-Authenticate", "Negotiate")
		w.WriteHeader(http.StatusProxyAuthRequired)
		fmt.Fprintf(w, "authentication required (%v)\n", e.Reason)
		return
	}
	p.accepted = append(p.accepted, res.User+"@"+res.Realm)
	if p.respond && len(res.ResponseToken) > 0 {
		w.Header().Set("Proxy-Authenticate", res.Header())
	}
	fmt.Fprintf(w, "hello %s@%s for %s\n", res.User, res.Realm, r.URL)
}

// TestCurlProxyNegotiate has real curl (MIT GSS-API) log in to the proxy
// with alice's credential cache, as a browser does.
func TestCurlProxyNegotiate(t *testing.T) {
	requireTool(t, "curl")
	k := setup(t)
	host := "proxy." + strings.ToLower(k.dc.Realm())
	for _, respond := range []bool{true, false} {
		t.Run(fmt.Sprintf("respond=%v", respond), func(t *testing.T) {
			p := startProxy(t, k.verifier(t, Options{}), respond)
			_, port, _ := net.SplitHostPort(p.addr)
			cmd := exec.Command("curl", "-sS", "--max-time", "20", "--proxy-negotiate", "-U", ":",
				"-x", "http://"+host+":"+port, "--resolve", host+":"+port+":127.0.0.1",
				"http://origin.example/page")
			cmd.Env = append(os.Environ(), k.creds.Env()...)
			out, err := cmd.CombinedOutput()
			want := "hello alice@" + k.dc.Realm() + " for http://origin.example/page"
			if err != nil || !strings.Contains(string(out), want) {
				t.Fatalf("curl: %v\n%s\nwant %q; proxy saw reasons %v", err, out, want, p.reasons)
			}
			p.mu.Lock()
			headers := append([]string(nil), p.headers...)
			p.mu.Unlock()
			// curl may send its token before any challenge.
			last := headers[len(headers)-1]
			if !strings.HasPrefix(last, "Negotiate ") || len(p.accepted) != 1 {
				t.Fatalf("proxy saw Proxy-Authorization %.60q, accepted %q", headers, p.accepted)
			}

			// The same header sent again, from another connection, is a replay.
			c, err := net.Dial("tcp", p.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			fmt.Fprintf(c, "GET http://origin.example/page HTTP/1.1\r\nHost: origin.example\r\nProxy-Authorization: %s\r\n\r\n", last)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusProxyAuthRequired || p.reasons[len(p.reasons)-1] != Replay {
				t.Errorf("replayed header: %s, reasons %v, want 407 for a replay", resp.Status, p.reasons)
			}
		})
	}

	// A user without a ticket for the realm gets the challenge, no access.
	p := startProxy(t, k.verifier(t, Options{}), true)
	_, port, _ := net.SplitHostPort(p.addr)
	cmd := exec.Command("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20", "--proxy-negotiate", "-U", ":",
		"-x", "http://"+host+":"+port, "--resolve", host+":"+port+":127.0.0.1", "http://origin.example/")
	cmd.Env = append(os.Environ(), "KRB5_CONFIG="+k.dc.Krb5Conf(), "KRB5CCNAME=FILE:"+k.dc.Dir()+"/no-such-ccache")
	out, _ := cmd.CombinedOutput()
	if strings.TrimSpace(string(out)) != "407" {
		t.Errorf("curl without credentials: %s, want 407", out)
	}
}
