package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
)

// Reloadable settings. New keeps the Options it was given (p.opts, with
// defaults) for what is wired once: the policy pointer, the logger, the
// metrics, the dialer and transport, the HTTP servers' limits and the
// transparent mode. Everything else the hot path reads through p.cfg(),
// an atomic pointer that Reconfigure swaps, so that a reload applies to
// the next request or connection without a restart.
//
// A field of Options is reloadable when its readers use p.cfg().Field
// rather than p.opts.Field; nothing else is needed, since settings embeds
// a whole Options. A field that must stay as New saw it is listed in
// keepFromStart. A field that needs a derived form (a set, a cache) adds
// it to settings and computes it in newSettings.

// settings are the proxy settings in force: the Options (defaults
// applied, the start-only fields as New saw them) and what is derived
// from them. A settings value is never modified once published.
type settings struct {
	Options
	// ports is ConnectPorts as a set.
	ports map[uint16]bool
}

// cfg returns the settings in force.
func (p *Proxy) cfg() *settings { return p.live.Load() }

// keepFromStart copies into o the fields that only New applies: the
// wiring, the dialer and transport (Resolver, DialTimeout, Parent and its
// credentials), the HTTP servers' limits (timeouts, header size) and the
// transparent mode. A change to them takes effect at the next restart.
func keepFromStart(o *Options, start *Options) {
	o.Policy = start.Policy
	o.Logger = start.Logger
	o.Registerer = start.Registerer
	o.Decisions = start.Decisions
	o.Clock = start.Clock
	o.Resolver = start.Resolver
	o.DialTimeout = start.DialTimeout
	o.Parent = start.Parent
	o.ParentCredentialsFile = start.ParentCredentialsFile
	o.IdleTimeout = start.IdleTimeout
	o.HeaderTimeout = start.HeaderTimeout
	o.MaxHeaderBytes = start.MaxHeaderBytes
	o.TPROXY = start.TPROXY
	o.OriginalDestination = start.OriginalDestination
	o.Exceptions = start.Exceptions
	o.Auth = start.Auth
	o.ServiceHosts = nil // SetServiceHosts
}

// newSettings validates o (defaults already applied) and derives what the
// hot path needs.
func newSettings(o Options) (*settings, error) {
	s := &settings{Options: o, ports: make(map[uint16]bool, len(o.ConnectPorts))}
	for _, port := range o.ConnectPorts {
		if port == 0 {
			return nil, errors.New("connect ports: 0 is not a port")
		}
		s.ports[port] = true
	}
	for _, n := range o.AllowedClients {
		if !n.IsValid() {
			return nil, errors.New("allowed clients: invalid network")
		}
	}
	return s, nil
}

// Reconfigure applies a reloaded configuration: it validates o, then puts
// it in force for every later request and connection, all fields at once.
// The fields Options documents as fixed at start (the policy pointer,
// logger, registerer, decision log, clock, Resolver, DialTimeout, Parent,
// ParentCredentialsFile, IdleTimeout, HeaderTimeout, MaxHeaderBytes,
// TPROXY, OriginalDestination, Exceptions) keep the values New was given;
// ServiceHosts has SetServiceHosts.
//
// The institution's CA follows o.CA: a different CA signs the next
// block-page certificates and the certificates cached under the old one
// are dropped (the same CA read again keeps the cache). Adding a CA to a
// proxy started without one, or removing it, takes a restart: the CA in
// force is kept and the rest is applied.
//
// On error the running settings are kept unchanged.
//
// Connections already open are not re-decided here: the caller calls
// Redecide once the new policy is in force too.
func (p *Proxy) Reconfigure(o Options) error {
	o.setDefaults()
	keepFromStart(&o, &p.opts)
	if (o.CA == nil) != (p.certs == nil) {
		o.CA = p.cfg().CA
	}
	s, err := newSettings(o)
	if err != nil {
		return fmt.Errorf("proxy: %w", err)
	}
	if p.certs != nil {
		old := p.cfg().CA
		if !sameCA(old, o.CA) || o.LeafValidity != p.cfg().LeafValidity || o.CertCacheSize != p.cfg().CertCacheSize {
			p.certs.reset(o.CA, o.LeafValidity, o.CertCacheSize)
		}
	}
	old := p.cfg()
	p.dests.setLists(o.DenyDestinations, o.AllowDestinations)
	p.live.Store(s)
	if !slices.Equal(old.DenyDestinations, o.DenyDestinations) || !slices.Equal(old.AllowDestinations, o.AllowDestinations) {
		// Idle origin connections were dialled under the old lists: the
		// next request must dial, and be checked, again.
		p.origins.closeAll()
	}
	return nil
}

// sameCA reports whether a and b are the same certificate and key.
func sameCA(a, b *CA) bool {
	if a == nil || b == nil {
		return a == b
	}
	if !bytes.Equal(a.cert.Raw, b.cert.Raw) {
		return false
	}
	type eq interface{ Equal(any) bool }
	ka, ok := a.signer.(eq)
	return ok && ka.Equal(b.signer)
}
