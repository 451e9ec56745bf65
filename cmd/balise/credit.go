package main

import (
	"net/netip"

	"github.com/balise-net/balise/config"
	"github.com/balise-net/balise/internal/exceptions"
	"github.com/balise-net/balise/internal/policy"
)

// creditWiring resolves the configuration's [[credit]] tables against the
// policy in force for the register (break credit).
type creditWiring struct{ rt *runtime }

// plan resolves one credit: the ids of the services it covers.
func (cw creditWiring) plan(pol *policy.Policy, cr config.Credit) exceptions.CreditPlan {
	p := exceptions.CreditPlan{Name: cr.Name, Minutes: cr.Minutes, Per: cr.Per}
	for _, id := range pol.ServiceIDs() {
		if s, ok := pol.LookupService(id); ok && cr.Covers(s) {
			p.Services = append(p.Services, id)
		}
	}
	return p
}

// plans returns every configured credit, resolved.
func (cw creditWiring) plans() []exceptions.CreditPlan {
	cfg, pol := cw.rt.config(), cw.rt.policy.Load()
	out := make([]exceptions.CreditPlan, 0, len(cfg.Credits))
	for _, cr := range cfg.Credits {
		out = append(out, cw.plan(pol, cr))
	}
	return out
}

// groups returns the Balise groups of client and user (directory groups
// as the identity binding knows them).
func (cw creditWiring) groups(pol *policy.Policy, client netip.Addr, user string) []string {
	q := policy.Query{Client: client, User: user}
	if id := cw.rt.identity; id != nil && user != "" {
		if u, g, ok := id.Bound(client, cw.rt.now()); ok && u == user {
			q.Groups = g
		}
	}
	return pol.GroupsOf(q)
}

// covering returns the credits of client and user that cover service.
func (cw creditWiring) covering(client netip.Addr, user, service string) []exceptions.CreditPlan {
	cfg, pol := cw.rt.config(), cw.rt.policy.Load()
	if len(cfg.Credits) == 0 {
		return nil
	}
	s, ok := pol.LookupService(service)
	if !ok {
		return nil
	}
	var out []exceptions.CreditPlan
	for _, cr := range cfg.CreditFor(s, cw.groups(pol, client, user)) {
		out = append(out, cw.plan(pol, cr))
	}
	return out
}

// of returns every credit of client and user.
func (cw creditWiring) of(client netip.Addr, user string) []exceptions.CreditPlan {
	cfg, pol := cw.rt.config(), cw.rt.policy.Load()
	if len(cfg.Credits) == 0 {
		return nil
	}
	groups := cw.groups(pol, client, user)
	var out []exceptions.CreditPlan
	for _, cr := range cfg.Credits {
		for _, g := range cr.Groups {
			if g == "*" || contains(groups, g) {
				out = append(out, cw.plan(pol, cr))
				break
			}
		}
	}
	return out
}

// userOf returns the user bound to client ("" without identity).
func (cw creditWiring) userOf(client netip.Addr) string {
	if id := cw.rt.identity; id != nil {
		if u, _, ok := id.Bound(client, cw.rt.now()); ok {
			return u
		}
	}
	return ""
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
