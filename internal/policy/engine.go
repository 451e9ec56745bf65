package policy

import "time"

// Policy is a compiled policy. The zero value is not usable; see New.
type Policy struct {
	// implementation: see the engine issue
}

// New compiles spec. It reports the first inconsistency it finds (an
// unknown group, schedule, service or category in a rule, an invalid
// domain); the config package validates beforehand and reports every
// problem with its position.
func New(spec Spec) (*Policy, error) { panic("unimplemented") }

// WithGrants returns a policy identical to p whose grant snapshot is g. It
// shares p's compiled matcher and does not recompile anything. Grants whose
// services are unknown are ignored.
func (p *Policy) WithGrants(g []Grant) *Policy { panic("unimplemented") }

// Grants returns the grant snapshot (do not modify it).
func (p *Policy) Grants() []Grant { panic("unimplemented") }

// Decide answers q. It never allocates for ASCII host names.
func (p *Policy) Decide(q Query) Decision { panic("unimplemented") }

// Location returns the zone the policy's windows are read in.
func (p *Policy) Location() *time.Location { panic("unimplemented") }

// DomainCount returns the number of listed domain entries compiled.
func (p *Policy) DomainCount() int { panic("unimplemented") }

// ServiceIDs returns the ids of every listed service, sorted.
func (p *Policy) ServiceIDs() []string { panic("unimplemented") }

// LookupService returns the service with this id.
func (p *Policy) LookupService(id string) (Service, bool) { panic("unimplemented") }

// NormalizeHost returns the canonical form of a host name: lower case, one
// trailing dot removed, IDN converted to punycode; IP literals (bracketed
// or not) come back as netip's canonical text. It rejects invalid names.
func NormalizeHost(host string) (string, error) { panic("unimplemented") }

// ParseWindow parses "DAYS HH:MM[:SS]-HH:MM[:SS]". DAYS is a day
// ("mon"), a range ("mon-fri", "fri-mon" wraps), a comma list of those
// ("mon,wed,fri-sat"), or "*" / "daily" for every day. An end at or before
// the start crosses midnight; "24:00" is accepted as an end.
func ParseWindow(s string) (Window, error) { panic("unimplemented") }
