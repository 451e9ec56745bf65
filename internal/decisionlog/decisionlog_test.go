package decisionlog

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/balise-net/balise/internal/policy"
)

type line struct {
	Msg     string   `json:"msg"`
	Front   string   `json:"front"`
	Client  string   `json:"client"`
	Host    string   `json:"host"`
	Service string   `json:"service"`
	Verdict string   `json:"verdict"`
	Reason  string   `json:"reason"`
	Rule    string   `json:"rule"`
	Until   string   `json:"until"`
	Repeats int      `json:"repeats"`
	Groups  []string `json:"groups"`
}

func newTest(t *testing.T, window time.Duration, max int) (*Logger, *bytes.Buffer) {
	t.Helper()
	var buf bytes.Buffer
	return New(slog.New(slog.NewJSONHandler(&buf, nil)), window, max), &buf
}

func lines(t *testing.T, buf *bytes.Buffer) []line {
	t.Helper()
	var out []line
	for _, s := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if s == "" {
			continue
		}
		var l line
		if err := json.Unmarshal([]byte(s), &l); err != nil {
			t.Fatalf("bad log line %q: %v", s, err)
		}
		out = append(out, l)
	}
	return out
}

func blocked(service string) policy.Decision {
	return policy.Decision{Verdict: policy.Block, Reason: policy.ReasonRule, Service: service, Category: "networking", Rule: "travail",
		Until: time.Date(2026, 5, 12, 18, 0, 0, 0, time.UTC)}
}

func TestDeduplicatesWithinWindow(t *testing.T) {
	l, buf := newTest(t, time.Minute, 0)
	t0 := time.Date(2026, 5, 12, 14, 0, 0, 0, time.UTC)
	a := netip.MustParseAddr("10.0.0.1")
	b := netip.MustParseAddr("10.0.0.2")
	for i := range 5 {
		l.Log(t0.Add(time.Duration(i)*time.Second), Entry{Front: "dns", Client: a, Host: "www.facebook.com", Decision: blocked("facebook")})
	}
	l.Log(t0, Entry{Front: "dns", Client: b, Host: "www.facebook.com", Decision: blocked("facebook")})
	l.Log(t0, Entry{Front: "dns", Client: a, Host: "www.tiktok.com", Decision: blocked("tiktok")})
	got := lines(t, buf)
	if len(got) != 3 {
		t.Fatalf("got %d lines within the window, want 3 (one per client and service): %+v", len(got), got)
	}
	if got[0].Client != "10.0.0.1" || got[0].Service != "facebook" || got[0].Verdict != "block" || got[0].Reason != "rule" ||
		got[0].Rule != "travail" || got[0].Repeats != 0 || got[0].Msg != "decision" || got[0].Until != "2026-05-12T18:00:00Z" {
		t.Errorf("first line = %+v", got[0])
	}
	buf.Reset()
	// The window ends: Flush summarizes the four held-back decisions.
	l.Flush(t0.Add(61 * time.Second))
	got = lines(t, buf)
	if len(got) != 1 || got[0].Repeats != 4 || got[0].Client != "10.0.0.1" {
		t.Fatalf("flush lines = %+v, want one summary with repeats=4", got)
	}
	buf.Reset()
	// A key idle for a whole window was forgotten: the next decision is new.
	l.Log(t0.Add(2*time.Minute), Entry{Front: "dns", Client: a, Host: "www.facebook.com", Decision: blocked("facebook")})
	if got = lines(t, buf); len(got) != 1 || got[0].Repeats != 0 {
		t.Fatalf("after the window: %+v, want one fresh line", got)
	}
}

