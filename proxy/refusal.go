package proxy

import (
	"net/netip"
	"time"
)

// Refusals are security events: each one is counted, and logged with its
// reason, client and destination, at most 100 lines a minute
// (decisionlog.RateBound); the rest are counted only, and the next logged
// line says how many were left out. Allowed traffic is never logged here.

// refuseConn counts a refusal of reason in mode and logs it (rate bound).
// dest is the destination as the client named it ("host:port", an
// address, or "" when unknown).
func (p *Proxy) refuseConn(mode, reason int, client netip.Addr, dest string) {
	p.m.refusals[mode][reason].Inc()
	ok, dropped := p.refusalLog.Allow(time.Now())
	if !ok {
		return
	}
	args := []any{"mode", modeNames[mode], "reason", refusalNames[reason], "client", client.String(), "destination", dest}
	if dropped > 0 {
		args = append(args, "not_logged_before", dropped)
	}
	p.opts.Logger.Warn("refused", args...)
}
