package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/balise-net/balise/internal/identity"
	"github.com/balise-net/balise/internal/policy"
)

// tokenAuth stands in for Kerberos in this package's tests: the header
// "Negotiate ok:USER" verifies as USER with an hour-long ticket,
// "Negotiate ending:USER" with a ticket ending in 200 ms, anything else
// fails. The real
// verifier (internal/negotiate) is exercised with a real domain
// controller, curl and Chromium in tests/identity_test.go; here the
// subject is the proxy's logic: when it asks, what it remembers, what it
// decides.
type tokenAuth struct {
	mu       sync.Mutex
	verifies int
	groups   map[string][]string
	bound    map[netip.Addr]string
}

func (a *tokenAuth) Verify(h string, _ netip.Addr) (identity.Verified, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.verifies++
	if u, ok := strings.CutPrefix(h, "Negotiate ok:"); ok {
		return identity.Verified{User: u, Expires: time.Now().Add(time.Hour)}, nil
	}
	if u, ok := strings.CutPrefix(h, "Negotiate ending:"); ok { // a ticket about to end
		return identity.Verified{User: u, Expires: time.Now().Add(200 * time.Millisecond)}, nil
	}
	return identity.Verified{}, fmt.Errorf("bad token")
}

func (a *tokenAuth) Groups(_ context.Context, user string) []string { return a.groups[user] }

func (a *tokenAuth) Bind(c netip.Addr, user string, _ time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.bound[c] = user
}

func (a *tokenAuth) Bound(c netip.Addr, _ time.Time) (string, []string, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	u, ok := a.bound[c]
	return u, a.groups[u], ok
}

func (a *tokenAuth) LogName(user string) string { return "u-" + user }

func (a *tokenAuth) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.verifies
}

// authSpec lists social.test (allowed to the directory group
// "communications") and other.test (no rule names a person).
func authSpec() policy.Spec {
	s := testSpec()
	s.Groups = append(s.Groups, policy.Group{Name: "editors", DirectoryGroups: []string{"communications"}})
	s.Rules = append([]policy.Rule{{Name: "editors", Groups: []string{"editors"}, Services: []string{"social"}, Action: policy.Allow}}, s.Rules...)
	return s
}

// rawProxyGet sends one absolute-form GET on c and returns the status, the
// named response header and the body.
func rawProxyGet(t *testing.T, c net.Conn, br *bufio.Reader, url, header, extra string) (int, string, string) {
	t.Helper()
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n", url, extra)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get(header), string(b)
}

// proxyConn opens a client connection to e's proxy with a 10 s deadline.
func proxyConn(t *testing.T, e *env) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, bufio.NewReader(c)
}

func TestAuthChallengesOnlyWhenAPersonCouldChangeTheVerdict(t *testing.T) {
	_, port := originHTTP(t)
	a := &tokenAuth{groups: map[string][]string{"alice": {"CN=Communications,OU=Groups,DC=x"}}, bound: map[netip.Addr]string{}}
	e := startEnv(t, authSpec(), func(o *Options) {
		o.Auth = a
		o.AuthClients = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	})
	c, br := proxyConn(t, e)

	// Unlisted: never asked, not even with credentials sent.
	if code, ch, _ := rawProxyGet(t, c, br, "http://plain.example:"+port+"/", "Proxy-Authenticate", ""); code != 200 || ch != "" {
		t.Fatalf("unlisted host: %d, Proxy-Authenticate %q; want 200 and no challenge", code, ch)
	}
	// Listed, but no rule names a person for it: the block page, no 407.
	if code, ch, _ := rawProxyGet(t, c, br, "http://other.test:"+port+"/", "Proxy-Authenticate", ""); code != 403 || ch != "" {
		t.Fatalf("other.test: %d, Proxy-Authenticate %q; want 403 without a challenge", code, ch)
	}
	if a.count() != 0 {
		t.Fatalf("%d verifications before any listed host needed one", a.count())
	}
	// Listed and a directory group could open it: 407 with the block page.
	code, ch, body := rawProxyGet(t, c, br, "http://www.social.test:"+port+"/", "Proxy-Authenticate", "")
	if code != http.StatusProxyAuthRequired || ch != "Negotiate" || !strings.Contains(body, "Social Test") {
		t.Fatalf("social.test without credentials: %d, %q; want 407 Negotiate with the block page\n%s", code, ch, body)
	}
	// Bad credentials: 407 again.
	if code, _, _ := rawProxyGet(t, c, br, "http://www.social.test:"+port+"/", "", "Proxy-Authorization: Negotiate forged\r\n"); code != 407 {
		t.Fatalf("forged credentials: %d, want 407", code)
	}
	// Alice, in the group: allowed, bound, and the connection remembers her.
	if code, _, body := rawProxyGet(t, c, br, "http://www.social.test:"+port+"/a", "", "Proxy-Authorization: Negotiate ok:alice\r\n"); code != 200 || !strings.Contains(body, "origin:") {
		t.Fatalf("alice: %d %s, want the origin", code, body)
	}
	if code, _, _ := rawProxyGet(t, c, br, "http://www.social.test:"+port+"/b", "", ""); code != 200 {
		t.Fatalf("alice's connection, second request without credentials: %d, want 200", code)
	}
	if n := a.count(); n != 2 {
		t.Errorf("%d verifications, want 2 (forged, alice): the connection is authenticated once", n)
	}
	if u, _, ok := a.Bound(netip.MustParseAddr("127.0.0.1"), time.Now()); !ok || u != "alice" {
		t.Errorf("binding of 127.0.0.1 = %q, %v; want alice", u, ok)
	}
	if !strings.Contains(e.logs.String(), "u-alice") || strings.Contains(e.logs.String(), "user=alice") {
		t.Errorf("decision lines should name alice by her log name only:\n%s", e.logs.String())
	}

	// Bob, on a new connection: authenticated, not in the group: blocked.
	c2, br2 := proxyConn(t, e)
	if code, _, _ := rawProxyGet(t, c2, br2, "http://www.social.test:"+port+"/", "", "Proxy-Authorization: Negotiate ok:bob\r\n"); code != 403 {
		t.Errorf("bob: %d, want 403", code)
	}

	// A client outside AuthClients is never challenged.
	c3, _, _ := rawConnect(t, e.addr, "127.0.0.3", "www.social.test:443")
	c3.Close()
	if e.metric("balise_proxy_authentications_total", map[string]string{"result": "challenged"}) != 1 {
		t.Errorf("challenged = %v, want 1 (the CONNECT from 127.0.0.3 must not be challenged)",
			e.metric("balise_proxy_authentications_total", map[string]string{"result": "challenged"}))
	}
}

