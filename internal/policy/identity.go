package policy

import "time"

// IdentityMatters reports whether the verdict for host could depend on
// who asks: host is listed, its decision is made by grants and rules
// (not an allow list, a canary, an IP literal or an unlisted name), and
// either a rule that can be reached for its service (under any schedule)
// names a group with users or directory groups, or a grant to a user for
// its service has not ended at t (one that starts later counts too).
//
// The proxy asks a client to authenticate (407) only when it is true:
// the rest of the browsing is never tied to a person. It does not read a
// clock and never allocates for ASCII host names.
func (p *Policy) IdentityMatters(host string, t time.Time) bool {
	var buf hostBuf
	svc, ok := p.c.decidedService(&buf, host, false)
	return ok && p.identityMatters(svc, t)
}

// IdentityMattersFor is IdentityMatters for the host d was just decided
// on (by this policy), without classifying the host again: the front-ends
// ask it right after Decide.
func (p *Policy) IdentityMattersFor(d Decision, t time.Time) bool {
	switch d.Reason {
	case ReasonRule, ReasonDefault, ReasonGrant, ReasonCredit:
	default:
		return false
	}
	svc, ok := p.c.byID[d.Service]
	return ok && !d.IP && p.identityMatters(svc, t)
}

// identityMatters is IdentityMatters for the service of index svc.
func (p *Policy) identityMatters(svc int, t time.Time) bool {
	c := p.c
	if c.svcIdentity[svc] {
		return true
	}
	u := instant(t)
	g := p.g
	if len(g.userEnd) > svc && g.userEnd[svc] > u || p.breakUserActive(svc, u) {
		return true
	}
	return !c.services[svc].bypass && g.userAnyEnd > u
}

// compileIdentity sets svcIdentity: for each service, whether one of its
// rules names a group with users or directory groups before a rule for
// everyone, always, ends the walk.
func (c *compiled) compileIdentity(groups []Group) {
	var ident uint64
	for i, g := range groups {
		if len(g.Users) > 0 || len(g.DirectoryGroups) > 0 {
			ident |= 1 << i
		}
	}
	c.svcIdentity = make([]bool, len(c.services))
	if ident == 0 {
		return
	}
	for si, rs := range c.svcRules {
		for _, ri := range rs {
			r := &c.rules[ri]
			if r.everyone {
				if r.week.always {
					break
				}
				continue
			}
			if r.groups&ident != 0 {
				c.svcIdentity[si] = true
				break
			}
		}
	}
}

// decidedService normalizes and classifies host and returns its service
// index when its decision goes to grants and rules (Decide's steps 5 to
// 7); false for IP literals, invalid and unlisted names, canaries and
// allow-list hosts.
func (c *compiled) decidedService(buf *hostBuf, host string, cname bool) (int, bool) {
	n, kind, _ := normalizeASCII(buf, host)
	switch kind {
	case hostIP, hostInvalid:
		return 0, false
	case hostNonASCII:
		a, err := NormalizeHost(host)
		if err != nil {
			return 0, false
		}
		n, _, _ = normalizeASCII(buf, a)
	}
	cl := c.classify(buf, n, cname)
	svc := cl.svc
	if svc < 0 || cl.canary {
		return 0, false
	}
	if (cl.allow || cl.except >= 0) && !(c.services[svc].bypass && cl.allowDepth < cl.svcDepth) {
		return 0, false
	}
	return int(svc), true
}
