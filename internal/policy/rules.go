package policy

import (
	"net/netip"
	"strings"
)

// rule is a compiled Rule.
type rule struct {
	name     string // Rule.Name, or "#N" when empty
	everyone bool
	groups   uint64 // group bits, when not everyone
	// allServices is set for "*" or no services and categories; else
	// services is a bit set of service indexes (categories expanded).
	allServices bool
	services    []uint64
	week        weekSet // the union of the During schedules' windows
	action      Verdict
}

// applies reports whether r concerns a client with group bits mask and
// service index svc, whatever the time.
func (r *rule) applies(mask uint64, svc int) bool {
	if !r.everyone && r.groups&mask == 0 {
		return false
	}
	return r.allServices || r.services[svc>>6]&(1<<(uint(svc)&63)) != 0
}

// clientMask returns the bits of the groups client (unmapped, no zone),
// user and directory groups belong to. Names compare case-insensitively.
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
			if m&d.bit == 0 && strings.EqualFold(g, d.name) {
				m |= d.bit
			}
		}
	}
	if user != "" {
		for _, u := range c.users {
			if m&u.bit == 0 && strings.EqualFold(user, u.name) {
				m |= u.bit
			}
		}
	}
	return m
}

// wallTime returns the local wall-clock time since Sunday 00:00 of
// instant u (nanoseconds since the Unix epoch).
func (c *compiled) wallTime(u int64) int64 {
	off, _ := c.zone.at(floorDiv(u, nsPerSec))
	return weekTime(u, off)
}

// firstRule returns the index of the first rule that applies to mask and
// svc and is active at instant u, or len(c.rules) when none is.
func (c *compiled) firstRule(u int64, svc int, mask uint64) int {
	var wt int64
	haveWT := false
	for i := range c.rules {
		r := &c.rules[i]
		if !r.applies(mask, svc) {
			continue
		}
		if r.week.always {
			return i
		}
		if !haveWT {
			wt, haveWT = c.wallTime(u), true
		}
		if r.week.contains(wt) {
			return i
		}
	}
	return len(c.rules)
}

// ruleChange returns the first instant after u and before limit at which
// firstRule(·, svc, mask) is no longer k, or limit. Only the rules up to
// and including k can change the outcome: a later rule matters only once
// k stops matching, which is an edge of k's own windows.
//
// Between two changes of UTC offset the wall clock advances with real
// time, so the next window edge is found by arithmetic on the wall-clock
// week time; at an offset change (DST) the wall clock jumps, and the
// outcome is checked again there. Candidate instants where nothing
// changes (a window wrapping the week, a DST jump inside or outside every
// window) are skipped.
func (c *compiled) ruleChange(u, limit int64, svc int, mask uint64, k int) int64 {
	cur := u
	for iter := 0; iter < 1024; iter++ {
		off, nextSec := c.zone.at(floorDiv(cur, nsPerSec))
		wt := weekTime(cur, off)
		best := limit
		if nextSec <= limit/nsPerSec {
			best = min(best, nextSec*nsPerSec)
		}
		scheduled := false
		for i := 0; i <= k && i < len(c.rules); i++ {
			r := &c.rules[i]
			if r.week.always || !r.applies(mask, svc) {
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
		if c.firstRule(best, svc, mask) != k {
			return best
		}
		cur = best
	}
	return cur
}
