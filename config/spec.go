package config

import (
	"fmt"
	"slices"
	"sort"
	"sync"

	"github.com/balise-net/balise/internal/policy"
)

// Spec builds the engine's input: the catalog's services (minus disabled
// services and categories, plus the opted-in extra, shared and copyleft
// domains), the [[list]]s (inline domains, the files read by Load, the
// cached copies of URLs), the canaries, groups, schedules (the windows
// Parse already parsed) and rules. It reads cached list copies but never
// writes a file; it records each service's first domain for ServiceHosts.
func (c *Config) Spec() (policy.Spec, error) {
	spec := policy.Spec{Location: c.Location, DefaultAction: verdict(c.DefaultAction)}
	if spec.Location == nil {
		spec.Location = defaultLocation()
	}
	spec.Services = c.catalogServices()
	// Rules may name a catalog category that [catalog] turns off: they
	// then match nothing, and turning a category off needs no rule edit.
	spec.Categories = slices.Clone(c.catalog().Categories)
	for _, l := range c.Lists {
		doms := slices.Concat(l.Domains, l.fileDomains)
		for _, u := range l.URLs {
			cached, err := readCachedURL(c.ListCache.CacheDir, l.Name, u)
			if err != nil {
				return policy.Spec{}, fmt.Errorf("list %q: %w", l.Name, err)
			}
			doms = append(doms, cached...)
		}
		if l.Allow {
			spec.AllowHosts = append(spec.AllowHosts, doms...)
			continue
		}
		spec.Services = append(spec.Services, policy.Service{
			ID: l.Name, Name: l.DisplayName, Category: l.Category, Domains: dedup(doms),
		})
	}
	spec.AllowHosts = dedup(spec.AllowHosts)
	if c.BlockCanaries {
		spec.Canaries = slices.Clone(c.catalog().Canaries)
	}
	for _, g := range c.Groups {
		spec.Groups = append(spec.Groups, policy.Group{
			Name: g.Name, Networks: slices.Clone(g.Networks),
			DirectoryGroups: slices.Clone(g.DirectoryGroups), Users: slices.Clone(g.Users),
		})
	}
	for _, s := range c.Schedules {
		spec.Schedules = append(spec.Schedules, policy.Schedule{Name: s.Name, Windows: slices.Clone(s.Parsed)})
	}
	for _, r := range c.Rules {
		spec.Rules = append(spec.Rules, policy.Rule{
			Name: r.Name, Groups: slices.Clone(r.Groups), Services: slices.Clone(r.Services),
			Categories: slices.Clone(r.Categories), During: slices.Clone(r.During),
			Action: verdict(r.Action), Report: r.Mode == "report",
		})
	}
	c.hosts.set(spec.Services)
	return spec, nil
}

// serviceHosts keeps the first domain of each listed service, as the last
// Spec of a Config found them.
type serviceHosts struct {
	mu sync.Mutex
	m  map[string]string
}

// set records the first domain of each service (nil h: nothing).
func (h *serviceHosts) set(services []policy.Service) {
	if h == nil {
		return
	}
	m := make(map[string]string, len(services))
	for _, s := range services {
		if len(s.Domains) > 0 {
			m[s.ID] = s.Domains[0]
		}
	}
	h.mu.Lock()
	h.m = m
	h.mu.Unlock()
}

// ServiceHosts maps each listed service id to its first domain, as the
// last Spec (or Compile) of c built them: the portal decides on it to
// show a caller what it may reach. It reads nothing: nil before the first
// Spec, and for a Config not made by Load, Parse or Default. Callers must
// not modify the map.
func (c *Config) ServiceHosts() map[string]string {
	if c.hosts == nil {
		return nil
	}
	c.hosts.mu.Lock()
	defer c.hosts.mu.Unlock()
	return c.hosts.m
}

// Compile builds the engine: policy.New(c.Spec()).
func (c *Config) Compile() (*policy.Policy, error) {
	spec, err := c.Spec()
	if err != nil {
		return nil, err
	}
	return policy.New(spec)
}

func verdict(action string) policy.Verdict {
	if action == "allow" {
		return policy.Allow
	}
	return policy.Block
}

