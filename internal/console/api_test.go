package console

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/balise-net/balise/internal/exceptions"
)

const why = "Publication des offres d'emploi de la campagne"

func TestLogin(t *testing.T) {
	e := newEnv(t, nil)
	c := e.client(t)
	if code, _ := c.do("GET", "/api/v1/session", nil, ""); code != 401 {
		t.Fatalf("session without sign-in = %d, want 401", code)
	}
	if code := c.login("rsi", "wrong password"); code != 401 {
		t.Fatalf("bad password = %d, want 401", code)
	}
	if code := c.login("nobody", officerPW); code != 401 {
		t.Fatalf("unknown user = %d, want 401", code)
	}
	c.mustLogin("RSI", officerPW)
	code, body := c.do("GET", "/api/v1/session", nil, "")
	var s sessionJSON
	json.Unmarshal([]byte(body), &s)
	if code != 200 || s.User != "rsi" || s.Role != RoleOfficer || len(s.CSRFToken) < 40 || s.CSRFToken != c.csrf {
		t.Fatalf("session = %d %s", code, body)
	}
	// The browser form: 303 and a cookie HttpOnly, SameSite=Strict.
	req, _ := http.NewRequest("POST", e.url+"/login", strings.NewReader("username=verif&password="+auditorPW))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := (&http.Transport{}).RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	ck := resp.Header.Get("Set-Cookie")
	if resp.StatusCode != 303 || !strings.Contains(ck, "HttpOnly") || !strings.Contains(ck, "SameSite=Strict") {
		t.Fatalf("form sign-in = %d, Set-Cookie %q", resp.StatusCode, ck)
	}
	// Sign-out ends the session.
	if code, _ := c.do("POST", "/logout", nil, c.csrf); code != 204 {
		t.Fatalf("logout = %d", code)
	}
	if code, _ := c.do("GET", "/api/v1/session", nil, ""); code != 401 {
		t.Fatalf("session after logout = %d, want 401", code)
	}
}

func TestSecureCookieUnderTLS(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Insecure = false })
	// The same handler behind TLS on loopback.
	srv := newTLSServer(t, e.console)
	form := url.Values{"username": {"rsi"}, "password": {officerPW}}
	hc := srv.Client()
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := hc.PostForm(srv.URL+"/login", form)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	var found bool
	for _, ck := range resp.Cookies() {
		if ck.Name == "__Host-balise_session" {
			found = ck.Secure && ck.HttpOnly && ck.SameSite == http.SameSiteStrictMode
		}
	}
	if !found {
		t.Fatalf("sign-in = %d: no Secure, HttpOnly, SameSite=Strict __Host- cookie: %v", resp.StatusCode, resp.Header["Set-Cookie"])
	}
}

func TestThrottleBeforeDirectory(t *testing.T) {
	dir := &countingDirectory{users: map[string]string{"alice": "alice-pw"}, groups: map[string][]string{"alice": {"RSI", "CN=RSI,OU=Groupes,DC=chus,DC=local"}}}
	e := newEnv(t, func(o *Options) { o.Directory = dir; o.Officers = []string{"rsi"}; o.MaxAccountFailures = 3 })
	c := e.client(t)
	for i := 0; i < 3; i++ {
		if code := c.login("alice", "guess"); code != 401 {
			t.Fatalf("failure %d = %d, want 401", i+1, code)
		}
	}
	before := dir.binds.Load()
	if before != 3 {
		t.Fatalf("binds = %d, want 3", before)
	}
	// Further attempts, even with the right password, are refused without
	// a bind: the directory's lockout counter never moves.
	for i := 0; i < 5; i++ {
		if code := c.login("ALICE", "alice-pw"); code != 429 {
			t.Fatalf("throttled attempt = %d, want 429", code)
		}
	}
	if n := dir.binds.Load(); n != before {
		t.Fatalf("throttled attempts bound %d times", n-before)
	}
	// Another account from the same source is not locked by alice's.
	if code := c.login("rsi", officerPW); code != 200 {
		t.Fatalf("other account = %d", code)
	}
	// After the window, alice signs in as an officer (group RSI).
	e.clock.Add(16 * time.Minute)
	c2 := e.client(t).mustLogin("alice", "alice-pw")
	if _, body := c2.do("GET", "/api/v1/session", nil, ""); !strings.Contains(body, `"role":"officer"`) {
		t.Fatalf("alice's session = %s", body)
	}
	// Per source: many accounts from one address.
	e2 := newEnv(t, func(o *Options) { o.Directory = dir; o.MaxSourceFailures = 4 })
	c3 := e2.client(t)
	for i := 0; i < 4; i++ {
		c3.login("user"+string(rune('a'+i)), "x")
	}
	before = dir.binds.Load()
	if code := c3.login("alice", "alice-pw"); code != 429 || dir.binds.Load() != before {
		t.Fatalf("after 4 failures from one source: %d, binds +%d", code, dir.binds.Load()-before)
	}
}

