package config

import (
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/balise-net/balise/internal/policy"
)

// Credit is one [[credit]]: the members of Groups may spend Minutes of
// the covered services (Services and Categories) per rolling window Per,
// in breaks they start themselves from the block page. A credit never
// covers DNS-over-HTTPS resolvers (category "doh") nor canaries.
type Credit struct {
	Name string
	// Groups whose members have the credit; "*" is everyone. Required.
	Groups []string
	// Services (canonical ids) and Categories covered; "*" in Categories
	// is every service but those of category "doh". At least one is
	// required.
	Services   []string
	Categories []string
	// Minutes is the time that may be spent per window (key "minutes",
	// a number of minutes, fractions allowed; default 30).
	Minutes time.Duration
	// Per is the rolling window (default "12h"); spent minutes are kept
	// this long, then forgotten.
	Per time.Duration
}

// Default credit values, in one place.
const (
	defaultCreditMinutes = 30 * time.Minute
	defaultCreditPer     = 12 * time.Hour
)

// Covers reports whether the credit covers service s (never a service of
// category "doh").
func (cr *Credit) Covers(s policy.Service) bool {
	if s.Category == policy.BypassCategory {
		return false
	}
	return slices.Contains(cr.Services, s.ID) || slices.Contains(cr.Categories, s.Category) || slices.Contains(cr.Categories, "*")
}

// CreditFor returns the credits that cover service s and apply to one of
// groups (a client's Balise group names), in definition order.
func (c *Config) CreditFor(s policy.Service, groups []string) []Credit {
	var out []Credit
	for _, cr := range c.Credits {
		if !cr.Covers(s) {
			continue
		}
		if slices.Contains(cr.Groups, "*") || slices.ContainsFunc(cr.Groups, func(g string) bool { return slices.Contains(groups, g) }) {
			out = append(out, cr)
		}
	}
	return out
}

// credits reads the [[credit]] tables; c's groups and lists are read.
func (p *parser) credits(ts []*tbl, c *Config) []Credit {
	seen := map[string]string{}
	groups := map[string]bool{"*": true}
	for _, g := range c.Groups {
		groups[g.Name] = true
	}
	refs := c.references()
	category := map[string]string{}
	for _, s := range c.catalogServices() {
		category[s.ID] = s.Category
	}
	for _, l := range c.Lists {
		category[l.Name] = l.Category
	}
	bypass := func(k string, i int, v string) bool {
		if v == policy.BypassCategory || v == "canary" || v == "canaries" {
			p.valueErr(fmt.Sprintf("%s[%d]", k, i), "a credit never covers %q: DNS-over-HTTPS resolvers and canaries stay blocked", v)
			return true
		}
		return false
	}
	var out []Credit
	for _, t := range ts {
		cr := Credit{Name: p.name(t, "credit", seen)}
		if c.Exceptions == nil {
			p.keyErr(t.path, "credit %sneeds [exceptions]: the minutes spent are kept in the register's store", quoteSpace(cr.Name))
		}
		gs, ok := t.strs("groups")
		if !ok || len(gs) == 0 {
			p.keyErr(t.path, "credit %shas no groups (write groups = [\"*\"] for everyone)", quoteSpace(cr.Name))
		}
		for i, g := range gs {
			if !groups[g] {
				p.valueErr(fmt.Sprintf("%s[%d]", t.key("groups"), i), "unknown group %q", g)
			}
		}
		cr.Groups = gs
		svcs, _ := t.strs("services")
		for i, s := range svcs {
			if bypass(t.key("services"), i, s) {
				continue
			}
			if s == "*" {
				p.valueErr(fmt.Sprintf("%s[%d]", t.key("services"), i), `"*" is not a service: write categories = ["*"] for every category but doh`)
				continue
			}
			if msg := refs.service(s); msg != "" {
				p.valueErr(fmt.Sprintf("%s[%d]", t.key("services"), i), "%s", msg)
				continue
			}
			id := refs.canonical(s)
			if category[id] == policy.BypassCategory {
				p.valueErr(fmt.Sprintf("%s[%d]", t.key("services"), i), "a credit never covers %q: it is a DNS-over-HTTPS resolver (category doh)", s)
				continue
			}
			cr.Services = append(cr.Services, id)
		}
		cats, _ := t.strs("categories")
		for i, s := range cats {
			if bypass(t.key("categories"), i, s) {
				continue
			}
			if msg := refs.category(s); msg != "" {
				p.valueErr(fmt.Sprintf("%s[%d]", t.key("categories"), i), "%s", msg)
				continue
			}
			cr.Categories = append(cr.Categories, s)
		}
		if len(svcs) == 0 && len(cats) == 0 {
			p.keyErr(t.path, "credit %scovers nothing: name services or categories", quoteSpace(cr.Name))
		}
		cr.Minutes = defaultCreditMinutes
		if v, ok := t.get("minutes"); ok {
			m := -1.0
			switch v := v.(type) {
			case int64:
				m = float64(v)
			case float64:
				m = v
			default:
				t.typeErr(t.key("minutes"), "a number of minutes", v)
			}
			if m == -1 && !isNumber(v) {
				// reported above
			} else if m <= 0 || math.IsNaN(m) || m > 7*24*60 {
				p.valueErr(t.key("minutes"), "must be more than 0 and at most a week (10080)")
			} else {
				cr.Minutes = time.Duration(m * float64(time.Minute)).Round(time.Millisecond)
			}
		}
		cr.Per = t.duration("per", defaultCreditPer)
		if cr.Per < time.Minute {
			p.valueErr(t.key("per"), "must be at least 1m")
		} else if cr.Minutes > cr.Per {
			p.valueErr(t.key("minutes"), "is longer than the window per = %s", cr.Per)
		}
		t.finish()
		out = append(out, cr)
	}
	return out
}

func isNumber(v any) bool {
	switch v.(type) {
	case int64, float64:
		return true
	}
	return false
}