func TestSummaryBeforeNextWindow(t *testing.T) {
	l, buf := newTest(t, time.Minute, 0)
	t0 := time.Date(2026, 5, 12, 14, 0, 0, 0, time.UTC)
	a := netip.MustParseAddr("::ffff:10.0.0.1")
	e := Entry{Front: "http", Client: a, Host: "www.facebook.com", Decision: blocked("facebook")}
	l.Log(t0, e)
	l.Log(t0.Add(10*time.Second), e)
	l.Log(t0.Add(20*time.Second), e)
	l.Log(t0.Add(70*time.Second), e) // new window, no Flush in between
	got := lines(t, buf)
	if len(got) != 3 {
		t.Fatalf("got %+v, want first line, summary (2 repeats), new line", got)
	}
	if got[0].Client != "10.0.0.1" {
		t.Errorf("client = %q, want the unmapped IPv4 address", got[0].Client)
	}
	if got[1].Repeats != 2 || got[2].Repeats != 0 {
		t.Errorf("repeats = %d, %d; want 2, 0", got[1].Repeats, got[2].Repeats)
	}
}

func TestUnlistedNeverLogged(t *testing.T) {
	l, buf := newTest(t, time.Minute, 0)
	l.Log(time.Now(), Entry{Front: "dns", Client: netip.MustParseAddr("10.0.0.1"), Host: "www.example.org",
		Decision: policy.Decision{Verdict: policy.Allow, Reason: policy.ReasonUnlisted}})
	l.Flush(time.Now().Add(time.Hour))
	if buf.Len() != 0 {
		t.Fatalf("an unlisted host was logged: %s", buf.String())
	}
	var nilLogger *Logger
	nilLogger.Log(time.Now(), Entry{Decision: blocked("facebook")}) // must not panic
}

func TestBoundedMemory(t *testing.T) {
	l, buf := newTest(t, time.Minute, 10)
	t0 := time.Date(2026, 5, 12, 14, 0, 0, 0, time.UTC)
	for i := range 25 {
		c := netip.AddrFrom4([4]byte{10, 0, 0, byte(i)})
		l.Log(t0, Entry{Front: "dns", Client: c, Decision: blocked("facebook")})
		l.Log(t0, Entry{Front: "dns", Client: c, Decision: blocked("facebook")})
	}
	l.mu.Lock()
	n := len(l.entries)
	l.mu.Unlock()
	if n > 10 {
		t.Fatalf("%d remembered keys, want at most 10", n)
	}
	// Every client got its first line; held-back repeats of evicted keys were summarized.
	got := lines(t, buf)
	firsts := 0
	for _, g := range got {
		if g.Repeats == 0 {
			firsts++
		}
	}
	if firsts != 25 {
		t.Errorf("%d first lines, want 25", firsts)
	}
}

func TestRunFlushesAtEnd(t *testing.T) {
	l, buf := newTest(t, time.Minute, 0)
	t0 := time.Date(2026, 5, 12, 14, 0, 0, 0, time.UTC)
	e := Entry{Front: "dns", Client: netip.MustParseAddr("10.0.0.1"), Decision: blocked("facebook")}
	l.Log(t0, e)
	l.Log(t0, e)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { l.Run(ctx, func() time.Time { return t0 }); close(done) }()
	cancel()
	<-done
	got := lines(t, buf)
	if len(got) != 2 || got[1].Repeats != 1 {
		t.Fatalf("lines after Run ended = %+v, want the held-back repeat summarized", got)
	}
}

func TestDecisionsCounted(t *testing.T) {
	l, _ := newTest(t, time.Minute, 0)
	reg := prometheus.NewRegistry()
	if err := l.Register(reg); err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 5, 12, 14, 0, 0, 0, time.UTC)
	a := netip.MustParseAddr("10.0.0.1")
	for range 3 { // deduplicated in the log, but every one is counted
		l.Log(t0, Entry{Front: "dns", Client: a, Decision: blocked("facebook")})
	}
	l.Log(t0, Entry{Front: "http", Client: a, Decision: policy.Decision{Verdict: policy.Allow, Reason: policy.ReasonGrant, Service: "tiktok", Category: "media-sharing"}})
	l.Log(t0, Entry{Front: "dns", Client: a, Decision: policy.Decision{Verdict: policy.Allow, Reason: policy.ReasonUnlisted}})
	for _, tt := range []struct {
		labels []string
		want   float64
	}{
		{[]string{"dns", "block", "rule", "networking"}, 3},
		{[]string{"http", "allow", "grant", "media-sharing"}, 1},
		{[]string{"dns", "allow", "unlisted", ""}, 0},
	} {
		var m dto.Metric
		if err := l.decisions.WithLabelValues(tt.labels...).Write(&m); err != nil {
			t.Fatal(err)
		}
		if got := m.GetCounter().GetValue(); got != tt.want {
			t.Errorf("balise_decisions_total%v = %v, want %v", tt.labels, got, tt.want)
		}
	}
	if err := l.Register(reg); err == nil {
		t.Error("registering twice on one registry succeeded")
	}
}

