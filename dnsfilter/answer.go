package dnsfilter

import (
	"bytes"
	"context"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/balise-net/balise/internal/decisionlog"
	"github.com/balise-net/balise/internal/policy"
)

// ddrName is the Discovery of Designated Resolvers name (RFC 9462).
// Answering NODATA tells clients that Balise designates no encrypted
// resolver, so browsers and operating systems keep using it.
const ddrName = "_dns.resolver.arpa"

// clock returns the time of a query that arrived at start: start itself
// on the real clock (read once per query), else the configured clock.
func (f *Filter) clock(start time.Time) time.Time {
	if f.realClock {
		return start
	}
	return f.s.Clock()
}

// rfc8482TTL is the TTL of the HINFO answered to ANY queries: RFC 8482
// advises 3600 to 86400 s, to discourage repeated ANY queries.
const rfc8482TTL = 3600

// minPrefetchLife is the shortest cache lifetime for which an entry is
// refreshed before it expires.
const minPrefetchLife = int64(10 * time.Second)

// Modes of serve.
type mode uint8

const (
	// modeFirst: the UDP reading goroutine; never waits for an upstream.
	modeFirst mode = iota
	// modeResume: a goroutine taking over a query modeFirst could not
	// answer; the rate limit was already applied.
	modeResume
	// modeWait: a TCP connection or ServeDNS; applies the rate limit and
	// waits.
	modeWait
)

// serve answers the query pkt from client and returns the answer (nil to
// send nothing). In modeFirst it returns pending instead of waiting for an
// upstream. The answer aliases s.out.
func (f *Filter) serve(s *scratch, pkt []byte, client netip.Addr, p proto, start time.Time, md mode) (out []byte, pending bool) {
	out = s.out[:0]
	acc := f.access.Load()
	if !acc.allows(client) {
		// Never an open resolver: outsiders learn nothing, not even what
		// the cache holds, and cost no upstream work.
		res := parseQuery(pkt, s)
		if res == parseDrop {
			return nil, false
		}
		if md != modeResume && !f.limiter.allow(client, f.clock(start).UnixNano()) {
			// An outsider over its rate: no answer at all, so that
			// REFUSED answers cannot be reflected at a spoofed source
			// faster than the rate limit.
			f.m.rateLimited.Inc()
			return nil, false
		}
		var name string
		if res == parseOK {
			name = s.q.host
		}
		f.refuse(refusalClient, p, client, name)
		f.m.count(p, verdictRefused, reasonClient)
		return errorResponse(out, pkt, &s.q, dns.RcodeRefused), false
	}
	res := parseQuery(pkt, s)
	if res == parseIrregular {
		res = parseFormErr
		if c, ok := canonicalize(pkt); ok {
			pkt = c
			if res = parseQuery(pkt, s); res == parseIrregular {
				res = parseFormErr
			}
		}
	}
	q := &s.q
	switch res {
	case parseDrop:
		if len(pkt) < headerLen {
			f.m.malformed[malShort].Inc()
		} else {
			f.m.malformed[malResponse].Inc()
		}
		return nil, false
	case parseFormErr:
		f.m.malformed[malFormat].Inc()
		f.m.count(p, verdictError, reasonMalformed)
		return errorResponse(out, pkt, q, dns.RcodeFormatError), false
	case parseNotImp:
		f.m.malformed[malOpcode].Inc()
		f.m.count(p, verdictError, reasonMalformed)
		return errorResponse(out, pkt, q, dns.RcodeNotImplemented), false
	case parseBadVers:
		f.m.malformed[malVersion].Inc()
		f.m.count(p, verdictError, reasonMalformed)
		return errorResponse(out, pkt, q, dns.RcodeBadVers), false
	}
	now := f.clock(start)
	nowNs := now.UnixNano()
	if md != modeResume && !f.limiter.allow(client, nowNs) {
		f.m.rateLimited.Inc()
		f.m.count(p, verdictRefused, reasonRateLimit)
		return errorResponse(out, pkt, q, dns.RcodeRefused), false
	}
	if q.qtype == dns.TypeAXFR || q.qtype == dns.TypeIXFR {
		// Zone transfers are not a resolver's business.
		f.m.count(p, verdictRefused, reasonTransfer)
		return errorResponse(out, pkt, q, dns.RcodeRefused), false
	}
	if q.host == ddrName {
		f.m.count(p, verdictAllow, reasonDDR)
		return synthesize(out, pkt, q, dns.RcodeSuccess, nil, f.s.blockedTTL, true, -1, ""), false
	}
	route := routeFor(f.zones, q.host)
	pl := f.s.Policy.Load()
	var d policy.Decision
	if route == nil {
		if pl == nil {
			f.m.count(p, verdictError, reasonNoPolicy)
			return errorResponse(out, pkt, q, dns.RcodeServerFailure), false
		}
		d = f.decide(pl, q.host, client, now, false)
		if d.Verdict == policy.Block {
			return f.block(s, pkt, client, p, now, d), false
		}
	}
	if q.qtype == dns.TypeANY && !acc.forwardAny {
		// RFC 8482: ANY gets one synthesized HINFO instead of everything
		// upstream knows (a favourite of reflection attacks).
		f.refuse(refusalAny, p, client, "")
		f.m.count(p, verdictRefused, reasonAny)
		ttl := uint32(rfc8482TTL)
		if route == nil {
			ttl = min(ttl, ttlUntil(d, now))
		}
		return appendRFC8482(out, pkt, q, ttl), false
	}
	var e *entry
	if f.cache != nil {
		e = f.cache.get(q.key)
		if e != nil && nowNs < e.expires {
			f.m.cacheHits.Inc()
			if life := e.expires - e.stored; life >= minPrefetchLife && e.expires-nowNs < life/10 {
				// In the last tenth of its life: refresh it in the
				// background, so that a name in use never expires.
				via := route
				if via == nil {
					via = f.upstreams
				}
				f.lookup(q, via)
			}
			return f.fromEntry(s, pkt, client, p, now, pl, route, d, e, false), false
		}
	}
	if md == modeFirst {
		return nil, true
	}
	f.m.cacheMisses.Inc()
	via := route
	if via == nil {
		via = f.upstreams
	}
	fl := f.lookup(q, via)
	stale := e != nil && !f.s.DisableStale && nowNs < e.expires+f.s.StaleMaxAge.Nanoseconds()
	if stale && via.allDown() {
		// Every upstream failed recently: answer stale at once instead of
		// making each client wait; the lookup refreshes the entry if an
		// upstream is back (RFC 8767 section 5).
		f.m.stale.Inc()
		return f.fromEntry(s, pkt, client, p, now, pl, route, d, e, true), false
	}
	timer := time.NewTimer(f.s.ClientTimeout - time.Since(start))
	select {
	case <-fl.done:
	case <-timer.C:
	}
	timer.Stop()
	now = f.clock(time.Now())
	select {
	case <-fl.done:
		if fl.e != nil {
			return f.fromEntry(s, pkt, client, p, now, pl, route, d, fl.e, false), false
		}
	default:
	}
	if e != nil && !f.s.DisableStale && now.UnixNano() < e.expires+f.s.StaleMaxAge.Nanoseconds() {
		f.m.stale.Inc()
		return f.fromEntry(s, pkt, client, p, now, pl, route, d, e, true), false
	}
	f.m.count(p, verdictError, reasonUpstream)
	return synthesize(out, pkt, q, dns.RcodeServerFailure, nil, 0, false, int(dns.ExtendedErrorCodeNoReachableAuthority), ""), false
}