func TestCSRFAndRoles(t *testing.T) {
	e := newEnv(t, nil)
	id := e.submit(t, "10.0.0.1", "", why)
	off := e.client(t).mustLogin("rsi", officerPW)
	approve := map[string]string{"duration": "4h", "subject": "client"}
	path := "/api/v1/requests/" + id + "/approve"
	if code, _ := e.client(t).do("POST", path, approve, "anything"); code != 401 {
		t.Fatalf("approve without a session = %d, want 401", code)
	}
	if code, _ := off.do("POST", path, approve, ""); code != 403 {
		t.Fatalf("approve without CSRF = %d, want 403", code)
	}
	if code, _ := off.do("POST", path, approve, off.csrf+"x"); code != 403 {
		t.Fatalf("approve with a wrong CSRF = %d, want 403", code)
	}
	// Another session's token does not work either.
	other := e.client(t).mustLogin("rsi2", officerPW)
	if code, _ := off.do("POST", path, approve, other.csrf); code != 403 {
		t.Fatalf("approve with another session's CSRF = %d, want 403", code)
	}
	aud := e.client(t).mustLogin("verif", auditorPW)
	if code, _ := aud.do("POST", path, approve, aud.csrf); code != 403 {
		t.Fatalf("auditor approve = %d, want 403", code)
	}
	if code, _ := aud.do("GET", "/api/v1/requests/"+id, nil, ""); code != 200 {
		t.Fatalf("auditor read = %d", code)
	}
	if q, _ := e.reg.Get(context.Background(), id); q.Status != exceptions.StatusPending {
		t.Fatalf("status after refusals = %s", q.Status)
	}
	// A cross-site form post (Origin of another site) is refused too.
	req, _ := http.NewRequest("POST", e.url+path, strings.NewReader("duration=4h&csrf_token="+url.QueryEscape(off.csrf)))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", "https://evil.example")
	resp, err := off.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 {
		t.Fatalf("cross-origin form post = %d, want 403", resp.StatusCode)
	}
	code, body := off.do("POST", path, approve, off.csrf)
	if code != 200 || !strings.Contains(body, `"status":"approved"`) || !strings.Contains(body, `"decided_by":"rsi"`) {
		t.Fatalf("approve = %d %s", code, body)
	}
	// The audit chain names the signed-in officer.
	h, _ := e.reg.History(context.Background(), id)
	if len(h) != 2 || h[1].Actor != "rsi" {
		t.Fatalf("history = %+v", h)
	}
	// Extend, then revoke with a reason; deny without reason is refused.
	if code, body := off.do("POST", "/api/v1/requests/"+id+"/extend", map[string]string{"duration": "1d"}, off.csrf); code != 200 {
		t.Fatalf("extend = %d %s", code, body)
	}
	if code, _ := off.do("POST", "/api/v1/requests/"+id+"/revoke", map[string]string{}, off.csrf); code != 400 {
		t.Fatalf("revoke without reason = %d, want 400", code)
	}
	if code, body := off.do("POST", "/api/v1/requests/"+id+"/revoke", map[string]string{"reason": "fin"}, off.csrf); code != 200 {
		t.Fatalf("revoke = %d %s", code, body)
	}
	if code, _ := off.do("POST", "/api/v1/requests/"+id+"/approve", approve, off.csrf); code != 409 {
		t.Fatalf("approve of a revoked request = %d, want 409", code)
	}
	if code, _ := off.do("POST", "/api/v1/requests/EX-9999/approve", approve, off.csrf); code != 404 {
		t.Fatalf("approve of an unknown request = %d, want 404", code)
	}
	if code, _ := off.do("POST", "/api/v1/requests/"+id+"/approve", map[string]any{"duration": "4h", "by": "mallory"}, off.csrf); code != 400 {
		t.Fatalf("a body naming the officer = %d, want 400", code)
	}
	if err := e.reg.Verify(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestSelfDecision(t *testing.T) {
	dir := &countingDirectory{users: map[string]string{"alice": "pw-alice", "bob": "pw-bob"},
		groups: map[string][]string{"alice": {"RSI"}, "bob": {"RSI"}}}
	e := newEnv(t, func(o *Options) { o.Directory = dir; o.Officers = []string{"RSI"} })
	own := e.submit(t, "10.0.0.7", "ALICE@CHUS.LOCAL", why)
	alice := e.client(t).mustLogin("alice", "pw-alice")
	code, body := alice.do("POST", "/api/v1/requests/"+own+"/approve", map[string]string{"duration": "4h"}, alice.csrf)
	if code != 403 || !strings.Contains(body, "own_request") {
		t.Fatalf("self-approval = %d %s, want 403", code, body)
	}
	if code, _ := alice.do("POST", "/api/v1/requests/"+own+"/deny", map[string]string{"reason": "x"}, alice.csrf); code != 403 {
		t.Fatalf("self-denial = %d, want 403", code)
	}
	if _, page := alice.page("/requests/" + own); !strings.Contains(page, `id="own"`) || strings.Contains(page, `id="approve-form"`) {
		t.Fatal("the request page offers alice her own decision")
	}
	bob := e.client(t).mustLogin("bob", "pw-bob")
	code, body = bob.do("POST", "/api/v1/requests/"+own+"/approve", map[string]string{"duration": "4h", "subject": "user"}, bob.csrf)
	if code != 200 || !strings.Contains(body, `"user":"ALICE@CHUS.LOCAL"`) {
		t.Fatalf("bob approves alice's request for her = %d %s", code, body)
	}
}

func TestHostileJustificationEscaped(t *testing.T) {
	e := newEnv(t, nil)
	hostile := `<script>document.title="pwned"</script><img src=x onerror=alert(1)> "quoted" & more`
	id := e.submit(t, "10.0.0.1", "", hostile)
	c := e.client(t).mustLogin("rsi", officerPW)
	for _, p := range []string{"/requests/" + id, "/", "/requests?q=script"} {
		code, page := c.page(p)
		if code != 200 || strings.Contains(page, "<script>") || strings.Contains(page, "<img src=x") {
			t.Fatalf("%s = %d, markup unescaped:\n%s", p, code, page)
		}
	}
	_, page := c.page("/requests/" + id)
	if !strings.Contains(page, "&lt;script&gt;document.title=&#34;pwned&#34;&lt;/script&gt;") {
		t.Fatalf("the justification is not shown escaped:\n%s", page)
	}
	// The JSON API returns it as data.
	_, body := c.do("GET", "/api/v1/requests/"+id, nil, "")
	var q requestJSON
	if err := json.Unmarshal([]byte(body), &q); err != nil || q.Justification != hostile || len(q.History) != 1 {
		t.Fatalf("API = %s", body)
	}
}

func TestSessionIdleExpiry(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.SessionIdle = 30 * time.Minute })
	c := e.client(t).mustLogin("rsi", officerPW)
	e.clock.Add(29 * time.Minute)
	if code, _ := c.do("GET", "/api/v1/session", nil, ""); code != 200 {
		t.Fatalf("after 29 min = %d", code)
	}
	e.clock.Add(29 * time.Minute) // used 29 min ago: still alive
	if code, _ := c.do("GET", "/api/v1/session", nil, ""); code != 200 {
		t.Fatalf("29 min after last use = %d", code)
	}
	e.clock.Add(31 * time.Minute)
	if code, _ := c.do("GET", "/api/v1/session", nil, ""); code != 401 {
		t.Fatalf("31 min idle = %d, want 401", code)
	}
	// A browser is sent to the sign-in page, keeping where it was going.
	resp, err := c.hc.Get(e.url + "/requests/EX-0001")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 303 || resp.Header.Get("Location") != "/login?next=%2Frequests%2FEX-0001" {
		t.Fatalf("expired page = %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
}

// TestApproveRacesCLI races console decisions against the command line
// (another Register on the same store and audit log, as `balise
// exceptions` is another process): exactly one wins, the other gets a
// clear refusal, and the chain verifies.
func TestApproveRacesCLI(t *testing.T) {
	e := newEnv(t, nil)
	cli := e.openRegister(t)
	c := e.client(t).mustLogin("rsi", officerPW)
	ctx := context.Background()
	for i := 0; i < 10; i++ {
		id := e.submit(t, "10.0.1."+itoa(int64(i+1)), "", why)
		var wg sync.WaitGroup
		var code int
		var body string
		var cliErr error
		wg.Add(2)
		go func() {
			defer wg.Done()
			code, body = c.do("POST", "/api/v1/requests/"+id+"/approve", map[string]string{"duration": "4h"}, c.csrf)
		}()
		go func() {
			defer wg.Done()
			_, cliErr = cli.Deny(ctx, id, "rsi-cli", "refus en ligne de commande")
		}()
		wg.Wait()
		q, _ := e.reg.Get(ctx, id)
		switch {
		case code == 200 && cliErr != nil && errors.Is(cliErr, exceptions.ErrState) && q.Status == exceptions.StatusApproved:
		case code == 409 && cliErr == nil && q.Status == exceptions.StatusDenied:
		default:
			t.Fatalf("race %d: console %d %s, CLI %v, status %s", i, code, body, cliErr, q.Status)
		}
		// Now a revoke from both sides on an approved request.
		if q.Status == exceptions.StatusApproved {
			wg.Add(2)
			go func() {
				defer wg.Done()
				code, body = c.do("POST", "/api/v1/requests/"+id+"/revoke", map[string]string{"reason": "console"}, c.csrf)
			}()
			go func() {
				defer wg.Done()
				_, cliErr = cli.Revoke(ctx, id, "rsi-cli", "ligne de commande")
			}()
			wg.Wait()
			if (code == 200) == (cliErr == nil) {
				t.Fatalf("revoke race %d: console %d %s, CLI %v: want exactly one", i, code, body, cliErr)
			}
		}
	}
	if err := e.reg.Verify(ctx); err != nil {
		t.Fatalf("Verify after the races: %v", err)
	}
}

func TestSearchAndReport(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	e.clock.Add(-40 * 24 * time.Hour) // last month (or so)
	old := e.submit(t, "10.0.0.1", "", "Ancienne demande pour la recherche historique")
	e.clock.Add(2 * time.Hour)
	e.reg.Approve(ctx, old, exceptions.Approval{By: "rsi", For: time.Hour})
	e.clock.Add(40*24*time.Hour - 2*time.Hour)
	a := e.submit(t, "10.0.0.2", "", why)
	b := e.submit(t, "10.0.0.3", "", "Une autre raison assez longue pour passer")
	e.clock.Add(30 * time.Minute)
	e.reg.Deny(ctx, b, "rsi", "non")
	c := e.client(t).mustLogin("verif", auditorPW)
	list := func(q string) []string {
		code, body := c.do("GET", "/api/v1/requests?"+q, nil, "")
		if code != 200 {
			t.Fatalf("list %s = %d %s", q, code, body)
		}
		var v struct{ Requests []requestJSON }
		json.Unmarshal([]byte(body), &v)
		var ids []string
		for _, r := range v.Requests {
			ids = append(ids, r.ID)
		}
		return ids
	}
	since := e.clock.Now().Add(-50 * 24 * time.Hour).Format("2006-01-02")
	until := e.clock.Now().Add(-30 * 24 * time.Hour).Format("2006-01-02")
	tests := map[string]string{
		"status=pending":                          a,
		"status=denied":                           b,
		"q=historique":                            old,
		"client=10.0.0.3":                         b,
		"since=" + since + "&until=" + until:      old,
		"service=facebook&status=approved":        old,
		"q=" + url.QueryEscape("OFFRES D'EMPLOI"): a,
	}
	for q, want := range tests {
		if got := list(q); len(got) != 1 || got[0] != want {
			t.Errorf("search %s = %v, want [%s]", q, got, want)
		}
	}
	if code, _ := c.do("GET", "/api/v1/requests?status=bogus", nil, ""); code != 400 {
		t.Errorf("bad status = %d, want 400", code)
	}
	// The queue lists pending requests only; the report counts.
	_, page := c.page("/")
	if !strings.Contains(page, a) || strings.Contains(page, ">"+b+"<") {
		t.Errorf("queue:\n%s", page)
	}
	_, page = c.page("/report?from=" + since + "&to=" + e.clock.Now().Format("2006-01-02"))
	for _, want := range []string{`id="total">3<`, "chaîne intacte", "Facebook", `id="median">`} {
		if !strings.Contains(page, want) {
			t.Errorf("report lacks %q:\n%s", want, page)
		}
	}
	code, csv := c.page("/report.csv?from=" + since + "&to=" + e.clock.Now().Format("2006-01-02"))
	for _, want := range []string{"total,requests,3", "service,facebook,3", "decision,denied,1", "audit_chain,", ",ok"} {
		if code != 200 || !strings.Contains(csv, want) {
			t.Errorf("CSV lacks %q:\n%s", want, csv)
		}
	}
	// English.
	_, page = c.page("/report?lang=en")
	if !strings.Contains(page, `<html lang="en">`) || !strings.Contains(page, "Report for the committee") {
		t.Errorf("English report:\n%s", page)
	}
	_, page = c.page("/")
	if !strings.Contains(page, "Pending requests") {
		t.Error("the language cookie was not kept")
	}
}

func TestAccounts(t *testing.T) {
	e := newEnv(t, nil)
	if err := WriteAccount(e.accounts, "rsi", RoleAuditor, "un nouveau mot de passe"); err != nil {
		t.Fatal(err)
	}
	if err := WriteAccount(e.accounts, "x", RoleOfficer, "court"); err == nil {
		t.Fatal("a short password was accepted")
	}
	if err := WriteAccount(e.accounts, "a:b", RoleOfficer, "assez long mot de passe"); err == nil {
		t.Fatal("a name with a colon was accepted")
	}
	accts, err := readAccounts(e.accounts)
	if err != nil || len(accts) != 3 {
		t.Fatalf("accounts = %v, %v", accts, err)
	}
	c := e.client(t)
	if code := c.login("rsi", officerPW); code != 401 {
		t.Fatalf("old password = %d", code)
	}
	c.mustLogin("rsi", "un nouveau mot de passe")
	if _, body := c.do("GET", "/api/v1/session", nil, ""); !strings.Contains(body, `"role":"auditor"`) {
		t.Fatalf("role not changed: %s", body)
	}
}

func TestFormPosts(t *testing.T) {
	e := newEnv(t, nil)
	id := e.submit(t, "10.0.0.1", "", why)
	c := e.client(t).mustLogin("rsi", officerPW)
	post := func(action string, v url.Values) *http.Response {
		if !v.Has("csrf_token") {
			v.Set("csrf_token", c.csrf)
		}
		req, _ := http.NewRequest("POST", e.url+"/api/v1/requests/"+id+"/"+action, strings.NewReader(v.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Accept", "text/html")
		req.Header.Set("Origin", e.url)
		resp, err := c.hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	end := e.clock.Now().Add(48 * time.Hour).In(time.Local).Format("2006-01-02T15:04")
	resp := post("approve", url.Values{"duration": {"4h"}, "until": {end}, "subject": {"client"}})
	if resp.StatusCode != 303 || resp.Header.Get("Location") != "/requests/"+id+"?done=approve" {
		t.Fatalf("form approve = %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	q, _ := e.reg.Get(context.Background(), id)
	if got := q.Grant.NotAfter.In(time.Local).Format("2006-01-02T15:04"); got != end {
		t.Fatalf("grant ends %s, want %s (the typed end)", got, end)
	}
	if resp := post("revoke", url.Values{"reason": {"fin"}}); resp.StatusCode != 303 {
		t.Fatalf("form revoke = %d", resp.StatusCode)
	}
	if resp := post("deny", url.Values{"reason": {"x"}, "csrf_token": {"forged"}}); resp.StatusCode != 403 {
		t.Fatalf("form with a forged token = %d", resp.StatusCode)
	}
}