// TestReportLine checks that a decision a report-mode rule would have
// changed says so: would=<action> and the rule's name, on its own line.
func TestReportLine(t *testing.T) {
	l, buf := newTest(t, time.Minute, 0)
	t0 := time.Date(2026, 5, 12, 14, 0, 0, 0, time.UTC)
	a := netip.MustParseAddr("10.0.0.1")
	d := policy.Decision{Verdict: policy.Allow, Reason: policy.ReasonRule, Service: "wordpress", Category: "blogs", Rule: "pauses",
		Report: policy.Report{Rule: "essai-blogues", Action: policy.Block}}
	l.Log(t0, Entry{Front: "dns", Client: a, Host: "x.wordpress.com", Decision: d})
	plain := d
	plain.Report = policy.Report{}
	l.Log(t0.Add(time.Second), Entry{Front: "dns", Client: a, Host: "x.wordpress.com", Decision: plain})
	var got []map[string]any
	for _, s := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			t.Fatalf("bad log line %q: %v", s, err)
		}
		got = append(got, m)
	}
	if len(got) != 2 {
		t.Fatalf("got %d lines, want 2 (a report is not folded into the plain decision): %v", len(got), got)
	}
	if got[0]["would"] != "block" || got[0]["would_rule"] != "essai-blogues" || got[0]["verdict"] != "allow" || got[0]["rule"] != "pauses" {
		t.Errorf("report line = %v, want verdict=allow rule=pauses would=block would_rule=essai-blogues", got[0])
	}
	if w, ok := got[1]["would"]; !ok || w != "" || got[1]["would_rule"] != "" {
		t.Errorf("plain line = %v, want would and would_rule present and empty", got[1])
	}
}

// TestGroupsInLine checks that a line names the configuration's groups
// the client belongs to (by network and by directory group), and an empty
// list, not null, for a client in none.
func TestGroupsInLine(t *testing.T) {
	pol, err := policy.New(policy.Spec{
		DefaultAction: policy.Block,
		Services:      []policy.Service{{ID: "facebook", Category: "networking", Domains: []string{"facebook.com"}}},
		Groups: []policy.Group{
			{Name: "personnel", Networks: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}},
			{Name: "communications", DirectoryGroups: []string{"GG-Comms"}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	l, buf := newTest(t, time.Minute, 0)
	now := time.Date(2026, 5, 12, 14, 0, 0, 0, time.UTC)
	l.Log(now, Entry{Front: "http", Client: netip.MustParseAddr("10.1.2.3"), User: "u-x", Host: "facebook.com", Decision: blocked("facebook"),
		Groups: pol.Groups(policy.Query{Client: netip.MustParseAddr("10.1.2.3"), User: "alice", Groups: []string{"gg-comms"}})})
	l.Log(now, Entry{Front: "dns", Client: netip.MustParseAddr("192.0.2.1"), Host: "facebook.com", Decision: blocked("facebook"),
		Groups: pol.Groups(policy.Query{Client: netip.MustParseAddr("192.0.2.1")})})
	got := lines(t, buf)
	if len(got) != 2 || strings.Join(got[0].Groups, ",") != "personnel,communications" || got[1].Groups == nil || len(got[1].Groups) != 0 {
		t.Fatalf("groups = %+v, want [personnel communications] then []", got)
	}
	if !strings.Contains(buf.String(), `"groups":[]`) {
		t.Errorf("a client in no group should log \"groups\":[]:\n%s", buf.String())
	}
}
