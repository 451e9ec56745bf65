package exceptions

import (
	"context"
	"errors"
	"html"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/balise-net/balise/internal/policy"
)

var testPlan = CreditPlan{Name: "pause", Services: []string{"facebook", "x"}, Minutes: 2 * time.Minute, Per: time.Hour}

func breaksIn(grants []policy.Grant) []policy.Grant {
	var out []policy.Grant
	for _, g := range grants {
		if g.Credit != "" {
			out = append(out, g)
		}
	}
	return out
}

func countSpans(t *testing.T, r *Register) int {
	t.Helper()
	cs, err := r.creditStore()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	err = cs.creditTx(context.Background(), false, func(c *creditRunner) error {
		s, err := c.spans("end_ns > ?", int64(0))
		n = len(s)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestCreditSubject(t *testing.T) {
	for _, tc := range []struct{ client, user, want string }{
		{"10.1.2.3", "", "10.1.2.3/32"},
		{"::ffff:10.1.2.3", "", "10.1.2.3/32"},
		{"2001:db8:1:2:aaaa:bbbb:cccc:dddd", "", "2001:db8:1:2::/64"},
		{"2001:db8:1:2::1", "Alice", "user:alice"},
	} {
		if got := CreditSubject(netip.MustParseAddr(tc.client), tc.user); got != tc.want {
			t.Errorf("CreditSubject(%s, %q) = %s, want %s", tc.client, tc.user, got, tc.want)
		}
	}
}

func TestCreditStore(t *testing.T) {
	eachStore(t, func(t *testing.T, newEnv envFunc) {
		e := newEnv(t, nil)
		ctx := context.Background()
		reg := prometheus.NewRegistry()
		if err := e.reg.SetCredits(func() []CreditPlan { return []CreditPlan{testPlan} }, reg); err != nil {
			t.Fatal(err)
		}
		r, ws, other := e.reg, "10.1.2.3/32", "10.1.2.4/32"
		t0 := e.clock.Now()
		// Nothing counted before the first refresh.
		if _, _, err := r.Refresh(ctx, t0); err != nil {
			t.Fatal(err)
		}
		st, err := r.StartBreak(ctx, ws, testPlan, t0)
		if err != nil || !st.Active || !st.Ends.Equal(t0.Add(2*time.Minute)) || st.Person {
			t.Fatalf("StartBreak = %+v, %v; want a break of 2 min of the workstation", st, err)
		}
		// Starting again while it runs changes nothing.
		if st2, err := r.StartBreak(ctx, ws, testPlan, t0.Add(10*time.Second)); err != nil || !st2.Ends.Equal(st.Ends) {
			t.Fatalf("second StartBreak = %+v, %v", st2, err)
		}
		grants, _, err := r.Refresh(ctx, t0.Add(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		b := breaksIn(grants)
		if len(b) != 1 || b[0].Credit != "pause" || b[0].Subject != netip.MustParsePrefix(ws) || !b[0].NotAfter.Equal(st.Ends) ||
			len(b[0].Services) != 2 {
			t.Fatalf("breaks in the snapshot = %+v", b)
		}
		// The break survives a restart (another process on the store).
		r2 := e.open(t, nil)
		r2.SetCredits(func() []CreditPlan { return []CreditPlan{testPlan} }, nil)
		if g, _, err := r2.Refresh(ctx, t0.Add(time.Second)); err != nil || len(breaksIn(g)) != 1 {
			t.Fatalf("after a restart: %v, %v", g, err)
		}
		// Another workstation is unaffected.
		if s, err := r.Credit(ctx, other, testPlan, t0.Add(time.Second)); err != nil || s.Left != 2*time.Minute || s.Active {
			t.Fatalf("other workstation: %+v, %v", s, err)
		}
		// Ended after one minute: the unused minute stays.
		t1 := t0.Add(time.Minute)
		if ok, err := r.EndBreak(ctx, ws, "pause", t1); !ok || err != nil {
			t.Fatalf("EndBreak = %v, %v", ok, err)
		}
		if g, _, _ := r.Refresh(ctx, t1); len(breaksIn(g)) != 0 {
			t.Fatalf("ended break still in the snapshot: %+v", g)
		}
		s, _ := r.Credit(ctx, ws, testPlan, t1)
		if s.Left != time.Minute || s.Active || !s.Refill.Equal(t0.Add(time.Hour)) {
			t.Fatalf("after ending: %+v, want 1 min left, refill at %v", s, t0.Add(time.Hour))
		}
		// The second break lasts the minute left; then the credit is spent.
		t2 := t1.Add(10 * time.Minute)
		if s, err := r.StartBreak(ctx, ws, testPlan, t2); err != nil || !s.Ends.Equal(t2.Add(time.Minute)) {
			t.Fatalf("second break: %+v, %v", s, err)
		}
		t3 := t2.Add(time.Minute)
		if g, _, _ := r.Refresh(ctx, t3); len(breaksIn(g)) != 0 {
			t.Fatalf("break past its end still in the snapshot: %+v", g)
		}
		if _, err := r.StartBreak(ctx, ws, testPlan, t3); !errors.Is(err, ErrCreditSpent) {
			t.Fatalf("StartBreak with no credit left: %v, want ErrCreditSpent", err)
		}
		if got := testutil.ToFloat64(r.credit.started.WithLabelValues("pause")); got != 2 {
			t.Errorf("breaks started = %v, want 2", got)
		}
		if got := testutil.ToFloat64(r.credit.used.WithLabelValues("pause")); got != 120 {
			t.Errorf("seconds used = %v, want 120", got)
		}
		// An hour after the last break ended, everything is back and the
		// spans are gone (no history).
		t4 := t3.Add(time.Hour)
		r.Refresh(ctx, t4)
		if s, _ := r.Credit(ctx, ws, testPlan, t4); s.Left != 2*time.Minute || !s.Refill.IsZero() {
			t.Fatalf("an hour later: %+v", s)
		}
		if n := countSpans(t, r); n != 0 {
			t.Fatalf("%d spans kept past the window", n)
		}
	})
}

func TestCreditWeb(t *testing.T) {
	w := newWebEnv(t, nil)
	w.reg.SetCredits(func() []CreditPlan { return []CreditPlan{testPlan} }, nil)
	w.web.opt.Credits = func(client netip.Addr, user, service string) []CreditPlan {
		if service == "facebook" && client != netip.MustParseAddr("10.9.9.9") {
			return []CreditPlan{testPlan}
		}
		return nil
	}
	w.web.opt.CreditsOf = func(client netip.Addr, user string) []CreditPlan {
		if client == netip.MustParseAddr("10.9.9.9") {
			return nil
		}
		return []CreditPlan{testPlan}
	}
	page := string(w.web.Form(netip.MustParseAddr("10.1.2.3"), blocked, "www.facebook.com", "fr"))
	if !strings.Contains(page, "Commencer ma pause") || !strings.Contains(page, "Le crédit de pause de ce poste") ||
		!strings.Contains(page, `<span class="break-left">2 min</span>`) || !strings.Contains(page, "Demander une exception") {
		t.Fatalf("block page without the break box: %s", page)
	}
	if p := string(w.web.Form(netip.MustParseAddr("10.9.9.9"), blocked, "www.facebook.com", "fr")); strings.Contains(p, "pause") {
		t.Fatalf("break offered to a client without credit: %s", p)
	}
	post := func(client, path string, vals url.Values) (int, string) {
		req, _ := http.NewRequest("POST", w.server.URL+path, strings.NewReader(vals.Encode()))
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
	tok := html.UnescapeString(tokenRE.FindStringSubmatch(page)[1])
	vals := url.Values{"credit": {"pause"}, "service": {"facebook"}, "host": {"www.facebook.com"}, "token": {tok}, "lang": {"fr"}}
	// A token issued to another workstation is refused.
	if code, _ := post("10.1.2.4", BreakStartPath, vals); code != http.StatusForbidden {
		t.Fatalf("foreign token: %d, want 403", code)
	}
	code, body := post("10.1.2.3", BreakStartPath, vals)
	if code != http.StatusOK || !strings.Contains(body, "Pause commencée") || !strings.Contains(body, "Terminer ma pause") {
		t.Fatalf("start: %d %s", code, body)
	}
	if g := breaksIn(w.reg.Grants(w.clock.Now())); len(g) != 0 {
		// Grants reads no store: the break arrives at the next refresh.
		t.Logf("break already in the cached snapshot: %+v", g)
	}
	if g, _, _ := w.reg.Refresh(context.Background(), w.clock.Now()); len(breaksIn(g)) != 1 {
		t.Fatalf("break not in the snapshot after start: %+v", g)
	}
	panel := string(w.web.CreditPanel(context.Background(), netip.MustParseAddr("10.1.2.3"), "fr"))
	if !strings.Contains(panel, "Pause en cours") || !strings.Contains(panel, "Terminer ma pause") {
		t.Fatalf("portal panel: %s", panel)
	}
	w.clock.Add(30 * time.Second)
	code, body = post("10.1.2.3", BreakEndPath, url.Values{"credit": {"pause"}, "token": {tok}, "lang": {"fr"}})
	if code != http.StatusOK || !strings.Contains(body, "Pause terminée") || !strings.Contains(body, "1 min 30 s") {
		t.Fatalf("end: %d %s", code, body)
	}
	// Bounded per client.
	var last int
	for range 8 {
		last, _ = post("10.1.2.3", BreakEndPath, url.Values{"credit": {"pause"}, "token": {tok}})
	}
	if last != http.StatusTooManyRequests {
		t.Fatalf("after many posts: %d, want 429", last)
	}
	// A client without the credit cannot start it, even with a valid token.
	w.clock.Add(time.Minute)
	tok9 := w.web.opt.Tokens.Issue(netip.MustParseAddr("10.9.9.9"), w.clock.Now())
	if code, _ := post("10.9.9.9", BreakStartPath, url.Values{"credit": {"pause"}, "service": {"facebook"}, "token": {tok9}}); code != http.StatusNotFound {
		t.Fatalf("start without the credit: %d, want 404", code)
	}
	if code, _ := post("10.1.2.5", BreakStartPath, url.Values{"credit": {"pause"}, "token": {tok}, "evil": {"1"}}); code != http.StatusBadRequest {
		t.Fatalf("unexpected field: %d, want 400", code)
	}
}
