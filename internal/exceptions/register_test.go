package exceptions

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

func TestSubmitValidation(t *testing.T) {
	eachStore(t, func(t *testing.T, newEnv envFunc) {
		e := newEnv(t, func(o *Options) { o.ValidService = func(id string) bool { return id != "unknown" } })
		ok := sub("10.0.0.1", "facebook", justification(0))
		tests := []struct {
			name  string
			edit  func(*Submission)
			field string
		}{
			{"valid", func(*Submission) {}, ""},
			{"short justification", func(s *Submission) { s.Justification = "trop court" }, "justification"},
			{"19 characters", func(s *Submission) { s.Justification = strings.Repeat("é", 19) }, "justification"},
			{"20 characters", func(s *Submission) { s.Justification = strings.Repeat("é", 20) }, ""},
			{"2000 characters", func(s *Submission) { s.Justification = strings.Repeat("a", 2000) }, ""},
			{"2001 characters", func(s *Submission) { s.Justification = strings.Repeat("a", 2001) }, "justification"},
			{"newlines in justification", func(s *Submission) { s.Justification += "\r\nsecond line\tok" }, ""},
			{"control character", func(s *Submission) { s.Justification += "\x1b[31m" }, "justification"},
			{"NUL in name", func(s *Submission) { s.Name = "Julie\x00" }, "name"},
			{"newline in name", func(s *Submission) { s.Name = "Julie\nTremblay" }, "name"},
			{"bidi override", func(s *Submission) { s.Contact = "poste \u202e1234" }, "contact"},
			{"invalid UTF-8", func(s *Submission) { s.Name = "Julie \xff" }, "name"},
			{"missing name", func(s *Submission) { s.Name = "  " }, "name"},
			{"long name", func(s *Submission) { s.Name = strings.Repeat("n", MaxName+1) }, "name"},
			{"unknown service", func(s *Submission) { s.Service = "unknown" }, "service"},
			{"malformed service", func(s *Submission) { s.Service = "Face book" }, "service"},
			{"bad host", func(s *Submission) { s.Host = "<script>" }, "host"},
			{"duration not offered", func(s *Submission) { s.Duration = 3 * time.Hour }, "duration"},
			{"no client", func(s *Submission) { s.Client = netip.Addr{} }, "client"},
		}
		for i, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				s := ok
				s.Client = netip.AddrFrom4([4]byte{10, 1, 0, byte(i + 1)})
				tt.edit(&s)
				_, err := e.reg.Submit(context.Background(), s)
				var fe *FieldError
				switch {
				case tt.field == "" && err != nil:
					t.Fatalf("Submit = %v, want nil", err)
				case tt.field != "" && (!errors.As(err, &fe) || fe.Field != tt.field):
					t.Fatalf("Submit = %v, want a FieldError on %s", err, tt.field)
				}
			})
		}
	})
}

