package policy

import (
	"math"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestParseWindow(t *testing.T) {
	const (
		sun = 1 << time.Sunday
		mon = 1 << time.Monday
		tue = 1 << time.Tuesday
		wed = 1 << time.Wednesday
		thu = 1 << time.Thursday
		fri = 1 << time.Friday
		sat = 1 << time.Saturday
	)
	h := func(hh, mm, ss int) time.Duration {
		return time.Duration(hh)*time.Hour + time.Duration(mm)*time.Minute + time.Duration(ss)*time.Second
	}
	good := []struct {
		in   string
		want Window
	}{
		{"mon-fri 12:00-13:00", Window{mon | tue | wed | thu | fri, h(12, 0, 0), h(13, 0, 0)}},
		{"sat 22:30-02:00", Window{sat, h(22, 30, 0), h(2, 0, 0)}},
		{"fri-mon 08:00-09:00", Window{fri | sat | sun | mon, h(8, 0, 0), h(9, 0, 0)}},
		{"mon,wed,fri-sat 10:00:30-10:15:05", Window{mon | wed | fri | sat, h(10, 0, 30), h(10, 15, 5)}},
		{"* 00:00-24:00", Window{0x7f, 0, 24 * time.Hour}},
		{"daily 23:30-00:15", Window{0x7f, h(23, 30, 0), h(0, 15, 0)}},
		{"DAILY 9:00-17:00", Window{0x7f, h(9, 0, 0), h(17, 0, 0)}},
		{"Sun 07:00-07:00", Window{sun, h(7, 0, 0), h(7, 0, 0)}},
		{"sun-sat  00:00-00:00", Window{0x7f, 0, 0}},
		{"thu-thu 01:00-02:00", Window{thu, h(1, 0, 0), h(2, 0, 0)}},
	}
	for _, tc := range good {
		got, err := ParseWindow(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseWindow(%q) = %+v, %v, want %+v", tc.in, got, err, tc.want)
		}
		if err == nil {
			again, err := ParseWindow(got.String())
			if err != nil || again != got {
				t.Errorf("ParseWindow(%q) = %+v, %v, want %+v (round trip of %q)", got.String(), again, err, got, tc.in)
			}
		}
	}
	bad := []string{
		"", "mon", "mon 12:00", "mon 12:00-", "mon 25:00-26:00", "mon 12:00-25:00",
		"mon 24:00-01:00", "mon 12:60-13:00", "mon 12:00:60-13:00", "xyz 12:00-13:00",
		"mon-xyz 12:00-13:00", "mon,,tue 12:00-13:00", "mon 12-13", "mon 1200-1300",
		"mon 12:0-13:00", "mon 123:00-13:00", "mon +1:00-13:00", "mon 12:00-13:00 extra",
		"mon 12:00:00:00-13:00", "mon 24:00:01-24:00", "mon 12:00-24:00:01",
	}
	for _, in := range bad {
		if w, err := ParseWindow(in); err == nil {
			t.Errorf("ParseWindow(%q) = %+v, want an error", in, w)
		}
	}
}

// dstSpec has one group per DST test window so that each case sees one
// rule only.
func dstSpec(t testing.TB) Spec {
	t.Helper()
	groups := []Group{}
	schedules := []Schedule{}
	rules := []Rule{}
	for i, w := range []string{"sun 01:00-02:00", "sun 02:00-03:00", "sun 01:30-02:30", "sun 01:30-02:00", "sat 23:00-02:30"} {
		name := string(rune('a' + i))
		groups = append(groups, Group{Name: name, Networks: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(i), 0}), 24)}})
		schedules = append(schedules, Schedule{Name: name, Windows: mustWindows(t, w)})
		rules = append(rules, Rule{Name: name, Groups: []string{name}, During: []string{name}, Action: Allow})
	}
	return Spec{
		Location:      mustLoc(t, "America/Toronto"),
		DefaultAction: Block,
		Services:      []Service{{ID: "facebook", Category: "networking", Domains: []string{"facebook.com"}}},
		Groups:        groups,
		Schedules:     schedules,
		Rules:         rules,
	}
}