func TestAuthConnectChallengeThenTunnel(t *testing.T) {
	_, _, port := originTLS(t)
	a := &tokenAuth{groups: map[string][]string{"alice": {"communications"}}, bound: map[netip.Addr]string{}}
	e := startEnv(t, authSpec(), func(o *Options) {
		o.Auth = a
		o.AuthClients = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
		o.ConnectPorts = []uint16{mustPort(t, port)}
	})
	target := "www.social.test:" + port
	c, br, code := rawConnect(t, e.addr, "", target)
	if code != http.StatusProxyAuthRequired {
		t.Fatalf("CONNECT without credentials: %d, want 407", code)
	}
	// The browser answers on the same connection.
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Negotiate ok:alice\r\n\r\n", target, target)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT with alice's credentials on the same connection: %v %v", resp, err)
	}
	c.Close()
	// Bob is blocked after authenticating.
	_, _, code = rawConnect(t, e.addr, "", target, "Proxy-Authorization: Negotiate ok:bob\r\n")
	if code != http.StatusForbidden {
		t.Errorf("CONNECT as bob: %d, want 403", code)
	}
}

// TestAuthRequestFormRecordsUser checks that an exception request posted
// from the block page records the person: on the authenticated
// connection, and on another connection after a 407.
func TestAuthRequestFormRecordsUser(t *testing.T) {
	_, port := originHTTP(t)
	ex := &fakeExceptions{}
	a := &tokenAuth{groups: map[string][]string{}, bound: map[netip.Addr]string{}}
	e := startEnv(t, authSpec(), func(o *Options) {
		o.Auth = a
		o.AuthClients = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
		o.Exceptions = ex
	})
	post := func(c net.Conn, br *bufio.Reader, extra string) int {
		t.Helper()
		body := "service=social"
		fmt.Fprintf(c, "POST http://www.social.test:%s/.balise/request HTTP/1.1\r\nHost: www.social.test\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n%s\r\n%s", port, len(body), extra, body)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	c, br := proxyConn(t, e)
	if code := post(c, br, ""); code != http.StatusProxyAuthRequired {
		t.Fatalf("POST without credentials: %d, want 407", code)
	}
	if code := post(c, br, "Proxy-Authorization: Negotiate ok:alice\r\n"); code != 200 {
		t.Fatalf("POST with alice's credentials: %d, want 200", code)
	}
	if code := post(c, br, ""); code != 200 {
		t.Fatalf("second POST on alice's connection: %d, want 200", code)
	}
	calls := ex.calls()
	if len(calls) != 2 || !strings.HasSuffix(calls[0], " user=alice") || !strings.HasSuffix(calls[1], " user=alice") {
		t.Errorf("register saw %q, want two requests from user alice", calls)
	}
}

// TestAuthTicketEndAsksAgain: a connection authenticated with a ticket
// that has since ended is challenged again, not trusted for ever.
func TestAuthTicketEndAsksAgain(t *testing.T) {
	_, port := originHTTP(t)
	a := &tokenAuth{groups: map[string][]string{"alice": {"communications"}}, bound: map[netip.Addr]string{}}
	e := startEnv(t, authSpec(), func(o *Options) {
		o.Auth = a
		o.AuthClients = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	})
	c, br := proxyConn(t, e)
	url := "http://www.social.test:" + port + "/"
	if code, _, _ := rawProxyGet(t, c, br, url, "", "Proxy-Authorization: Negotiate ending:alice\r\n"); code != 200 {
		t.Fatalf("alice with a valid ticket: %d, want 200", code)
	}
	if code, _, _ := rawProxyGet(t, c, br, url, "", ""); code != 200 {
		t.Fatalf("alice's connection before her ticket ends: %d, want 200", code)
	}
	time.Sleep(300 * time.Millisecond)
	if code, ch, _ := rawProxyGet(t, c, br, url, "Proxy-Authenticate", ""); code != http.StatusProxyAuthRequired || ch != "Negotiate" {
		t.Fatalf("alice's connection after her ticket ended: %d %q, want 407 Negotiate", code, ch)
	}
	if code, _, _ := rawProxyGet(t, c, br, url, "", "Proxy-Authorization: Negotiate ok:alice\r\n"); code != 200 {
		t.Fatalf("alice with a new ticket: %d, want 200", code)
	}
}
