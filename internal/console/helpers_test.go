package console

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/balise-net/balise/internal/adtest"
	"github.com/balise-net/balise/internal/exceptions"
)

var ad adtest.Shared

func TestMain(m *testing.M) {
	code := m.Run()
	ad.Close()
	os.Exit(code)
}

// clock is a settable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// env is a register, a console on a real loopback listener, and local
// accounts: rsi and rsi2 (officers), verif (auditor).
type env struct {
	dir      string
	clock    *clock
	reg      *exceptions.Register
	console  *Console
	url      string
	accounts string
}

const (
	officerPW = "officier-mot-de-passe"
	auditorPW = "verificateur-mot-de-passe"
)

func newEnv(t testing.TB, mod func(*Options)) *env {
	t.Helper()
	dir := t.TempDir()
	e := &env{dir: dir, clock: &clock{t: time.Now().Truncate(time.Second)}, accounts: filepath.Join(dir, "accounts")}
	e.reg = e.openRegister(t)
	for _, a := range []struct{ user, role, pw string }{
		{"rsi", RoleOfficer, officerPW}, {"rsi2", RoleOfficer, officerPW}, {"verif", RoleAuditor, auditorPW},
	} {
		if err := WriteAccount(e.accounts, a.user, a.role, a.pw); err != nil {
			t.Fatal(err)
		}
	}
	opt := Options{Register: e.reg, AccountsFile: e.accounts, Insecure: true, Clock: e.clock.Now,
		ServiceName: func(id string) string { return map[string]string{"facebook": "Facebook"}[id] }}
	if mod != nil {
		mod(&opt)
	}
	c, err := New(opt)
	if err != nil {
		t.Fatal(err)
	}
	e.console = c
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: c, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	e.url = "http://" + ln.Addr().String()
	return e
}

// openRegister opens a register on the environment's store: called again,
// it stands for another process (the command line).
func (e *env) openRegister(t testing.TB) *exceptions.Register {
	t.Helper()
	st, err := exceptions.OpenSQLite(context.Background(), filepath.Join(e.dir, "balise.db"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := exceptions.Open(context.Background(), exceptions.Options{Store: st, CloseStore: true,
		AuditLog: filepath.Join(e.dir, "exceptions.jsonl"), Clock: e.clock.Now, MaxPendingPerClient: -1, MaxPerDayPerClient: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// submit records a request from client (user may be "").
func (e *env) submit(t testing.TB, client, user, why string) string {
	t.Helper()
	rc, err := e.reg.Submit(context.Background(), exceptions.Submission{
		Client: netip.MustParseAddr(client), User: user, Name: "Julie Tremblay", Contact: "julie@example.org",
		Service: "facebook", Host: "www.facebook.com", Justification: why, Duration: 4 * time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	return rc.ID
}

// client is a browser-like API client with its own cookie jar.
type client struct {
	t    testing.TB
	base string
	hc   *http.Client
	csrf string
}

func (e *env) client(t testing.TB) *client {
	jar, _ := cookiejar.New(nil)
	return &client{t: t, base: e.url, hc: &http.Client{Jar: jar, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

// login posts the sign-in form and returns the status.
func (c *client) login(user, pw string) int {
	c.t.Helper()
	req, _ := http.NewRequest("POST", c.base+"/login", strings.NewReader(url.Values{"username": {user}, "password": {pw}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == 200 {
		var s sessionJSON
		json.NewDecoder(resp.Body).Decode(&s)
		c.csrf = s.CSRFToken
	}
	return resp.StatusCode
}

func (c *client) mustLogin(user, pw string) *client {
	c.t.Helper()
	if code := c.login(user, pw); code != 200 {
		c.t.Fatalf("login(%s) = %d", user, code)
	}
	return c
}

// do sends a request and returns the status and body.
func (c *client) do(method, path string, body any, csrf string) (int, string) {
	c.t.Helper()
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = strings.NewReader(string(b))
	}
	req, _ := http.NewRequest(method, c.base+path, r)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if csrf != "" {
		req.Header.Set("X-CSRF-Token", csrf)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// page GETs an HTML page.
func (c *client) page(path string) (int, string) {
	c.t.Helper()
	resp, err := c.hc.Get(c.base + path)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// countingDirectory is a directory that counts binds.
type countingDirectory struct {
	users  map[string]string   // user → password
	groups map[string][]string // user → groups
	binds  atomic.Int64
}

var errBadPassword = errors.New("directory: invalid credentials")

func (d *countingDirectory) Authenticate(_ context.Context, user, pw string) error {
	d.binds.Add(1)
	if p, ok := d.users[strings.ToLower(user)]; ok && p == pw {
		return nil
	}
	return errBadPassword
}

func (d *countingDirectory) Groups(_ context.Context, user string) ([]string, error) {
	return d.groups[strings.ToLower(user)], nil
}