func TestDecideDST(t *testing.T) {
	p := mustNew(t, dstSpec(t))
	client := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, byte(i), 1}) }
	allow := func(rule string, until time.Time) Decision {
		return Decision{Verdict: Allow, Reason: ReasonRule, Rule: rule, Service: "facebook", Category: "networking", Until: until}
	}
	block := func(until time.Time) Decision {
		return Decision{Verdict: Block, Reason: ReasonDefault, Service: "facebook", Category: "networking", Until: until}
	}
	q := func(i int, s string) Query { return Query{Host: "facebook.com", Client: client(i), Time: utc(t, s)} }
	plus24 := func(s string) time.Time { return utc(t, s).Add(24 * time.Hour) }
	// 2026-11-01: at 06:00 UTC, 02:00 EDT becomes 01:00 EST.
	// 2026-03-08: at 07:00 UTC, 02:00 EST becomes 03:00 EDT.
	runDecide(t, p, []decideCase{
		// Fall back: 01:00-02:00 lasts two real hours, 05:00-07:00 UTC.
		{"fall: before", q(0, "2026-11-01 04:59:00"), block(utc(t, "2026-11-01 05:00:00"))},
		{"fall: first 01:00", q(0, "2026-11-01 05:00:00"), allow("a", utc(t, "2026-11-01 07:00:00"))},
		{"fall: first 01:30", q(0, "2026-11-01 05:30:00"), allow("a", utc(t, "2026-11-01 07:00:00"))},
		{"fall: second 01:00", q(0, "2026-11-01 06:00:00"), allow("a", utc(t, "2026-11-01 07:00:00"))},
		{"fall: second 01:59:59", q(0, "2026-11-01 06:59:59"), allow("a", utc(t, "2026-11-01 07:00:00"))},
		{"fall: 02:00 EST", q(0, "2026-11-01 07:00:00"), block(plus24("2026-11-01 07:00:00"))},
		// Spring forward: 02:00-03:00 does not occur; the next one is a
		// week later, past the 24-hour bound.
		{"spring: 01:59 EST", q(1, "2026-03-08 06:59:00"), block(plus24("2026-03-08 06:59:00"))},
		{"spring: 03:00 EDT", q(1, "2026-03-08 07:00:00"), block(plus24("2026-03-08 07:00:00"))},
		{"spring: saturday", q(1, "2026-03-07 08:00:00"), block(plus24("2026-03-07 08:00:00"))},
		{"spring: a normal sunday", q(1, "2026-03-15 06:30:00"), allow("b", utc(t, "2026-03-15 07:00:00"))},
		{"spring: before a normal sunday", q(1, "2026-03-15 05:00:00"), block(utc(t, "2026-03-15 06:00:00"))},
		// 01:30-02:30 is cut short by the jump to 03:00.
		{"spring: cut window", q(2, "2026-03-08 06:45:00"), allow("c", utc(t, "2026-03-08 07:00:00"))},
		{"spring: before cut window", q(2, "2026-03-08 06:00:00"), block(utc(t, "2026-03-08 06:30:00"))},
		// Fall back: 01:30-02:00 occurs twice, with a gap between.
		{"fall: first 01:30-02:00", q(3, "2026-11-01 05:45:00"), allow("d", utc(t, "2026-11-01 06:00:00"))},
		{"fall: between", q(3, "2026-11-01 06:10:00"), block(utc(t, "2026-11-01 06:30:00"))},
		{"fall: second 01:30-02:00", q(3, "2026-11-01 06:30:00"), allow("d", utc(t, "2026-11-01 07:00:00"))},
		// A window crossing midnight into the spring-forward night ends
		// at the jump: 02:00-02:30 does not occur.
		{"spring: crossing window", q(4, "2026-03-08 06:00:00"), allow("e", utc(t, "2026-03-08 07:00:00"))},
		{"spring: crossing window start", q(4, "2026-03-08 03:59:59"), block(utc(t, "2026-03-08 04:00:00"))},
		// And is an hour longer on the fall-back night: 23:00 EDT to
		// 02:30 EST.
		{"fall: crossing window", q(4, "2026-11-01 06:15:00"), allow("e", utc(t, "2026-11-01 07:30:00"))},
	})
}

func TestZoneTable(t *testing.T) {
	for _, name := range []string{"America/Toronto", "UTC", "Asia/Kolkata", "Australia/Lord_Howe", "America/St_Johns", "Europe/Dublin"} {
		loc := mustLoc(t, name)
		z := newZoneTable(loc)
		r := rand.New(rand.NewPCG(1, 2))
		for i := 0; i < 20000; i++ {
			// 1901 to 2199, and a few outside the table.
			sec := r.Int64N(int64(9.4e9)) - int64(2.2e9)
			if i%1000 == 0 {
				sec = int64(-3e9) - r.Int64N(int64(1e9))
			}
			u := sec*nsPerSec + r.Int64N(nsPerSec)
			_, want := time.Unix(0, u).In(loc).Zone()
			got, next := z.at(u)
			if sec >= int64(-2.2e9) && got != int64(want) {
				t.Fatalf("%s: offset at %v = %d, want %d", name, time.Unix(0, u).UTC(), got, want)
			}
			if next <= u {
				t.Fatalf("%s: next change at %d <= %d", name, next, u)
			}
			if next != math.MaxInt64 {
				if _, o := time.Unix(0, next).In(loc).Zone(); int64(o) == got {
					t.Fatalf("%s: offset at the next change %v is still %d", name, time.Unix(0, next).UTC(), o)
				}
				if _, o := time.Unix(0, next-1).In(loc).Zone(); sec >= int64(-2.2e9) && int64(o) != got {
					t.Fatalf("%s: offset changes before %v", name, time.Unix(0, next).UTC())
				}
			}
		}
	}
}

