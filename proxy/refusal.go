package proxy

import (
	"net/netip"
	"sync"
	"time"
)

// Refusals are security events: each one is counted, and logged with its
// reason, client and destination, at most refusalLogBurst lines per
// refusalLogWindow (the rest are counted only, and the next logged line
// says how many were left out). Allowed traffic is never logged here.
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

// refuseConn counts a refusal of reason in mode and logs it (rate bound).
// dest is the destination as the client named it ("host:port", an
// address, or "" when unknown).
func (p *Proxy) refuseConn(mode, reason int, client netip.Addr, dest string) {
	p.m.refusals[mode][reason].Inc()
	l := &p.refusalLog
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
	args := []any{"mode", modeNames[mode], "reason", refusalNames[reason], "client", client.String(), "destination", dest}
	if dropped > 0 {
		args = append(args, "not_logged_before", dropped)
	}
	p.opts.Logger.Warn("refused", args...)
}
