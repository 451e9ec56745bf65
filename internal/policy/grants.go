package policy

import (
	"net/netip"
	"slices"
	"strings"
)

// cgrant is a compiled Grant.
type cgrant struct {
	id     string
	credit string       // Grant.Credit
	prefix netip.Prefix // invalid for user grants
	user   string
	nb, na int64 // [nb, na) in nanoseconds since the Unix epoch
}

// grantIndex is a compiled grant snapshot: grants by service index, and
// the grants for every service apart.
type grantIndex struct {
	src   []Grant
	gs    []cgrant
	bySvc [][]int32
	any   []int32
	// userEnd is, per service index, the latest end of a grant to a
	// user for it; userAnyEnd that of user grants for "*" (nanoseconds
	// since the epoch; see IdentityMatters).
	userEnd    []int64
	userAnyEnd int64
}

// indexGrants compiles a snapshot. Grants with no known service, no
// subject or an empty interval are left out of the index (Grants still
// returns them).
func (c *compiled) indexGrants(src []Grant) *grantIndex {
	gi := &grantIndex{src: slices.Clone(src)}
	if len(src) == 0 {
		return gi
	}
	gi.bySvc = make([][]int32, len(c.services))
	for _, g := range gi.src {
		cg := cgrant{id: g.ID, credit: g.Credit, user: g.User, nb: instant(g.NotBefore), na: instant(g.NotAfter)}
		if g.NotBefore.IsZero() {
			cg.nb = minInstant
		}
		if g.Subject.IsValid() {
			cg.prefix = unmapPrefix(g.Subject)
		}
		if (!cg.prefix.IsValid() && cg.user == "") || g.NotAfter.IsZero() || cg.na <= cg.nb {
			continue
		}
		idx := int32(len(gi.gs))
		added := false
		if slices.Contains(g.Services, "*") {
			gi.any = append(gi.any, idx)
			added = true
			if cg.user != "" {
				gi.userAnyEnd = max(gi.userAnyEnd, cg.na)
			}
		} else {
			for _, s := range g.Services {
				si, ok := c.byID[s]
				if !ok || slices.Contains(gi.bySvc[si], idx) {
					continue
				}
				gi.bySvc[si] = append(gi.bySvc[si], idx)
				added = true
				if cg.user != "" {
					if gi.userEnd == nil {
						gi.userEnd = make([]int64, len(c.services))
					}
					gi.userEnd[si] = max(gi.userEnd[si], cg.na)
				}
			}
		}
		if added {
			gi.gs = append(gi.gs, cg)
		}
	}
	return gi
}

// appliesTo reports whether g's subject is client (unmapped) or user.
func (g *cgrant) appliesTo(client netip.Addr, user string) bool {
	if g.prefix.IsValid() && client.IsValid() && g.prefix.Contains(client) {
		return true
	}
	return g.user != "" && user != "" && strings.EqualFold(g.user, user)
}

// decide looks for a grant allowing service svc to client or user at
// instant u. It returns the index of the active grant that lasts longest
// (the first of those in snapshot order), or -1, and the first instant
// after u, before limit, at which the grant part of the decision changes:
// the chosen grant's end, or the start of a grant that would take over
// (ending later), or — with no active grant — the start of the next one.
// Grants for "*" are not considered when bypass is set.
func (gi *grantIndex) decide(svc int, bypass bool, client netip.Addr, user string, u, limit int64) (int, int64) {
	if len(gi.gs) == 0 {
		return -1, limit
	}
	lists := [2][]int32{gi.bySvc[svc], gi.any}
	if bypass {
		// A grant for "*" does not reach BypassCategory.
		lists[1] = nil
	}
	chosen := -1
	for _, l := range lists {
		for _, i := range l {
			g := &gi.gs[i]
			if g.nb <= u && u < g.na && g.appliesTo(client, user) {
				if chosen < 0 || g.na > gi.gs[chosen].na || (g.na == gi.gs[chosen].na && int(i) < chosen) {
					chosen = int(i)
				}
			}
		}
	}
	until := limit
	end := int64(minInstant)
	if chosen >= 0 {
		until = min(until, gi.gs[chosen].na)
		end = gi.gs[chosen].na
	}
	for _, l := range lists {
		for _, i := range l {
			g := &gi.gs[i]
			if g.nb > u && g.nb < until && g.na > end && g.appliesTo(client, user) {
				until = g.nb
			}
		}
	}
	return chosen, until
}