// refInside is an independent statement of the window rule: the local
// wall-clock time is in [start, end) on the day the window starts.
func refInside(loc *time.Location, ws []Window, t time.Time) bool {
	lt := t.In(loc)
	c := time.Duration(lt.Hour())*time.Hour + time.Duration(lt.Minute())*time.Minute +
		time.Duration(lt.Second())*time.Second + time.Duration(lt.Nanosecond())
	today := lt.Weekday()
	yesterday := (today + 6) % 7
	for _, w := range ws {
		if w.End > w.Start {
			if w.Days&(1<<today) != 0 && w.Start <= c && c < w.End {
				return true
			}
			continue
		}
		if w.Days&(1<<today) != 0 && w.Start <= c {
			return true
		}
		if w.Days&(1<<yesterday) != 0 && c < w.End {
			return true
		}
	}
	return false
}

// refDecide decides a listed host of service svc straight from spec,
// without Until.
func refDecide(spec *Spec, grants []Grant, svc Service, q Query) Decision {
	d := Decision{Service: svc.ID, Category: svc.Category}
	client := q.Client.Unmap()
	var best *Grant
	for i := range grants {
		g := &grants[i]
		ok := false
		for _, s := range g.Services {
			ok = ok || s == "*" || s == svc.ID
		}
		subject := (g.Subject.IsValid() && g.Subject.Contains(client)) || (g.User != "" && strings.EqualFold(g.User, q.User))
		active := !q.Time.Before(g.NotBefore) && q.Time.Before(g.NotAfter)
		if ok && subject && active && (best == nil || g.NotAfter.After(best.NotAfter)) {
			best = g
		}
	}
	if best != nil {
		d.Verdict, d.Reason, d.Grant = Allow, ReasonGrant, best.ID
		return d
	}
	inGroup := func(name string) bool {
		for _, g := range spec.Groups {
			if g.Name != name {
				continue
			}
			for _, n := range g.Networks {
				if n.Contains(client) {
					return true
				}
			}
			for _, u := range g.Users {
				if strings.EqualFold(u, q.User) && q.User != "" {
					return true
				}
			}
			for _, dg := range g.DirectoryGroups {
				for _, qg := range q.Groups {
					if strings.EqualFold(dg, qg) {
						return true
					}
				}
			}
		}
		return false
	}
	for _, r := range spec.Rules {
		who := len(r.Groups) == 0
		for _, g := range r.Groups {
			who = who || g == "*" || inGroup(g)
		}
		what := len(r.Services) == 0 && len(r.Categories) == 0
		for _, s := range r.Services {
			what = what || s == "*" || s == svc.ID
		}
		for _, c := range r.Categories {
			what = what || c == "*" || c == svc.Category
		}
		when := len(r.During) == 0
		for _, name := range r.During {
			for _, s := range spec.Schedules {
				if s.Name == name && refInside(spec.Location, s.Windows, q.Time) {
					when = true
				}
			}
		}
		if who && what && when {
			d.Verdict, d.Reason, d.Rule = r.Action, ReasonRule, r.Name
			return d
		}
	}
	d.Verdict, d.Reason = spec.DefaultAction, ReasonDefault
	return d
}

