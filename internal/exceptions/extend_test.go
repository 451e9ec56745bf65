package exceptions

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestExtend(t *testing.T) {
	eachStore(t, func(t *testing.T, newEnv envFunc) {
		e := newEnv(t, nil)
		ctx := context.Background()
		id := e.mustSubmit(t, sub("10.0.0.1", "facebook", justification(10))).ID
		if _, err := e.reg.Extend(ctx, id, Extension{By: "RSI", For: time.Hour}); !errors.Is(err, ErrState) {
			t.Fatalf("Extend(pending) = %v, want ErrState", err)
		}
		q, err := e.reg.Approve(ctx, id, Approval{By: "RSI", For: 4 * time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		end := q.Grant.NotAfter
		if q, err = e.reg.Extend(ctx, id, Extension{By: "RSI", For: 2 * time.Hour, Note: "prolongation"}); err != nil {
			t.Fatal(err)
		}
		if !q.Grant.NotAfter.Equal(end.Add(2 * time.Hour)) {
			t.Fatalf("NotAfter = %v, want %v", q.Grant.NotAfter, end.Add(2*time.Hour))
		}
		if _, err := e.reg.Extend(ctx, id, Extension{By: "RSI", Until: end}); err == nil {
			t.Fatal("Extend to an earlier end succeeded")
		}
		if _, err := e.reg.Extend(ctx, id, Extension{By: "RSI", For: MaxGrant}); err == nil {
			t.Fatal("Extend beyond MaxGrant succeeded")
		}
		if _, err := e.reg.Extend(ctx, id, Extension{By: "", For: time.Hour}); err == nil {
			t.Fatal("Extend without --by succeeded")
		}
		// The grant the engine sees ends at the new end.
		e.clock.Add(5 * time.Hour)
		grants, _, err := e.reg.Refresh(ctx, e.clock.Now())
		if err != nil || len(grants) != 1 || !grants[0].NotAfter.Equal(end.Add(2*time.Hour)) {
			t.Fatalf("Refresh after 5h = %+v, %v; want the extended grant", grants, err)
		}
		e.clock.Add(2 * time.Hour)
		if _, _, err := e.reg.Refresh(ctx, e.clock.Now()); err != nil {
			t.Fatal(err)
		}
		if _, err := e.reg.Extend(ctx, id, Extension{By: "RSI", For: time.Hour}); !errors.Is(err, ErrState) {
			t.Fatalf("Extend(expired) = %v, want ErrState", err)
		}
		h, err := e.reg.History(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		var kinds []string
		for _, ev := range h {
			kinds = append(kinds, ev.Event+":"+ev.Actor)
		}
		if got := strings.Join(kinds, ","); got != "request_received:,approved:RSI,extended:RSI,expired:balise" {
			t.Fatalf("History = %s", got)
		}
		if err := e.reg.Verify(ctx); err != nil {
			t.Fatalf("Verify: %v", err)
		}
	})
}

func TestApproveUserSubject(t *testing.T) {
	eachStore(t, func(t *testing.T, newEnv envFunc) {
		e := newEnv(t, nil)
		ctx := context.Background()
		s := sub("10.0.0.1", "facebook", justification(10))
		s.User = "jtremblay"
		id := e.mustSubmit(t, s).ID
		noUser := e.mustSubmit(t, sub("10.0.0.2", "facebook", justification(10))).ID
		if _, err := e.reg.Approve(ctx, noUser, Approval{By: "RSI", For: time.Hour, Subject: "user"}); !errors.Is(err, ErrNoDirectory) {
			t.Fatalf("Approve(user) of a request without user = %v", err)
		}
		q, err := e.reg.Approve(ctx, id, Approval{By: "RSI", For: time.Hour, Subject: "user"})
		if err != nil {
			t.Fatal(err)
		}
		got, _ := e.reg.Get(ctx, id)
		if got.Grant.User != "jtremblay" || got.Grant.Subject.IsValid() || q.Grant.User != "jtremblay" {
			t.Fatalf("grant = %+v", got.Grant)
		}
		grants, err := e.reg.ActiveGrants(ctx, e.clock.Now())
		if err != nil || len(grants) != 1 || grants[0].User != "jtremblay" {
			t.Fatalf("ActiveGrants = %+v, %v", grants, err)
		}
		if err := e.reg.Verify(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

func TestOnChange(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	var mu sync.Mutex
	var seen []string
	e.reg.OnChange(func(ev string, q Request) {
		mu.Lock()
		seen = append(seen, ev+":"+q.ID)
		mu.Unlock()
	})
	id := e.mustSubmit(t, sub("10.0.0.1", "facebook", justification(10))).ID
	e.reg.Approve(ctx, id, Approval{By: "RSI", For: time.Hour})
	e.reg.Deny(ctx, id, "RSI", "déjà acceptée") // refused: not reported
	e.reg.Extend(ctx, id, Extension{By: "RSI", For: time.Hour})
	e.reg.Revoke(ctx, id, "RSI", "fin du projet")
	if got := strings.Join(seen, ","); got != "request_received:EX-0001,approved:EX-0001,extended:EX-0001,revoked:EX-0001" {
		t.Fatalf("OnChange saw %s", got)
	}
}

var statusLinkRE = regexp.MustCompile(`href="([^"]*/\.balise/status/[^"]+)"`)

func TestStatusPage(t *testing.T) {
	w := newWebEnv(t, nil)
	w.web.opt.StatusBase = "" // relative links on the test server
	v := w.formValues(t, "10.0.0.1")
	code, body := w.post(t, "10.0.0.1:51515", v.Encode())
	m := statusLinkRE.FindStringSubmatch(body)
	if code != 200 || m == nil {
		t.Fatalf("answer = %d without a status link:\n%s", code, body)
	}
	token := strings.TrimPrefix(m[1], StatusPrefix)
	if len(token) < 43 {
		t.Fatalf("token %q is shorter than 256 bits", token)
	}
	get := func(path string) (int, http.Header, string) {
		resp, err := http.Get(w.server.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, string(b)
	}
	code, h, page := get(m[1])
	if code != 200 || h.Get("Referrer-Policy") != "no-referrer" || !strings.Contains(page, "en attente de décision") ||
		!strings.Contains(page, "waiting for a decision") || !strings.Contains(page, "EX-0001") {
		t.Fatalf("status page = %d %v\n%s", code, h, page)
	}
	// The store keeps the token's hash, never the token.
	var stored string
	w.reg.opt.Store.View(context.Background(), func(tx ReadTx) error {
		stored, _ = tx.(metaTx).meta(statusKey(token))
		return nil
	})
	if stored != "EX-0001" {
		t.Fatalf("meta[hash(token)] = %q", stored)
	}
	if raw, _ := json.Marshal(w.events(t)); strings.Contains(string(raw), token) {
		t.Fatal("the audit log holds the token")
	}
	wrong := token[:len(token)-1] + "A"
	if wrong == token { // the last character was already "A"
		wrong = token[:len(token)-1] + "B"
	}
	if code, _, _ := get(StatusPrefix + wrong); code != 404 {
		t.Fatalf("a wrong token = %d, want 404", code)
	}
	ctx := context.Background()
	if _, err := w.reg.Deny(ctx, "EX-0001", "RSI", "Motif <b>non</b> professionnel"); err != nil {
		t.Fatal(err)
	}
	code, _, page = get(m[1])
	if code != 200 || !strings.Contains(page, "refusée") || !strings.Contains(page, "denied") ||
		!strings.Contains(page, "Motif &lt;b&gt;non&lt;/b&gt;") {
		t.Fatalf("status page after deny = %d\n%s", code, page)
	}
	// It expires with the request.
	w.clock.Add(StatusKeep + time.Minute)
	if code, _, _ := get(m[1]); code != 404 {
		t.Fatalf("status page a week after the decision = %d, want 404", code)
	}
	if err := w.reg.Verify(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestNotificationBodies(t *testing.T) {
	q := Request{ID: "EX-0007", Services: []string{"facebook"}, Duration: 4 * time.Hour,
		Name: "Julie", Justification: "secret reason", Contact: "julie@example.org"}
	for _, f := range []string{"json", "slack", "teams"} {
		b := NotificationBody(f, q)
		var v map[string]any
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		s := string(b)
		if !strings.Contains(s, "EX-0007") || strings.Contains(s, "secret reason") || strings.Contains(s, "julie@") {
			t.Errorf("%s body = %s", f, s)
		}
		switch f {
		case "json":
			if v["event"] != "request_received" {
				t.Errorf("json body = %s", s)
			}
		case "slack":
			if _, ok := v["text"].(string); !ok || len(v) != 1 {
				t.Errorf("slack body = %s", s)
			}
		case "teams":
			att, _ := v["attachments"].([]any)
			if v["type"] != "message" || len(att) != 1 || !strings.Contains(s, "application/vnd.microsoft.card.adaptive") {
				t.Errorf("teams body = %s", s)
			}
		}
	}
}
