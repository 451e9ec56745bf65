package dnsfilter

import (
	"net/netip"
	"strings"
	"sync"
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
// their reason, client and name, at most refusalLogBurst lines per
// refusalLogWindow; the rest are counted only, and the next logged line
// says how many were left out.
const (
	refusalLogWindow = time.Minute
	refusalLogBurst  = 100
)

// refusalLog bounds the rate of refusal log lines.
type refusalLog struct {
	mu      sync.Mutex
	start   time.Time
	n       int
	dropped int
}

// refuse counts a refusal of reason and, for reasons about the client,
// logs it (rate bound). name is the queried name ("" for a connection).
func (f *Filter) refuse(reason int, p proto, client netip.Addr, name string) {
	f.m.refusals[reason].Inc()
	if reason == refusalAny {
		return
	}
	l := &f.refusalLog
	now := time.Now()
	l.mu.Lock()
	if now.Sub(l.start) >= refusalLogWindow {
		l.start, l.n = now, 0
	}
	if l.n >= refusalLogBurst {
		l.dropped++
		l.mu.Unlock()
		return
	}
	l.n++
	dropped := l.dropped
	l.dropped = 0
	l.mu.Unlock()
	args := []any{"front", "dns", "proto", protoNames[p], "reason", refusalNames[reason], "client", client.String()}
	if name != "" {
		args = append(args, "name", strings.Clone(name))
	}
	if dropped > 0 {
		args = append(args, "not_logged_before", dropped)
	}
	f.s.Logger.Warn("refused", args...)
}
