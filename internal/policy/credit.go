package policy

import (
	"net/netip"
	"time"
)

// Break credit: a [[credit]] gives a group minutes of covered services per
// rolling window, spent in breaks the employee starts. The engine knows
// nothing of minutes nor windows: the register hands it the breaks in
// progress as grants with Credit set (the front-ends install them with
// WithGrants like any grant), and Decide lets them decide after the other
// grants and before the rules, with ReasonCredit, until the break's end.

// splitBreaks separates the grants with Credit set (breaks in progress)
// from the others. It allocates only when both kinds are present.
func splitBreaks(all []Grant) (grants, breaks []Grant) {
	n := 0
	for i := range all {
		if all[i].Credit != "" {
			n++
		}
	}
	switch n {
	case 0:
		return all, nil
	case len(all):
		return nil, all
	}
	grants = make([]Grant, 0, len(all)-n)
	breaks = make([]Grant, 0, n)
	for _, g := range all {
		if g.Credit != "" {
			breaks = append(breaks, g)
		} else {
			grants = append(grants, g)
		}
	}
	return grants, breaks
}

// decideBreak is Decide's step 5b. until is the first instant the grant
// part of the decision changes (step 5's answer); when a break for the
// client or user covers service s at u, decideBreak fills d (Allow,
// ReasonCredit, Credit, Until = the break's end or until, whichever comes
// first) and returns true. Otherwise it lowers until to the start of a
// break to come, if any, and returns false. It does not allocate.
func (p *Policy) decideBreak(d *Decision, s int, bypass bool, client netip.Addr, q Query, u int64, until *int64) bool {
	if p.b == nil || len(p.b.gs) == 0 {
		return false
	}
	bi, end := p.b.decide(s, bypass, client, q.User, u, *until)
	if bi < 0 {
		*until = end
		return false
	}
	d.Verdict, d.Reason, d.Credit = Allow, ReasonCredit, p.b.gs[bi].credit
	d.Until = q.Time.Add(time.Duration(end - u))
	return true
}

// breakUserActive reports whether a break for a user covers service svc
// after instant u (IdentityMatters).
func (p *Policy) breakUserActive(svc int, u int64) bool {
	b := p.b
	if b == nil {
		return false
	}
	if len(b.userEnd) > svc && b.userEnd[svc] > u {
		return true
	}
	return !p.c.services[svc].bypass && b.userAnyEnd > u
}
