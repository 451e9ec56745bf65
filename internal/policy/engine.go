package policy

import (
	"fmt"
	"slices"
	"time"
)

// Policy is a compiled policy. The zero value is not usable; see New.
// A Policy is immutable and safe for concurrent use.
type Policy struct {
	c  *compiled
	g  *grantIndex
	b  *grantIndex // breaks in progress (grants with Credit set)
	bx *breakIndex // b by subject
}

// WithGrants returns a policy identical to p whose grant snapshot is g. It
// shares p's compiled matcher and does not recompile anything. Grants whose
// services are unknown are ignored, as are grants with neither subject
// nor user, and grants whose NotAfter is zero or not after NotBefore.
// Grants with Credit set are breaks in progress (see credit.go).
func (p *Policy) WithGrants(g []Grant) *Policy {
	grants, breaks := splitBreaks(g)
	b := p.c.indexGrants(breaks)
	return &Policy{c: p.c, g: p.c.indexGrants(grants), b: b, bx: p.c.indexBreaks(b)}
}

// Grants returns the grant snapshot, breaks in progress included (do not
// modify it).
func (p *Policy) Grants() []Grant {
	if p.b == nil || len(p.b.src) == 0 {
		return p.g.src
	}
	return append(slices.Clip(p.g.src), p.b.src...)
}

// Location returns the zone the policy's windows are read in.
func (p *Policy) Location() *time.Location { return p.c.loc }

// DomainCount returns the number of listed domain entries compiled: the
// distinct names of every service's Domains and CNAMETargets.
func (p *Policy) DomainCount() int { return p.c.entries }

// ServiceIDs returns the ids of every listed service, sorted.
func (p *Policy) ServiceIDs() []string {
	ids := make([]string, len(p.c.services))
	for i := range p.c.services {
		ids[i] = p.c.services[i].ID
	}
	slices.Sort(ids)
	return ids
}

// LookupService returns the service with this id. Name is the display
// name (the id when the spec gave none). Domains is nil: the compiled
// matcher keeps fingerprints, not names (see ServiceDomainCount).
func (p *Policy) LookupService(id string) (Service, bool) {
	i, ok := p.c.byID[id]
	if !ok {
		return Service{}, false
	}
	return p.c.services[i].Service, true
}

// ServiceDomainCount returns how many Domains the spec gave the service
// with this id (0 for an unknown id).
func (p *Policy) ServiceDomainCount(id string) int {
	if i, ok := p.c.byID[id]; ok {
		return p.c.services[i].domains
	}
	return 0
}

// Categories returns the policy's categories: Spec.Categories, then those
// of services not already in it, in order of appearance.
func (p *Policy) Categories() []string { return slices.Clone(p.c.categories) }

// GroupsOf returns the names of the groups the client of q belongs to (by
// network, user or directory group), in definition order. For
// explanations; Decide does not allocate it.
func (p *Policy) GroupsOf(q Query) []string { return p.Groups(q).Names() }

// Decide answers q. It never allocates for ASCII host names.
//
// Classification of the normalized host, in this order:
//  1. an IP literal or an invalid name: Allow, ReasonUnlisted (IP or
//     Invalid set); the front-ends apply their own rules to those.
//  2. the host or a parent is a canary: Block, ReasonCanary for everyone
//     (Service filled when a service also lists the host).
//  3. the host or one of its parent domains is in Spec.AllowHosts or is a
//     service's Exceptions entry: Allow, ReasonAllowList, whatever else
//     lists it — except a host of BypassCategory listed under a longer
//     name than the allow entry, which goes on to step 4. Service is the
//     service of the exception, else the service listing the host (so
//     logs can say which service was let through), else empty.
//  4. the longest listed suffix on a label boundary names the service
//     (cname_targets count only when q.CNAMETarget); none: Allow,
//     ReasonUnlisted, without looking at rules or grants.
//  5. an active grant for the client or user and the service: Allow,
//     ReasonGrant. A grant for "*" does not reach BypassCategory.
//     5b. a break in progress (a grant with Credit set) for the client or
//     user and the service: Allow, ReasonCredit.
//  6. the first rule that applies to the client's groups and the service
//     and is inside one of its During windows: its action, ReasonRule.
//     "*" does not reach BypassCategory. A rule in report mode that
//     would apply is recorded in Report (the first one only) and
//     skipped.
//  7. else the default action, ReasonDefault; Block for BypassCategory
//     whatever the default action.
//
// Until is set for steps 5 to 7 only (the others never change with time):
// the first instant after q.Time at which Verdict, Reason, Rule or Grant
// would differ for this client and host, considering window edges (with
// DST), grant starts and ends, at most Spec.MaxUntil after q.Time.
func (p *Policy) Decide(q Query) (d Decision) {
	c := p.c
	var buf hostBuf
	n, kind, _ := normalizeASCII(&buf, q.Host)
	switch kind {
	case hostIP:
		d.IP = true
		return d
	case hostInvalid:
		d.Invalid = true
		return d
	case hostNonASCII:
		a, err := NormalizeHost(q.Host)
		if err != nil {
			d.Invalid = true
			return d
		}
		n, _, _ = normalizeASCII(&buf, a)
	}
	cl := c.classify(&buf, n, q.CNAMETarget)
	svc := cl.svc
	if (cl.allow || cl.except >= 0) && svc >= 0 && c.services[svc].bypass && cl.allowDepth < cl.svcDepth {
		// A parent domain in an allow list does not open a bypass
		// endpoint listed under it.
		cl.allow, cl.except = false, noService
	}
	switch {
	case cl.canary:
		c.fillService(&d, svc)
		d.Verdict, d.Reason = Block, ReasonCanary
		return d
	case cl.allow || cl.except >= 0:
		if cl.except >= 0 {
			svc = cl.except
		}
		c.fillService(&d, svc)
		d.Reason = ReasonAllowList
		return d
	case svc < 0:
		return d
	}
	c.fillService(&d, svc)
	s := int(svc)
	u := instant(q.Time)
	limit := addSat(u, c.maxUntil)
	client := q.Client.Unmap().WithZone("")
	bypass := c.services[s].bypass
	d.Bypass = bypass
	gi, until := p.g.decide(s, bypass, client, q.User, u, limit)
	if gi >= 0 {
		d.Verdict, d.Reason, d.Grant = Allow, ReasonGrant, p.g.gs[gi].id
		d.Until = q.Time.Add(time.Duration(until - u))
		return d
	}
	if p.decideBreak(&d, s, bypass, client, q, u, &until) {
		return d
	}
	limit = until
	e := ruleEval{rules: c.svcRules[s], mask: c.clientMask(client, q.User, q.Groups)}
	off, next := c.zone.at(u)
	wt := weekTime(u, off)
	k := c.first(&e, wt)
	if ri := c.firstReport(&e, k, wt); ri >= 0 {
		d.Report = Report{Rule: c.rules[ri].name, Action: c.rules[ri].action}
	}
	if k < len(c.rules) {
		d.Verdict, d.Reason, d.Rule = c.rules[k].action, ReasonRule, c.rules[k].name
	} else {
		d.Verdict, d.Reason = c.defaultAction, ReasonDefault
		if bypass {
			d.Verdict = Block
		}
	}
	until = c.ruleChange(&e, k, u, next, wt, limit)
	d.Until = q.Time.Add(time.Duration(until - u))
	return d
}