// TestUntilAgainstReference checks Decide and Until against refDecide:
// every window edge, DST jump and grant bound in the tests falls on a
// whole minute, so the first whole minute after the query at which the
// reference decision differs is the exact Until.
func TestUntilAgainstReference(t *testing.T) {
	spec := testSpec(t)
	spec.Groups = append(spec.Groups, dstSpec(t).Groups...)
	spec.Schedules = append(spec.Schedules, dstSpec(t).Schedules...)
	spec.Rules = append(dstSpec(t).Rules, spec.Rules...)
	spec.Schedules[0].Windows = append(spec.Schedules[0].Windows, mustWindows(t, "sat 22:30-02:00", "sun 10:00-10:15", "sun 10:15-10:30")...)
	spec.MaxUntil = 36 * time.Hour
	grants := []Grant{
		{ID: "g1", Subject: pfx("10.1.2.0/24"), Services: []string{"facebook"}, NotBefore: at(t, "2026-11-01 00:30:00"), NotAfter: at(t, "2026-11-01 12:07:00")},
		{ID: "g2", User: "bob", Services: []string{"*"}, NotBefore: utc(t, "2026-03-08 05:00:00"), NotAfter: utc(t, "2026-03-08 09:00:00")},
		{ID: "g3", Subject: pfx("10.0.2.0/24"), Services: []string{"x", "facebook"}, NotBefore: utc(t, "2026-03-08 06:40:00"), NotAfter: utc(t, "2026-03-08 06:50:00")},
		{ID: "g4", Subject: pfx("10.0.2.0/24"), Services: []string{"facebook"}, NotBefore: utc(t, "2026-03-08 06:45:00"), NotAfter: utc(t, "2026-03-08 07:20:00")},
		{ID: "g5", Subject: pfx("10.0.0.0/8"), Services: []string{"unknown"}, NotAfter: utc(t, "2027-01-01 00:00:00")},
	}
	p := mustNew(t, spec).WithGrants(grants)
	clients := []netip.Addr{staff, comms, night, outsider, netip.MustParseAddr("10.0.0.9"), netip.MustParseAddr("10.0.1.9"),
		netip.MustParseAddr("10.0.2.9"), netip.MustParseAddr("10.0.3.9"), netip.MustParseAddr("::ffff:10.0.4.9"), {}}
	users := []string{"", "bob", "alice"}
	hosts := map[string]Service{}
	for _, s := range spec.Services {
		hosts["www."+s.Domains[0]] = s
	}
	starts := []time.Time{utc(t, "2026-10-31 00:00:00"), utc(t, "2026-03-07 00:00:00"), utc(t, "2026-11-20 00:00:00")}
	r := rand.New(rand.NewPCG(3, 4))
	n := 80
	if testing.Short() {
		n = 30
	}
	for i := 0; i < n; i++ {
		start := starts[r.IntN(len(starts))]
		q := Query{
			Client: clients[r.IntN(len(clients))],
			User:   users[r.IntN(len(users))],
			Time:   start.Add(time.Duration(r.Int64N(int64(72 * time.Hour)))),
		}
		if r.IntN(3) == 0 {
			q.Time = q.Time.Truncate(time.Minute)
		}
		for host, svc := range hosts {
			q.Host = host
			got := p.Decide(q)
			want := refDecide(&spec, grants, svc, q)
			limit := q.Time.Add(spec.MaxUntil)
			want.Until = limit
			for m := q.Time.Truncate(time.Minute).Add(time.Minute); m.Before(limit); m = m.Add(time.Minute) {
				qm := q
				qm.Time = m
				d := refDecide(&spec, grants, svc, qm)
				if d.Verdict != want.Verdict || d.Reason != want.Reason || d.Rule != want.Rule || d.Grant != want.Grant {
					want.Until = m
					break
				}
			}
			if !same(got, want) {
				t.Fatalf("Decide(%+v) = %v, want %v", q, got, want)
			}
		}
	}
}

func FuzzParseWindow(f *testing.F) {
	for _, s := range []string{"mon-fri 12:00-13:00", "sat 22:30-02:00", "daily 00:00-24:00", "fri-mon 08:00:30-09:00:05", "mon,wed 1:00-2:00", "* 23:59:59-00:00:01", "mon 25:00-26:00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		w, err := ParseWindow(s)
		if err != nil {
			return
		}
		if err := validWindow(w); err != nil {
			t.Fatalf("ParseWindow(%q) = %+v, invalid: %v", s, w, err)
		}
		again, err := ParseWindow(w.String())
		if err != nil || again != w {
			t.Fatalf("ParseWindow(%q) = %+v, %v, want %+v (round trip of %q)", w.String(), again, err, w, s)
		}
	})
}

func TestCategoryWithoutServices(t *testing.T) {
	spec := testSpec(t)
	spec.Rules = append([]Rule{{Name: "doh", Categories: []string{"doh"}, Action: Allow}}, spec.Rules...)
	p := mustNew(t, spec)
	now := at(t, "2026-11-17 14:00:00")
	if d := p.Decide(Query{Host: "facebook.com", Client: outsider, Time: now}); d.Reason != ReasonDefault {
		t.Errorf("Decide(facebook.com) = %v, want the default: the doh rule has no service", d)
	}
	spec.Categories = nil
	if _, err := New(spec); err == nil || !strings.Contains(err.Error(), `unknown category "doh"`) {
		t.Errorf("New without Categories: error %v, want unknown category", err)
	}
}
