package policy

import (
	"net/netip"
)

// rule is a compiled Rule.
type rule struct {
	name     string // Rule.Name, or "#N" when empty
	everyone bool
	groups   uint64 // group bits, when not everyone
	// services is a bit set of service indexes: categories expanded,
	// "*" (or no services and categories) as every service but those of
	// BypassCategory.
	services []uint64
	week     weekSet // the union of the During schedules' windows
	action   Verdict
	report   bool // report mode: never decides, recorded in Decision.Report
}

// hasService reports whether r concerns service index svc.
func (r *rule) hasService(svc int) bool {
	return r.services[svc>>6]&(1<<(uint(svc)&63)) != 0
}

// clientMask returns the bits of the groups client (unmapped, no zone),
// user and directory groups belong to. Names compare case-insensitively,
// as names or DNs (see nameMatches).
func (c *compiled) clientMask(client netip.Addr, user string, dirGroups []string) uint64 {
	var m uint64
	if client.Is4() {
		a := client.As4()
		addr := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
		for i := range c.networks4 {
			if n := &c.networks4[i]; addr&n.mask == n.addr {
				m |= n.bit
			}
		}
	} else if client.IsValid() {
		for i := range c.networks {
			n := &c.networks[i]
			if m&n.bit == 0 && n.prefix.Contains(client) {
				m |= n.bit
			}
		}
	}
	for _, g := range dirGroups {
		for _, d := range c.dirGroups {
			if m&d.bit == 0 && nameMatches(d.name, d.dn, g) {
				m |= d.bit
			}
		}
	}
	if user != "" {
		for _, u := range c.users {
			if m&u.bit == 0 && nameMatches(u.name, u.dn, user) {
				m |= u.bit
			}
		}
	}
	return m
}

// ruleEval is what the rule walk needs about one decision.
type ruleEval struct {
	rules []int32 // indexes of the rules whose services include the host's
	mask  uint64  // the client's groups
}

// first returns the index of the first of e's rules that applies to the
// client and is active at wall-clock week time wt, or len(c.rules).
// Rules in report mode never decide: they are skipped.
func (c *compiled) first(e *ruleEval, wt int64) int {
	for _, i := range e.rules {
		r := &c.rules[i]
		if !r.report && (r.everyone || r.groups&e.mask != 0) && (r.week.always || r.week.contains(wt)) {
			return int(i)
		}
	}
	return len(c.rules)
}

// firstReport returns the index of the first rule in report mode before
// rule k that applies to the client and is active at week time wt, or -1.
func (c *compiled) firstReport(e *ruleEval, k int, wt int64) int {
	if !c.hasReport {
		return -1
	}
	for _, i := range e.rules {
		if int(i) >= k {
			break
		}
		r := &c.rules[i]
		if r.report && (r.everyone || r.groups&e.mask != 0) && (r.week.always || r.week.contains(wt)) {
			return int(i)
		}
	}
	return -1
}

// ruleChange returns the first instant after u and before limit at which
// first is no longer k, or limit; off and next are the zone's offset at
// u and the instant it changes, wt the week time at u. Only the rules up
// to and including k can change the outcome: a later rule matters only
// once k stops matching, which is an edge of k's own windows.
//
// Between two changes of UTC offset the wall clock advances with real
// time, so the next window edge is found by arithmetic on the wall-clock
// week time; at an offset change (DST) the wall clock jumps, and the
// outcome is checked again there. Candidate instants where nothing
// changes (a window wrapping the week, a DST jump inside or outside every
// window) are skipped.
func (c *compiled) ruleChange(e *ruleEval, k int, u, next, wt, limit int64) int64 {
	cur := u
	for iter := 0; ; iter++ {
		best := min(limit, next)
		scheduled := false
		for _, i := range e.rules {
			if int(i) > k {
				break
			}
			r := &c.rules[i]
			if r.week.always || !(r.everyone || r.groups&e.mask != 0) {
				continue
			}
			scheduled = true
			if d, ok := r.week.next(wt); ok && d < best-cur {
				best = cur + d
			}
		}
		if !scheduled || best >= limit {
			return limit
		}
		off, nxt := c.zone.at(best)
		next = nxt
		wt = weekTime(best, off)
		if c.first(e, wt) != k || iter >= 1024 {
			return best
		}
		cur = best
	}
}