// fillService sets d's service fields for service index svc (none when
// svc < 0).
func (c *compiled) fillService(d *Decision, svc int32) {
	if svc < 0 {
		return
	}
	s := &c.services[svc]
	d.Service, d.ServiceName, d.Category = s.ID, s.Name, s.Category
}

// classified is what classify finds about a name.
type classified struct {
	svc    int32 // service of the longest listed suffix, or -1
	except int32 // service of an exception among the suffixes, or -1
	allow  bool  // a suffix is in the allow list
	canary bool  // a suffix is a canary
	// svcDepth and allowDepth count the labels of the suffix that set
	// svc and of the longest allow-list or exception suffix.
	svcDepth, allowDepth int
}

// classify walks the suffixes of the normalized name buf[:n] from the
// shortest and reports the service of the longest listed one, the
// service of an exception among them, and whether one is in the allow
// list or is a canary. It stops at the first suffix that is not in the
// table or has nothing listed below it: usually after the registrable
// domain, with one lookup in cache (the top-level domain) and one that is
// not.
func (c *compiled) classify(buf *hostBuf, n int, cname bool) (r classified) {
	r.svc, r.except = noService, noService
	h := uint64(hashSeed)
	labels := 0
	for e := n; e > 0; {
		s := buf.prevDot(e)
		h = extendHash(h, &buf.b, s+1, e)
		e = s
		if labels++; labels < c.m.minLabels {
			continue
		}
		vi, ok := c.m.lookup(h)
		if !ok {
			break
		}
		v := &c.values[vi]
		if v.listed >= 0 {
			r.svc, r.svcDepth = v.listed, labels
		} else if cname && v.cname >= 0 {
			r.svc, r.svcDepth = v.cname, labels
		}
		if v.except >= 0 {
			r.except, r.allowDepth = v.except, labels
		}
		if v.allow {
			r.allow, r.allowDepth = true, labels
		}
		r.canary = r.canary || v.canary
		if !v.parent {
			break
		}
	}
	return r
}

// Instants are nanoseconds since the Unix epoch, clamped to what an int64
// holds with room for additions (years 1685 to 2255).
const (
	maxInstantSec = 9_000_000_000
	minInstant    = -maxInstantSec * nsPerSec
	maxInstant    = maxInstantSec * nsPerSec
)

// instant converts t to nanoseconds since the Unix epoch, clamped.
func instant(t time.Time) int64 {
	s := t.Unix()
	switch {
	case s <= -maxInstantSec:
		return minInstant
	case s >= maxInstantSec:
		return maxInstant
	}
	return s*nsPerSec + int64(t.Nanosecond())
}

// addSat adds d >= 0 to u, saturating at maxInstant.
func addSat(u, d int64) int64 {
	if d > maxInstant-u {
		return maxInstant
	}
	return u + d
}

// String describes d for logs and test failures.
func (d Decision) String() string {
	s := fmt.Sprintf("%v/%v", d.Verdict, d.Reason)
	if d.Service != "" {
		s += " service=" + d.Service
	}
	if d.Rule != "" {
		s += " rule=" + d.Rule
	}
	if d.Grant != "" {
		s += " grant=" + d.Grant
	}
	if d.Report.Rule != "" {
		s += " would=" + d.Report.Action.String() + " report=" + d.Report.Rule
	}
	if !d.Until.IsZero() {
		s += " until=" + d.Until.Format(time.RFC3339Nano)
	}
	if d.Invalid {
		s += " invalid"
	}
	if d.IP {
		s += " ip"
	}
	return s
}