func TestLimitsAndDuplicates(t *testing.T) {
	eachStore(t, func(t *testing.T, newEnv envFunc) {
		ctx := context.Background()
		e := newEnv(t, nil) // defaults: 3 pending, 10 a day
		var ids []string
		for i := 0; i < 3; i++ {
			ids = append(ids, e.mustSubmit(t, sub("10.0.0.1", "facebook", justification(i))).ID)
		}
		// The same submission again is the same request, not a 4th.
		rc := e.mustSubmit(t, sub("10.0.0.1", "facebook", justification(1)))
		if !rc.Duplicate || rc.ID != ids[1] {
			t.Fatalf("resubmission = %+v, want duplicate of %s", rc, ids[1])
		}
		_, err := e.reg.Submit(ctx, sub("10.0.0.1", "facebook", justification(3)))
		var le *LimitError
		if !errors.As(err, &le) || le.Kind != "pending" || !errors.Is(err, ErrRateLimited) {
			t.Fatalf("4th pending = %v, want pending limit", err)
		}
		// Another workstation is not affected.
		e.mustSubmit(t, sub("10.0.0.2", "facebook", justification(3)))
		// After 10 minutes, the same text is a new request (if limits allow).
		if _, err := e.reg.Deny(ctx, ids[1], "RSI", "pas justifié"); err != nil {
			t.Fatal(err)
		}
		e.clock.Add(11 * time.Minute)
		if rc := e.mustSubmit(t, sub("10.0.0.1", "facebook", justification(1))); rc.Duplicate {
			t.Fatalf("resubmission after the window = duplicate %s, want a new request", rc.ID)
		}
		// Day limit: deny as we go so that the pending limit stays clear.
		for i := 0; ; i++ {
			list, _ := e.reg.List(ctx, StatusPending)
			for _, q := range list {
				e.reg.Deny(ctx, q.ID, "RSI", "non")
			}
			_, err := e.reg.Submit(ctx, sub("10.0.0.1", "facebook", justification(100+i)))
			if err != nil {
				if !errors.As(err, &le) || le.Kind != "day" || i != 6 {
					t.Fatalf("submission %d = %v, want the day limit at the 11th request of the day", i+5, err)
				}
				break
			}
		}
		e.clock.Add(24 * time.Hour)
		e.mustSubmit(t, sub("10.0.0.1", "facebook", justification(500)))
		m := e.reg.metrics
		for _, c := range []struct {
			res  int
			want float64
		}{{resultAccepted, 12}, {resultDuplicate, 1}, {resultRateLimited, 2}} {
			if got := testCounter(m.requests[c.res]); got != c.want {
				t.Errorf("requests_total{result=%s} = %v, want %v", resultNames[c.res], got, c.want)
			}
		}
		if err := e.reg.Verify(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

func TestGrantLifecycle(t *testing.T) {
	eachStore(t, func(t *testing.T, newEnv envFunc) {
		ctx := context.Background()
		e := newEnv(t, nil)
		a := e.mustSubmit(t, sub("10.0.0.7", "facebook", justification(0))).ID
		b := e.mustSubmit(t, sub("::ffff:10.0.0.8", "instagram", justification(1))).ID
		c := e.mustSubmit(t, sub("2001:db8::9", "tiktok", justification(2))).ID
		now := e.clock.Now()

		if _, err := e.reg.Approve(ctx, a, Approval{By: "RSI", For: time.Hour, Subject: "user"}); !errors.Is(err, ErrNoDirectory) {
			t.Fatalf("Approve(--subject user) of a request without a user = %v, want ErrNoDirectory", err)
		}
		if _, err := e.reg.Approve(ctx, a, Approval{By: "RSI"}); err == nil {
			t.Fatal("Approve without --for or --until succeeded")
		}
		if _, err := e.reg.Approve(ctx, a, Approval{By: "RSI", Until: now.Add(-time.Minute)}); err == nil {
			t.Fatal("Approve --until in the past succeeded")
		}
		if _, err := e.reg.Approve(ctx, "EX-9999", Approval{By: "RSI", For: time.Hour}); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Approve(unknown) = %v, want ErrNotFound", err)
		}
		q, err := e.reg.Approve(ctx, a, Approval{By: "RSI Dupont", For: 2 * time.Hour, Note: "campagne"})
		if err != nil {
			t.Fatal(err)
		}
		if q.Status != StatusApproved || q.Grant == nil || q.Grant.Subject != netip.MustParsePrefix("10.0.0.7/32") {
			t.Fatalf("Approve = %+v, want approved with subject 10.0.0.7/32", q)
		}
		if _, err := e.reg.Approve(ctx, a, Approval{By: "RSI", For: time.Hour}); !errors.Is(err, ErrState) {
			t.Fatalf("second Approve = %v, want ErrState", err)
		}
		if _, err := e.reg.Approve(ctx, b, Approval{By: "RSI", Until: now.Add(30 * time.Minute)}); err != nil {
			t.Fatal(err)
		}
		if _, err := e.reg.Deny(ctx, c, "RSI", "pas lié au travail"); err != nil {
			t.Fatal(err)
		}
		if _, err := e.reg.Revoke(ctx, c, "RSI", "x"); !errors.Is(err, ErrState) {
			t.Fatalf("Revoke(denied) = %v, want ErrState", err)
		}

		grants, st, err := e.reg.Refresh(ctx, now)
		if err != nil {
			t.Fatal(err)
		}
		if len(grants) != 2 || st.ActiveGrants != 2 || st.Pending != 0 {
			t.Fatalf("Refresh = %v, %+v; want 2 grants, none pending", grants, st)
		}
		for _, g := range grants {
			switch g.ID {
			case a:
				if !g.NotAfter.Equal(now.Add(2*time.Hour)) || g.Services[0] != "facebook" {
					t.Errorf("grant %s = %+v", a, g)
				}
			case b:
				if g.Subject != netip.MustParsePrefix("10.0.0.8/32") || !g.NotAfter.Equal(now.Add(30*time.Minute)) {
					t.Errorf("grant %s = %+v, want the unmapped client 10.0.0.8/32 until +30m", b, g)
				}
			default:
				t.Errorf("unexpected grant %+v", g)
			}
		}
		// b ends: the next refresh expires it once.
		later := now.Add(31 * time.Minute)
		e.clock.Add(31 * time.Minute)
		grants, st, _ = e.reg.Refresh(ctx, later)
		if len(grants) != 1 || grants[0].ID != a || st.ActiveGrants != 1 {
			t.Fatalf("Refresh after b's end = %v, want only %s", grants, a)
		}
		e.reg.Refresh(ctx, later)
		if q, _ := e.reg.Get(ctx, b); q.Status != StatusExpired {
			t.Fatalf("%s status = %s, want expired", b, q.Status)
		}
		if _, err := e.reg.Revoke(ctx, a, "RSI", "fin de la campagne"); err != nil {
			t.Fatal(err)
		}
		if grants, _ := e.reg.ActiveGrants(ctx, later); len(grants) != 0 {
			t.Fatalf("ActiveGrants after revoke = %v, want none", grants)
		}
		var events []string
		for _, ev := range e.events(t) {
			events = append(events, ev.Event+" "+ev.ID)
		}
		want := []string{"request_received EX-0001", "request_received EX-0002", "request_received EX-0003",
			"approved EX-0001", "approved EX-0002", "denied EX-0003", "expired EX-0002", "revoked EX-0001"}
		if strings.Join(events, "\n") != strings.Join(want, "\n") {
			t.Fatalf("events =\n%s\nwant\n%s", strings.Join(events, "\n"), strings.Join(want, "\n"))
		}
	})
}

func TestPurgeAndExport(t *testing.T) {
	eachStore(t, func(t *testing.T, newEnv envFunc) {
		ctx := context.Background()
		e := newEnv(t, nil)
		old := e.mustSubmit(t, sub("10.0.0.1", "facebook", justification(0))).ID
		pend := e.mustSubmit(t, sub("10.0.0.2", "facebook", justification(0))).ID
		e.reg.Deny(ctx, old, "RSI", "non")
		e.clock.Add(400 * 24 * time.Hour)
		recent := e.mustSubmit(t, sub("10.0.0.3", "facebook", justification(0))).ID
		e.reg.Deny(ctx, recent, "RSI", "=cmd|' /C calc'!A0")
		ids, err := e.reg.Purge(ctx, 365*24*time.Hour, "RSI")
		if err != nil || len(ids) != 1 || ids[0] != old {
			t.Fatalf("Purge = %v, %v; want [%s]", ids, err, old)
		}
		if _, err := e.reg.Get(ctx, pend); err != nil {
			t.Fatalf("pending %s purged: %v", pend, err)
		}
		if err := e.reg.Verify(ctx); err != nil {
			t.Fatalf("Verify after purge = %v", err)
		}
		var buf bytes.Buffer
		n, err := e.reg.Export(ctx, &buf, "csv", time.Time{}, "RSI")
		if err != nil || n != 6 {
			t.Fatalf("Export = %d, %v; want 6 events", n, err)
		}
		rows, err := csv.NewReader(&buf).ReadAll()
		if err != nil || len(rows) != 7 || strings.Join(rows[0], ",") != strings.Join(CSVHeader, ",") {
			t.Fatalf("CSV = %v, %v; want header + 6 rows", rows, err)
		}
		if rows[6][2] != EventPurged || rows[6][15] != "1" || rows[5][13] != "'=cmd|' /C calc'!A0" {
			t.Fatalf("CSV rows = %v", rows[5:])
		}
		buf.Reset()
		n, err = e.reg.Export(ctx, &buf, "json", e.clock.Now().Add(-time.Hour), "RSI")
		var evs []Event
		if err != nil || json.Unmarshal(buf.Bytes(), &evs) != nil || n != 4 || len(evs) != 4 {
			t.Fatalf("Export json --since = %d, %v, %s; want the 4 recent events", n, err, buf.Bytes())
		}
		if evs[3].Event != EventExported {
			t.Fatalf("last recent event = %s, want the first export recorded", evs[3].Event)
		}
		if err := e.reg.Verify(ctx); err != nil {
			t.Fatalf("Verify after export = %v", err)
		}
		if _, err := e.reg.Export(ctx, &buf, "xml", time.Time{}, "RSI"); err == nil {
			t.Fatal("Export(xml) succeeded")
		}
	})
}

func TestStoreReopenAndMigration(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, nil)
	e.mustSubmit(t, sub("10.0.0.1", "facebook", justification(0)))
	e.reg.Close()
	st, err := OpenSQLite(ctx, e.db)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var v int
	st.db.QueryRow("PRAGMA user_version").Scan(&v)
	var mode string
	st.db.QueryRow("PRAGMA journal_mode").Scan(&mode)
	if v != len(migrations) || mode != "wal" {
		t.Fatalf("user_version = %d, journal_mode = %s; want %d, wal", v, mode, len(migrations))
	}
	if _, err := os.Stat(e.db + "-wal"); err != nil {
		t.Fatalf("no WAL file: %v", err)
	}
}

func TestRefreshGauges(t *testing.T) {
	eachStore(t, func(t *testing.T, newEnv envFunc) {
		ctx := context.Background()
		e := newEnv(t, nil)
		e.mustSubmit(t, sub("10.0.0.1", "facebook", justification(0)))
		e.clock.Add(20 * time.Hour)
		e.mustSubmit(t, sub("10.0.0.2", "facebook", justification(0)))
		id := e.mustSubmit(t, sub("10.0.0.3", "facebook", justification(0))).ID
		if _, err := e.reg.Approve(ctx, id, Approval{By: "RSI", For: time.Hour}); err != nil {
			t.Fatal(err)
		}
		e.clock.Add(5 * time.Hour)
		_, st, err := e.reg.Refresh(ctx, e.clock.Now())
		if err != nil {
			t.Fatal(err)
		}
		m := e.reg.metrics
		for _, g := range []struct {
			name string
			got  float64
			want float64
		}{
			{"pending", testCounter(m.pending), 2},
			{"oldest_pending_age_seconds", testCounter(m.oldestPending), 25 * 3600},
			{"pending_overdue", testCounter(m.overdue), 1},
			{"grants_active", testCounter(m.grantsActive), 0},
		} {
			if g.got != g.want {
				t.Errorf("balise_exceptions_%s = %v, want %v (stats %+v)", g.name, g.got, g.want, st)
			}
		}
	})
}

func TestRefreshWithDamagedLog(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, nil)
	a := e.mustSubmit(t, sub("10.0.0.1", "facebook", justification(0))).ID
	b := e.mustSubmit(t, sub("10.0.0.2", "facebook", justification(0))).ID
	e.reg.Approve(ctx, a, Approval{By: "RSI", For: time.Hour})
	e.reg.Approve(ctx, b, Approval{By: "RSI", For: 2 * time.Hour})
	os.WriteFile(e.log, nil, 0o600) // the log is lost
	grants, _, err := e.reg.Refresh(ctx, e.clock.Now().Add(90*time.Minute))
	if !errors.Is(err, ErrAudit) || len(grants) != 1 || grants[0].ID != b {
		t.Fatalf("Refresh = %v, %v; want only %s's grant and ErrAudit", grants, err, b)
	}
	if q, _ := e.reg.Get(ctx, a); q.Status != StatusApproved {
		t.Fatalf("%s status = %s: an expiry that could not be logged must not be stored", a, q.Status)
	}
}

// TestGrantToUser checks that a request made by an authenticated user can
// be granted to that person (no workstation in the grant), on both stores,
// and that the audit chain records it.
func TestGrantToUser(t *testing.T) {
	eachStore(t, func(t *testing.T, newEnv envFunc) {
		ctx := context.Background()
		e := newEnv(t, nil)
		s := sub("10.0.0.7", "facebook", justification(0))
		s.User = "alice"
		id := e.mustSubmit(t, s).ID
		q, err := e.reg.Approve(ctx, id, Approval{By: "RSI", For: time.Hour, Subject: "user"})
		if err != nil {
			t.Fatalf("Approve(--subject user): %v", err)
		}
		if q.Grant.User != "alice" || q.Grant.Subject.IsValid() {
			t.Fatalf("grant = %+v, want user alice and no workstation", q.Grant)
		}
		grants, err := e.reg.ActiveGrants(ctx, e.clock.Now())
		if err != nil || len(grants) != 1 || grants[0].User != "alice" || grants[0].Subject.IsValid() {
			t.Fatalf("active grants = %+v, %v; want one for user alice", grants, err)
		}
		if err := e.reg.Verify(ctx); err != nil {
			t.Fatalf("Verify: %v", err)
		}
	})
}