// decide asks the policy about host. DNS names are wider than host names
// (underscore labels of SRV and TXT names, escaped bytes): when the engine
// finds host invalid, its parent is decided instead, so that
// _dmarc.blocked.example is blocked like blocked.example.
//
// A listed name whose verdict could change with who asks is decided
// again for the user bound to the client's address, when exactly one
// is (Options.Identity); every other name costs nothing more.
func (f *Filter) decide(pl *policy.Policy, host string, client netip.Addr, now time.Time, cname bool) policy.Decision {
	for {
		q := policy.Query{Host: host, Client: client, Time: now, CNAMETarget: cname}
		d := pl.Decide(q)
		if !d.Invalid {
			if d.Listed() && f.s.Identity != nil && pl.IdentityMattersFor(d, now) {
				if user, groups, ok := f.s.Identity(client, now); ok {
					q.User, q.Groups = user, groups
					d = pl.Decide(q)
					f.m.identityDecisions.Inc()
				}
			}
			return d
		}
		i := strings.IndexByte(host, '.')
		if i < 0 {
			return policy.Decision{}
		}
		host = host[i+1:]
	}
}

// ttlUntil is how many whole seconds remain before d may change.
func ttlUntil(d policy.Decision, now time.Time) uint32 {
	if d.Until.IsZero() {
		return 1<<31 - 1
	}
	left := d.Until.Sub(now)
	if left <= 0 {
		return 0
	}
	return seconds(left)
}

func (f *Filter) logDecision(now time.Time, client netip.Addr, host string, d policy.Decision) {
	if f.s.DecisionLog == nil || !d.Listed() {
		return
	}
	f.s.DecisionLog.Log(now, decisionlog.Entry{Front: "dns", Client: client, Host: strings.Clone(host), Decision: d,
		Groups: f.s.Policy.Load().Groups(policy.Query{Client: client})})
}