// catalogServices returns the catalog's services as configured by
// [catalog]. Services left without any domain are left out.
func (c *Config) catalogServices() []policy.Service {
	cat := c.catalog()
	sharedAll := slices.Contains(c.Catalog.SharedInfrastructure, "*")
	var out []policy.Service
	for i := range cat.Services {
		s := &cat.Services[i]
		if !c.catalogEnabled(s) {
			continue
		}
		doms := slices.Clone(s.Domains)
		if c.Catalog.ExtraDomains {
			doms = append(doms, s.Extra...)
		}
		if c.Catalog.CopyleftEntries {
			doms = append(doms, s.Copyleft...)
		}
		if sharedAll || slices.ContainsFunc(c.Catalog.SharedInfrastructure, func(id string) bool {
			cs, ok := cat.service(id)
			return ok && cs.ID == s.ID
		}) {
			doms = append(doms, s.Shared...)
		}
		if len(doms) == 0 {
			continue
		}
		out = append(out, policy.Service{
			ID: s.ID, Name: s.Name, Category: s.Category, Domains: dedup(doms),
			Exceptions: slices.Clone(s.Exceptions), CNAMETargets: slices.Clone(s.CNAMETargets),
		})
	}
	return out
}

// catalogEnabled reports whether [catalog] keeps the service.
func (c *Config) catalogEnabled(s *catalogService) bool {
	if slices.Contains(c.Catalog.CategoriesOff, s.Category) {
		return false
	}
	cat := c.catalog()
	named := func(ids []string) bool {
		return slices.ContainsFunc(ids, func(id string) bool {
			cs, ok := cat.service(id)
			return ok && cs.ID == s.ID
		})
	}
	if named(c.Catalog.Disable) {
		return false
	}
	return !s.Optional || named(c.Catalog.Enable)
}

// dedup sorts and removes duplicates (the engine rejects nothing for
// duplicates, but they waste memory).
func dedup(ss []string) []string {
	if len(ss) == 0 {
		return nil
	}
	out := slices.Clone(ss)
	sort.Strings(out)
	return slices.Compact(out)
}

// references knows the services and categories rules may name.
type references struct {
	services   map[string]string // id or alias -> id, for listed services
	disabled   map[string]string // id or alias -> why it is not listed
	categories map[string]bool   // categories with at least one service
	allCats    map[string]bool   // every catalog category
}

func (c *Config) references() *references {
	cat := c.catalog()
	r := &references{services: map[string]string{"*": "*"}, disabled: map[string]string{}, categories: map[string]bool{"*": true}, allCats: map[string]bool{}}
	listed := map[string]bool{}
	for _, s := range c.catalogServices() {
		listed[s.ID] = true
		r.categories[s.Category] = true
	}
	for _, name := range cat.Categories {
		r.allCats[name] = true
	}
	for i := range cat.Services {
		s := &cat.Services[i]
		names := append([]string{s.ID}, s.Aliases...)
		for _, n := range names {
			switch {
			case listed[s.ID]:
				r.services[n] = s.ID
			case s.Optional && !slices.Contains(c.Catalog.Enable, n) && !slices.Contains(c.Catalog.Enable, s.ID):
				r.disabled[n] = fmt.Sprintf("service %q is optional: name it in [catalog] enable", n)
			case !c.catalogEnabled(s):
				r.disabled[n] = fmt.Sprintf("service %q is not listed: [catalog] disables it or its category", n)
			default:
				r.disabled[n] = fmt.Sprintf("service %q lists no domain unless [catalog] copyleft_entries = true", n)
			}
		}
	}
	for _, l := range c.Lists {
		if l.Allow {
			r.disabled[l.Name] = fmt.Sprintf("list %q is an allow list, not a service", l.Name)
			continue
		}
		r.services[l.Name] = l.Name
		if l.Category != "" {
			r.categories[l.Category] = true
		}
	}
	return r
}

// service checks a service reference of a rule ("" = fine).
func (r *references) service(id string) string {
	if _, ok := r.services[id]; ok {
		return ""
	}
	if why, ok := r.disabled[id]; ok {
		return why
	}
	return fmt.Sprintf("unknown service %q", id)
}

// canonical maps an alias to its service id.
func (r *references) canonical(id string) string {
	if c, ok := r.services[id]; ok {
		return c
	}
	return id
}

func (r *references) category(name string) string {
	if r.categories[name] || r.allCats[name] {
		return ""
	}
	return fmt.Sprintf("unknown category %q", name)
}
