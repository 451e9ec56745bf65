package exceptions

import (
	"context"
	"encoding/json"
	"html"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/balise-net/balise/internal/policy"
)

func TestTokens(t *testing.T) {
	key, err := LoadKey(filepath.Join(t.TempDir(), "state", "csrf.key"))
	if err != nil {
		t.Fatal(err)
	}
	tok := NewTokens(key, 2*time.Hour)
	other := NewTokens(make([]byte, 32), 2*time.Hour)
	c := netip.MustParseAddr("10.0.0.1")
	now := time.Date(2026, 11, 20, 14, 3, 0, 0, time.UTC)
	good := tok.Issue(c, now)
	forged := []byte(good)
	forged[len(forged)-1] ^= 1
	tests := []struct {
		name   string
		token  string
		client string
		at     time.Duration
		ok     bool
	}{
		{"same client", good, "10.0.0.1", 0, true},
		{"mapped form of the same client", good, "::ffff:10.0.0.1", 0, true},
		{"one hour later", good, "10.0.0.1", time.Hour, true},
		{"two hours later", good, "10.0.0.1", 2 * time.Hour, true},
		{"three hours later", good, "10.0.0.1", 3 * time.Hour, false},
		{"before it was issued", good, "10.0.0.1", -time.Hour, false},
		{"another client", good, "10.0.0.2", 0, false},
		{"forged byte", string(forged), "10.0.0.1", 0, false},
		{"other key", other.Issue(c, now), "10.0.0.1", 0, false},
		{"empty", "", "10.0.0.1", 0, false},
		{"garbage", "<script>", "10.0.0.1", 0, false},
	}
	for _, tt := range tests {
		err := tok.Check(tt.token, netip.MustParseAddr(tt.client), now.Add(tt.at))
		if (err == nil) != tt.ok {
			t.Errorf("%s: Check = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}

func TestLoadKeyPersists(t *testing.T) {
	path := filepath.Join(t.TempDir(), "csrf.key")
	k1, err := LoadKey(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key mode = %v, want 0600", fi.Mode().Perm())
	}
	k2, _ := LoadKey(path)
	if string(k1) != string(k2) || len(k1) != 32 {
		t.Fatal("LoadKey returned another key on the second call")
	}
}

type webEnv struct {
	*testEnv
	web    *Web
	server *httptest.Server
}

func newWebEnv(t testing.TB, mod func(*Options)) *webEnv {
	t.Helper()
	e := newEnv(t, mod)
	key, err := LoadKey(filepath.Join(e.dir, "csrf.key"))
	if err != nil {
		t.Fatal(err)
	}
	w, err := NewWeb(WebOptions{Register: e.reg, Tokens: NewTokens(key, 0), Clock: e.clock.Now,
		ServiceName: func(id string) string { return map[string]string{"facebook": "Facebook"}[id] }})
	if err != nil {
		t.Fatal(err)
	}
	// The test server stands in for the proxy, which sets RemoteAddr to
	// the client's address; here the client says who it is in a header.
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if c := r.Header.Get("X-Test-Client"); c != "" {
			r.RemoteAddr = c
		}
		if u := r.Header.Get("X-Test-User"); u != "" {
			r = r.WithContext(WithUser(r.Context(), u))
		}
		w.ServeHTTP(rw, r)
	}))
	t.Cleanup(srv.Close)
	return &webEnv{e, w, srv}
}

var blocked = policy.Decision{Verdict: policy.Block, Reason: policy.ReasonRule, Service: "facebook", ServiceName: "Facebook", Category: "networking"}

var tokenRE = regexp.MustCompile(`name="token" value="([^"]+)"`)

// formValues returns the values a browser would post from the form.
func (w *webEnv) formValues(t *testing.T, client string) url.Values {
	t.Helper()
	f := string(w.web.Form(netip.MustParseAddr(client), blocked, "www.facebook.com", "fr"))
	m := tokenRE.FindStringSubmatch(f)
	if m == nil {
		t.Fatalf("form has no token: %s", f)
	}
	return url.Values{"service": {"facebook"}, "host": {"www.facebook.com"}, "token": {html.UnescapeString(m[1])},
		"lang": {"fr"}, "name": {"Julie Tremblay"}, "contact": {"poste 4321"},
		"justification": {"Publication des offres d'emploi de la campagne"}, "duration": {"4h"}}
}

func (w *webEnv) post(t *testing.T, client string, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", w.server.URL+RequestPath, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("X-Test-Client", client)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestFormRendering(t *testing.T) {
	w := newWebEnv(t, nil)
	c := netip.MustParseAddr("10.0.0.1")
	f := string(w.web.Form(c, blocked, "www.facebook.com", "fr"))
	for _, want := range []string{`action="/.balise/request"`, `name="service" value="facebook"`, `name="justification"`,
		`<option value="4h">4 heures</option>`, `<option value="7d">7 jours</option>`, `<option value="1h">1 heure</option>`, "Demander une exception"} {
		if !strings.Contains(f, want) {
			t.Errorf("Form(fr) lacks %s:\n%s", want, f)
		}
	}
	if en := string(w.web.Form(c, blocked, "www.facebook.com", "en")); !strings.Contains(en, "Ask for an exception") || !strings.Contains(en, "7 days") {
		t.Errorf("Form(en) = %s", en)
	}
	hostile := blocked
	hostile.ServiceName = `<script>alert(1)</script>`
	f = string(w.web.Form(c, hostile, `"><script>alert(2)</script>`, "fr"))
	if strings.Contains(f, "<script>") {
		t.Errorf("Form echoes markup unescaped:\n%s", f)
	}
	for _, d := range []policy.Decision{
		{Verdict: policy.Allow, Reason: policy.ReasonGrant, Service: "facebook"},
		{Verdict: policy.Block, Reason: policy.ReasonCanary, Service: "canary"},
		{Verdict: policy.Allow, Reason: policy.ReasonUnlisted},
	} {
		if f := w.web.Form(c, d, "x", "fr"); f != "" {
			t.Errorf("Form(%v) = %s, want empty", d, f)
		}
	}
}

func TestWebSubmit(t *testing.T) {
	w := newWebEnv(t, nil)
	v := w.formValues(t, "10.0.0.1")
	code, body := w.post(t, "10.0.0.1:51515", v.Encode())
	if code != 200 || !strings.Contains(body, "EX-0001") || !strings.Contains(body, "Demande reçue") || !strings.Contains(body, "Request received") {
		t.Fatalf("POST = %d\n%s\nwant 200 with the request number in both languages", code, body)
	}
	// The request is durable before the answer: both store and log have it.
	if q, err := w.reg.Get(context.Background(), "EX-0001"); err != nil || q.Client.String() != "10.0.0.1" || q.Host != "www.facebook.com" {
		t.Fatalf("stored request = %+v, %v", q, err)
	}
	if n := countEvents(t, w.log); n != 1 {
		t.Fatalf("log has %d events, want 1", n)
	}
	// A double click is the same request.
	code, body = w.post(t, "10.0.0.1:51516", v.Encode())
	if code != 200 || !strings.Contains(body, "EX-0001") || !strings.Contains(body, "déjà été reçue") {
		t.Fatalf("resubmission = %d\n%s\nwant the same number", code, body)
	}
}

// TestWebRecordsAuthenticatedUser checks that a request sent over a
// connection the proxy authenticated records that user, and that the form
// cannot name one.
func TestWebRecordsAuthenticatedUser(t *testing.T) {
	w := newWebEnv(t, nil)
	v := w.formValues(t, "10.0.0.1")
	req, _ := http.NewRequest("POST", w.server.URL+RequestPath, strings.NewReader(v.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("X-Test-Client", "10.0.0.1:4000")
	req.Header.Set("X-Test-User", "alice")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("POST = %d", resp.StatusCode)
	}
	if q, err := w.reg.Get(context.Background(), "EX-0001"); err != nil || q.User != "alice" {
		t.Fatalf("stored request user = %q, %v; want alice", q.User, err)
	}
	v2 := w.formValues(t, "10.0.0.2")
	v2.Set("user", "mallory")
	if code, _ := w.post(t, "10.0.0.2:4000", v2.Encode()); code != http.StatusBadRequest {
		t.Errorf("form with a user field = %d, want 400", code)
	}
}

func TestWebRejects(t *testing.T) {
	w := newWebEnv(t, nil)
	good := w.formValues(t, "10.0.0.1")
	with := func(k, val string) string {
		v := url.Values{}
		for kk, vv := range good {
			v[kk] = vv
		}
		v.Set(k, val)
		return v.Encode()
	}
	tests := []struct {
		name   string
		client string
		body   string
		code   int
		want   string
	}{
		{"token for another client", "10.0.0.2:1", good.Encode(), 403, "expiré"},
		{"no token", "10.0.0.1:1", with("token", ""), 403, "expired"},
		{"short justification", "10.0.0.1:1", with("justification", "court"), 400, "au moins 20"},
		{"control character", "10.0.0.1:1", with("name", "Julie\x07"), 400, "contrôle"},
		{"unknown field", "10.0.0.1:1", good.Encode() + "&admin=1", 400, "unexpected"},
		{"repeated field", "10.0.0.1:1", good.Encode() + "&name=x", 400, "unexpected"},
		{"duration not offered", "10.0.0.1:1", with("duration", "999h"), 400, "Durée"},
		{"too large", "10.0.0.1:1", with("justification", strings.Repeat("a", MaxBody)), 413, "too long"},
		{"malformed", "10.0.0.1:1", "name=%zz", 400, "malformed"},
		{"no client address", "nonsense", good.Encode(), 400, "unknown"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := w.post(t, tt.client, tt.body)
			if code != tt.code || !strings.Contains(body, tt.want) {
				t.Fatalf("POST = %d\n%s\nwant %d containing %q", code, body, tt.code, tt.want)
			}
		})
	}
	if list, _ := w.reg.List(context.Background(), ""); len(list) != 0 {
		t.Fatalf("rejected posts stored %d requests", len(list))
	}
	for _, m := range []struct{ method, path, ct string }{{"GET", RequestPath, ""}, {"GET", "/.balise/x", ""}, {"POST", RequestPath, "multipart/form-data"}} {
		req, _ := http.NewRequest(m.method, w.server.URL+m.path, strings.NewReader(good.Encode()))
		req.Header.Set("Content-Type", m.ct)
		req.Header.Set("X-Test-Client", "10.0.0.1")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode < 400 {
			t.Errorf("%s %s (%s) = %d, want an error", m.method, m.path, m.ct, resp.StatusCode)
		}
	}
	// Every refusal but the 404 is counted as rejected traffic.
	if got := testCounter(w.reg.metrics.requests[resultRejected]); got != float64(len(tests)+2) {
		t.Errorf("requests_total{result=rejected} = %v, want %d", got, len(tests)+2)
	}
}

func TestWebEscapesAndLimits(t *testing.T) {
	w := newWebEnv(t, func(o *Options) { o.MaxPendingPerClient = 2 })
	v := w.formValues(t, "10.0.0.1")
	v.Set("name", `<script>alert("nom")</script>`)
	v.Set("justification", `<img src=x onerror=alert(1)> besoin pour la campagne`)
	code, body := w.post(t, "10.0.0.1", v.Encode())
	if code != 200 || strings.Contains(body, "<script>") || strings.Contains(body, "<img") {
		t.Fatalf("POST = %d\n%s\nwant 200 with nothing echoed unescaped", code, body)
	}
	if q, _ := w.reg.Get(context.Background(), "EX-0001"); q.Name != `<script>alert("nom")</script>` {
		t.Fatalf("stored name = %q, want it kept verbatim (escaped only on output)", q.Name)
	}
	v.Set("justification", "deuxième demande, autre besoin réel")
	if code, _ := w.post(t, "10.0.0.1", v.Encode()); code != 200 {
		t.Fatalf("2nd POST = %d", code)
	}
	v.Set("justification", "troisième demande, encore un autre besoin")
	code, body = w.post(t, "10.0.0.1", v.Encode())
	if code != 429 || !strings.Contains(body, "2 demandes en attente") || !strings.Contains(body, "2 requests waiting") {
		t.Fatalf("3rd POST = %d\n%s\nwant 429 naming the limit", code, body)
	}
}

func TestNotifier(t *testing.T) {
	var calls atomic.Int32
	got := make(chan Summary, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			http.Error(rw, "busy", http.StatusServiceUnavailable)
			return
		}
		var s Summary
		json.NewDecoder(r.Body).Decode(&s)
		got <- s
	}))
	defer srv.Close()
	n := NewNotifier(NotifierOptions{URL: srv.URL, Backoff: 10 * time.Millisecond, Timeout: time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go n.Run(ctx)
	e := newEnv(t, func(o *Options) { o.Notify = n.Enqueue })
	rc := e.mustSubmit(t, sub("10.0.0.1", "facebook", justification(0)))
	select {
	case s := <-got:
		if s.ID != rc.ID || s.Services[0] != "facebook" || s.Client != "10.0.0.1" || calls.Load() != 2 {
			t.Fatalf("notification = %+v after %d calls", s, calls.Load())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no notification within 10 s")
	}
}

func TestNotifierNeverBlocks(t *testing.T) {
	n := NewNotifier(NotifierOptions{URL: "http://127.0.0.1:1/"}) // never Run
	m, _ := NewMetrics(newRegistry())
	n.opt.Metrics = m
	done := make(chan struct{})
	go func() {
		for i := 0; i < 1000; i++ {
			n.Enqueue(Request{ID: "EX-1"})
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Enqueue blocked on a full queue")
	}
	if got := testCounter(m.notifyErrors); got != 1000-256 {
		t.Fatalf("notify failures = %v, want %d dropped", got, 1000-256)
	}
}

// TestFormSaysPending checks that once a workstation's request is
// pending, its block page says so (with the request's number) instead of
// offering the form again, while another workstation still gets the form.
func TestFormSaysPending(t *testing.T) {
	w := newWebEnv(t, nil)
	v := w.formValues(t, "10.0.0.1")
	if code, _ := w.post(t, "10.0.0.1:4000", v.Encode()); code != 200 {
		t.Fatalf("POST = %d", code)
	}
	if _, _, err := w.reg.Refresh(context.Background(), w.clock.Now()); err != nil {
		t.Fatal(err)
	}
	f := string(w.web.Form(netip.MustParseAddr("10.0.0.1"), blocked, "www.facebook.com", "fr"))
	if !strings.Contains(f, "EX-0001") || !strings.Contains(f, "déjà en attente") || strings.Contains(f, "<form") {
		t.Errorf("form of a workstation with a pending request:\n%s\nwant the pending notice with EX-0001 and no form", f)
	}
	if en := string(w.web.Form(netip.MustParseAddr("10.0.0.1"), blocked, "www.facebook.com", "en")); !strings.Contains(en, "already pending") {
		t.Errorf("English notice missing:\n%s", en)
	}
	if g := string(w.web.Form(netip.MustParseAddr("10.0.0.2"), blocked, "www.facebook.com", "fr")); !strings.Contains(g, "<form") {
		t.Errorf("another workstation lost the form:\n%s", g)
	}
}
