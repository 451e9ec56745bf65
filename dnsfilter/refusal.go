package dnsfilter

import (
	"net/netip"
	"strings"
	"time"
)

// Reasons of balise_dns_refusals_total: why a query or a TCP connection
// was refused for what it is rather than for the name it asks about.
const (
	refusalClient     = iota // the client is outside AllowedClients
	refusalAny               // an ANY query, answered per RFC 8482
	refusalTCPLimit          // a TCP connection over the per-client or total limit
	refusalTCPEvicted        // an idle TCP connection closed to admit another client's
	numRefusals
)

var refusalNames = [numRefusals]string{"client", "any", "tcp_limit", "tcp_evicted"}

// Refusals are security events: each one is counted, and those about a
// client (outside AllowedClients, over the TCP limit) are logged with
// their reason, client and name, at most 100 lines a minute
// (decisionlog.RateBound); the rest are counted only, and the next logged
// line says how many were left out.

// refuse counts a refusal of reason and, for reasons about the client,
// logs it (rate bound). name is the queried name ("" for a connection).
func (f *Filter) refuse(reason int, p proto, client netip.Addr, name string) {
	f.m.refusals[reason].Inc()
	if reason == refusalAny {
		return
	}
	ok, dropped := f.refusalLog.Allow(time.Now())
	if !ok {
		return
	}
	args := []any{"front", "dns", "proto", protoNames[p], "reason", refusalNames[reason], "client", client.String()}
	if name != "" {
		args = append(args, "name", strings.Clone(name))
	}
	if dropped > 0 {
		args = append(args, "not_logged_before", dropped)
	}
	f.s.Logger.Warn("refused", args...)
}
