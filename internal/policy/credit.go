package policy

import (
	"net/netip"
	"slices"
	"strings"
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

// breakIndex finds the breaks of a client or user without scanning
// every break: the register keys breaks by a workstation's /32 (IPv4) or
// /64 (IPv6), or by a user; other subjects are scanned.
type breakIndex struct {
	byPrefix map[netip.Prefix][]int32
	byUser   map[string][]int32 // by lower-case name
	users    []int32            // every break to a user (names not lower-case ASCII)
	other    []int32
	services [][]int32 // per break, the service indexes it covers, sorted
}

// indexBreaks compiles the break part of a snapshot (gi holds breaks
// only).
func (c *compiled) indexBreaks(gi *grantIndex) *breakIndex {
	bx := &breakIndex{byPrefix: map[netip.Prefix][]int32{}, byUser: map[string][]int32{}}
	bx.services = make([][]int32, len(gi.gs))
	for si, list := range gi.bySvc {
		for _, i := range list {
			bx.services[i] = append(bx.services[i], int32(si))
		}
	}
	for i := range gi.gs {
		g := &gi.gs[i]
		idx := int32(i)
		if p := g.prefix; p.IsValid() {
			if (p.Addr().Is4() && p.Bits() == 32) || (p.Addr().Is6() && p.Bits() == 64) {
				bx.byPrefix[p] = append(bx.byPrefix[p], idx)
			} else {
				bx.other = append(bx.other, idx)
			}
		}
		if g.user != "" {
			k := strings.ToLower(g.user)
			bx.byUser[k] = append(bx.byUser[k], idx)
			bx.users = append(bx.users, idx)
		}
	}
	return bx
}

// isLowerASCII reports whether s is ASCII without upper-case letters.
func isLowerASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 0x80 || ('A' <= c && c <= 'Z') {
			return false
		}
	}
	return true
}

// candidates returns the lists of breaks that may apply to client and
// user (a break may be in two of them; decide does not mind).
func (bx *breakIndex) candidates(client netip.Addr, user string) [4][]int32 {
	var out [4][]int32
	if client.IsValid() {
		bits := 32
		if client.Is6() {
			bits = 64
		}
		if p, err := client.Prefix(bits); err == nil {
			out[0] = bx.byPrefix[p]
		}
	}
	if user != "" {
		if isLowerASCII(user) {
			out[1] = bx.byUser[user]
		} else {
			out[1] = bx.users // rare: scanned with EqualFold
		}
	}
	out[2] = bx.other
	return out
}

// covers reports whether break i covers service svc.
func (bx *breakIndex) covers(i int32, svc int) bool {
	_, ok := slices.BinarySearch(bx.services[i], int32(svc))
	return ok
}

// decideBreak is Decide's step 5b. until is the first instant the grant
// part of the decision changes (step 5's answer); when a break for the
// client or user covers service s at u, decideBreak fills d (Allow,
// ReasonCredit, Credit, Until = the break's end or until, whichever comes
// first) and returns true. Otherwise it lowers until to the start of a
// break to come, if any, and returns false. It does not allocate.
func (p *Policy) decideBreak(d *Decision, s int, bypass bool, client netip.Addr, q Query, u int64, until *int64) bool {
	if p.b == nil || len(p.b.gs) == 0 || p.bx == nil {
		return false
	}
	gs, bx := p.b.gs, p.bx
	lists := bx.candidates(client, q.User)
	chosen := -1
	for _, l := range lists {
		for _, i := range l {
			g := &gs[i]
			if g.nb <= u && u < g.na && g.appliesTo(client, q.User) && bx.covers(i, s) {
				if chosen < 0 || g.na > gs[chosen].na {
					chosen = int(i)
				}
			}
		}
	}
	limit := *until
	end := int64(minInstant)
	if chosen >= 0 {
		limit = min(limit, gs[chosen].na)
		end = gs[chosen].na
	}
	for _, l := range lists {
		for _, i := range l {
			g := &gs[i]
			if g.nb > u && g.nb < limit && g.na > end && g.appliesTo(client, q.User) && bx.covers(i, s) {
				limit = g.nb
			}
		}
	}
	if chosen < 0 {
		*until = limit
		return false
	}
	d.Verdict, d.Reason, d.Credit = Allow, ReasonCredit, gs[chosen].credit
	d.Until = q.Time.Add(time.Duration(limit - u))
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
