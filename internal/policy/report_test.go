package policy

import (
	"net/netip"
	"testing"
	"time"
)

// TestReportMode checks that a rule in report mode is recorded when it
// would match and then skipped: the next rules decide.
func TestReportMode(t *testing.T) {
	spec := testSpec(t)
	// A report rule first: block networking for the personnel during
	// breaks too. It must never decide.
	spec.Rules = append([]Rule{
		{Name: "essai-blocage", Groups: []string{"personnel"}, Categories: []string{"networking"}, Action: Block, Report: true},
		{Name: "essai-wikis", Groups: []string{"*"}, Categories: []string{"wikis"}, Action: Block, Report: true},
	}, spec.Rules...)
	// And a report rule after an enforcing rule that always decides for
	// wikis: never reached.
	spec.Rules = append(spec.Rules, Rule{Name: "trop-tard", Groups: []string{"*"}, Categories: []string{"wikis"}, Action: Allow, Report: true})
	p := mustNew(t, spec)
	loc := mustLoc(t, "America/Toronto")
	brk := time.Date(2026, 3, 2, 12, 30, 0, 0, loc) // Monday, lunch break
	work := time.Date(2026, 3, 2, 14, 0, 0, 0, loc)
	staff := netip.MustParseAddr("10.1.2.3")
	outside := netip.MustParseAddr("192.0.2.7")
	tests := []struct {
		host   string
		client netip.Addr
		at     time.Time
		want   Decision
	}{
		// Would block, but the pauses rule allows.
		{"www.facebook.com", staff, brk, Decision{Verdict: Allow, Reason: ReasonRule, Rule: "pauses", Report: Report{Rule: "essai-blocage", Action: Block}}},
		// Would block; the default blocks anyway.
		{"facebook.com", staff, work, Decision{Verdict: Block, Reason: ReasonDefault, Report: Report{Rule: "essai-blocage", Action: Block}}},
		// Not in the report rule's group: nothing reported.
		{"facebook.com", outside, work, Decision{Verdict: Block, Reason: ReasonDefault}},
		// Not in the report rule's services.
		{"x.com", staff, brk, Decision{Verdict: Allow, Reason: ReasonRule, Rule: "pauses"}},
		// The wikis report rule is recorded, the wikis rule decides; the
		// report rule after it is never reached.
		{"fr.wikipedia.org", outside, work, Decision{Verdict: Allow, Reason: ReasonRule, Rule: "wikis", Report: Report{Rule: "essai-wikis", Action: Block}}},
	}
	for _, tc := range tests {
		d := p.Decide(Query{Host: tc.host, Client: tc.client, Time: tc.at})
		if d.Verdict != tc.want.Verdict || d.Reason != tc.want.Reason || d.Rule != tc.want.Rule || d.Report != tc.want.Report {
			t.Errorf("Decide(%s from %s at %s) = %v, want %v", tc.host, tc.client, tc.at.Format(time.Kitchen), d, tc.want)
		}
	}
	q := Query{Host: "www.facebook.com", Client: staff, Time: brk}
	if n := testing.AllocsPerRun(100, func() { p.Decide(q) }); n != 0 {
		t.Errorf("Decide with a report rule: %v allocations, want 0", n)
	}
}

// TestReportOnlyRules checks that a policy whose only rule reports
// decides as if it had none.
func TestReportOnlyRules(t *testing.T) {
	spec := testSpec(t)
	spec.DefaultAction = Allow
	spec.Rules = []Rule{{Name: "projet", Groups: []string{"*"}, Categories: []string{"networking"}, Action: Block, Report: true}}
	p := mustNew(t, spec)
	d := p.Decide(Query{Host: "facebook.com", Client: netip.MustParseAddr("10.1.2.3"), Time: time.Date(2026, 3, 2, 14, 0, 0, 0, time.UTC)})
	if d.Verdict != Allow || d.Reason != ReasonDefault || d.Report != (Report{Rule: "projet", Action: Block}) {
		t.Errorf("Decide = %v, want allow/default would=block report=projet", d)
	}
}