// block answers a blocked name with the configured block response and an
// Extended DNS Error "Blocked" naming the service.
func (f *Filter) block(s *scratch, pkt []byte, client netip.Addr, p proto, now time.Time, d policy.Decision) []byte {
	q := &s.q
	f.logDecision(now, client, q.host, d)
	f.m.count(p, verdictBlock, int(d.Reason))
	ttl := min(f.s.blockedTTL, ttlUntil(d, now))
	name, id := d.ServiceName, d.Service
	if name == "" {
		name = id
	}
	if name == "" {
		name = d.Reason.String()
	}
	text := "blocked by policy: " + name
	if id != "" && id != name {
		text += " (" + id + ")"
	}
	code := int(dns.ExtendedErrorCodeBlocked)
	resp := f.s.blockResp
	if d.Reason == policy.ReasonCanary {
		resp = respNXDOMAIN
	}
	out := s.out[:0]
	switch resp {
	case respRefused:
		return synthesize(out, pkt, q, dns.RcodeRefused, nil, 0, false, code, text)
	case respNull:
		addrs := nullAddrs[:]
		return synthesize(out, pkt, q, dns.RcodeSuccess, addrs, ttl, !answers(q, addrs), code, text)
	case respSinkhole:
		return synthesize(out, pkt, q, dns.RcodeSuccess, f.s.Sinkhole, ttl, !answers(q, f.s.Sinkhole), code, text)
	}
	return synthesize(out, pkt, q, dns.RcodeNameError, nil, ttl, true, code, text)
}

var nullAddrs = [2]netip.Addr{netip.IPv4Unspecified(), netip.IPv6Unspecified()}

// answers reports whether one of addrs answers q's type.
func answers(q *query, addrs []netip.Addr) bool {
	for _, a := range addrs {
		if q.qtype == dns.TypeA && a.Is4() || q.qtype == dns.TypeAAAA && a.Is6() {
			return true
		}
	}
	return false
}

// fromEntry answers from a cached (or just fetched) upstream answer, after
// deciding every CNAME target of its chain for this client. route is nil
// when the policy applies.
func (f *Filter) fromEntry(s *scratch, pkt []byte, client netip.Addr, p proto, now time.Time, pl *policy.Policy, route *pool, d policy.Decision, e *entry, stale bool) []byte {
	q := &s.q
	capTTL := uint32(1<<31 - 1)
	reason := reasonForward
	if route == nil {
		reason = int(d.Reason)
		for _, t := range e.targets {
			dt := f.decide(pl, t, client, now, true)
			if dt.Verdict == policy.Block {
				return f.block(s, pkt, client, p, now, dt)
			}
			if dt.Listed() {
				capTTL = min(capTTL, ttlUntil(dt, now))
				f.logDecision(now, client, q.host, dt)
			}
		}
		if d.Listed() {
			capTTL = min(capTTL, ttlUntil(d, now))
			f.logDecision(now, client, q.host, d)
		}
	}
	limit := 0xFFFF
	if p == protoUDP {
		limit = 512
		if q.edns {
			limit = min(max(int(q.udpSize), 512), ednsSize)
		}
	}
	f.m.count(p, verdictAllow, reason)
	return e.appendAnswer(s.out[:0], pkt, q, now.UnixNano(), stale, f.s.staleTTL, capTTL, limit)
}

// flight is one upstream resolution shared by every query for its key.
type flight struct {
	done chan struct{}
	e    *entry
	err  error
}

// lookup starts (or joins) the resolution of q through route.
func (f *Filter) lookup(q *query, route *pool) *flight {
	key := string(q.key)
	f.flightMu.Lock()
	if fl, ok := f.flights[key]; ok {
		f.flightMu.Unlock()
		return fl
	}
	fl := &flight{done: make(chan struct{})}
	f.flights[key] = fl
	f.flightMu.Unlock()

	name := q.host + "."
	if q.host == "" {
		name = "."
	}
	qtype, qclass, do, cd, nameLen := q.qtype, q.qclass, q.do, q.flags&flagCD != 0, q.nameLen
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		ctx, cancel := context.WithTimeout(f.ctx, f.resolveTimeout)
		defer cancel()
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		m.Question[0].Qclass = qclass
		m.CheckingDisabled = cd
		m.SetEdns0(ednsSize, do)
		r, err := route.exchange(ctx, m)
		if err == nil {
			if !f.s.KeepECH {
				stripECH(r)
			}
			e, cacheable := newEntry(r, name, f.s, f.s.Clock().UnixNano())
			switch {
			case e == nil:
				err = errWire
			case !bytes.Equal(e.wire[headerLen:headerLen+nameLen], []byte(key[:nameLen])):
				// The packed question differs from the query's name: it
				// cannot be patched, so it is not used.
				err = errWire
			default:
				fl.e = e
				if cacheable && f.cache != nil {
					f.cache.put(key, e)
				}
			}
		}
		fl.err = err
		f.flightMu.Lock()
		delete(f.flights, key)
		f.flightMu.Unlock()
		close(fl.done)
	}()
	return fl
}

// stripECH removes the ech parameter from HTTPS and SVCB records.
func stripECH(m *dns.Msg) {
	for _, sec := range [][]dns.RR{m.Answer, m.Extra} {
		for _, rr := range sec {
			var v *[]dns.SVCBKeyValue
			switch r := rr.(type) {
			case *dns.HTTPS:
				v = &r.Value
			case *dns.SVCB:
				v = &r.Value
			default:
				continue
			}
			kept := (*v)[:0]
			for _, kv := range *v {
				if kv.Key() != dns.SVCB_ECHCONFIG {
					kept = append(kept, kv)
				}
			}
			*v = kept
		}
	}
}
