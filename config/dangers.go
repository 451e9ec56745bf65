package config

import (
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"

	"golang.org/x/net/publicsuffix"

	"github.com/balise-net/balise/internal/policy"
)

// Policies that are valid but dangerous: `check` warns about them (and
// fails with --strict). They are looked for only in a configuration
// without errors, whose tables and values line up with its sections.

// largeV4Bits and largeV6Bits bound the networks a rule may open the
// bypass category to without a warning: a prefix shorter than these
// (wider than a /16 or a /48) is "a large group".
const (
	largeV4Bits = 16
	largeV6Bits = 48
)

// checkDangers warns about dangerous policies in c.
func (p *parser) checkDangers(c *Config) {
	p.checkSuffixes(c)
	p.checkEmptyWindows(c)
	p.checkNobodyGroups(c)
	p.checkRuleOrder(c)
	p.checkBypassGroups(c)
}

// publicSuffixOf reports why listing name would list a whole namespace:
// it is a single label (a top-level domain, as a hosts-file typo gives)
// or a public suffix of the ICANN section of the Public Suffix List
// ("com", "qc.ca", "co.uk"). Names of the private section (blogspot.com,
// github.io) are services of their own and pass.
func publicSuffixOf(name string) (string, bool) {
	if !strings.Contains(name, ".") {
		return fmt.Sprintf("%q is a top-level domain: it lists every name under .%s", name, name), true
	}
	if ps, icann := publicSuffix(name); icann && ps == name {
		return fmt.Sprintf("%q is a public suffix: it lists every site registered under .%s", name, name), true
	}
	return "", false
}

func publicSuffix(name string) (string, bool) {
	return publicsuffix.PublicSuffix(name)
}

// checkSuffixes warns about [[list]] entries that are public suffixes or
// bare top-level domains, inline or in list files (with the file's line).
func (p *parser) checkSuffixes(c *Config) {
	for i, l := range c.Lists {
		if l.Allow {
			continue
		}
		for j, d := range l.Domains {
			if msg, bad := publicSuffixOf(d); bad {
				p.warn(fmt.Sprintf("list[%d].domains[%d]", i, j), "%s", msg)
			}
		}
		var suspects []string
		for _, d := range l.fileDomains {
			if _, bad := publicSuffixOf(d); bad && !slices.Contains(suspects, d) {
				suspects = append(suspects, d)
			}
		}
		for _, d := range suspects {
			msg, _ := publicSuffixOf(d)
			file, line := listFileLine(l.Files, d)
			pr := Problem{File: file, Line: line, Msg: fmt.Sprintf("list %q: %s", l.Name, msg), Warning: true}
			if line > 0 {
				pr.Col = 1
			}
			p.warnings = append(p.warnings, pr)
		}
	}
}

// listFileLine finds the first file and line of files that lists name.
func listFileLine(files []string, name string) (string, int) {
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for n, line := range strings.Split(string(data), "\n") {
			doms, err := parseListLine(line)
			if err == nil && slices.Contains(doms, name) {
				return f, n + 1
			}
		}
	}
	if len(files) > 0 {
		return files[0], 0
	}
	return "", 0
}

// checkEmptyWindows warns about windows whose start equals their end:
// they last a whole day, which is rarely what was meant.
func (p *parser) checkEmptyWindows(c *Config) {
	for i, s := range c.Schedules {
		for j, w := range s.Parsed {
			if w.Start == w.End {
				p.warn(fmt.Sprintf("schedule[%d].windows[%d]", i, j),
					"window %q starts when it ends: it lasts 24 hours, not zero (write the real end, or leave the window out)", s.Windows[j])
			}
		}
	}
}

// checkNobodyGroups warns about groups no client can belong to: none of
// their networks overlaps the clients a front-end accepts, and they name
// no user or directory group the proxy could learn (authentication off,
// or directory groups without [directory]).
func (p *parser) checkNobodyGroups(c *Config) {
	var clients []netip.Prefix
	if len(c.DNS.Listen) > 0 {
		clients = append(clients, c.DNS.AllowedClients...)
	}
	if len(c.Proxy.Listen) > 0 || len(c.Proxy.TransparentHTTP) > 0 || len(c.Proxy.TransparentHTTPS) > 0 {
		clients = append(clients, c.Proxy.AllowedClients...)
	}
	if len(clients) == 0 {
		return // no front-end: nothing to compare with (a file for explain)
	}
	auth := c.Proxy.Auth.Mode == "negotiate"
	for i, g := range c.Groups {
		if auth && (len(g.Users) > 0 || len(g.DirectoryGroups) > 0 && c.Directory != nil) {
			continue
		}
		if slices.ContainsFunc(g.Networks, func(n netip.Prefix) bool {
			return slices.ContainsFunc(clients, n.Overlaps)
		}) {
			continue
		}
		why := "it has no network"
		if len(g.Networks) > 0 {
			why = "its networks are outside dns.allowed_clients and proxy.allowed_clients"
		}
		if len(g.Users) > 0 || len(g.DirectoryGroups) > 0 {
			why += ", and users and directory groups are known only with [proxy.auth] mode = \"negotiate\" (directory groups with [directory] too)"
		}
		p.warn(fmt.Sprintf("group[%d]", i), "group %q matches nobody: %s", g.Name, why)
	}
}

// ruleScope is what a rule reaches, for the order check.
type ruleScope struct {
	everyone bool
	groups   []string
	services map[string]bool
}

// scopes computes every rule's scope against c's listed services.
func (c *Config) scopes() []ruleScope {
	type svc struct{ id, category string }
	var all []svc
	for _, s := range c.catalogServices() {
		all = append(all, svc{s.ID, s.Category})
	}
	for _, l := range c.Lists {
		if !l.Allow {
			all = append(all, svc{l.Name, l.Category})
		}
	}
	out := make([]ruleScope, len(c.Rules))
	for i, r := range c.Rules {
		sc := ruleScope{everyone: len(r.Groups) == 0 || slices.Contains(r.Groups, "*"), groups: r.Groups, services: map[string]bool{}}
		anyService := len(r.Services) == 0 && len(r.Categories) == 0 || slices.Contains(r.Services, "*") || slices.Contains(r.Categories, "*")
		for _, s := range all {
			switch {
			case slices.Contains(r.Services, s.id), slices.Contains(r.Categories, s.category):
				sc.services[s.id] = true
			case anyService && s.category != policy.BypassCategory:
				sc.services[s.id] = true
			}
		}
		out[i] = sc
	}
	return out
}

// checkRuleOrder warns about rules that can never match: an earlier
// enforcing rule without during reaches all of their clients and
// services, so it always decides first.
func (p *parser) checkRuleOrder(c *Config) {
	sc := c.scopes()
	for j, later := range c.Rules {
		if len(sc[j].services) == 0 {
			continue
		}
		for i := range j {
			earlier := c.Rules[i]
			if earlier.Mode == "report" || len(earlier.During) > 0 {
				continue
			}
			if !sc[i].everyone && (sc[j].everyone || !subset(sc[j].groups, sc[i].groups)) {
				continue
			}
			covered := true
			for s := range sc[j].services {
				if !sc[i].services[s] {
					covered = false
					break
				}
			}
			if covered {
				p.warn(fmt.Sprintf("rule[%d]", j), "rule %q can never match: rule %q before it always decides first for its groups and services", later.Name, earlier.Name)
				break
			}
		}
	}
}

func subset(a, b []string) bool {
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
}

// checkBypassGroups warns about rules that allow the bypass category (doh)
// to a large group: everyone, or a group with a network wider than a /16
// (IPv6: a /48).
func (p *parser) checkBypassGroups(c *Config) {
	sc := c.scopes()
	bypass := map[string]bool{}
	for _, s := range c.catalogServices() {
		if s.Category == policy.BypassCategory {
			bypass[s.ID] = true
		}
	}
	for _, l := range c.Lists {
		if !l.Allow && l.Category == policy.BypassCategory {
			bypass[l.Name] = true
		}
	}
	for i, r := range c.Rules {
		if r.Action != "allow" || r.Mode == "report" {
			continue
		}
		lifts := false
		for s := range sc[i].services {
			lifts = lifts || bypass[s]
		}
		if !lifts {
			continue
		}
		if sc[i].everyone {
			p.warn(fmt.Sprintf("rule[%d]", i), "rule %q lets everyone use public DNS-over-HTTPS resolvers, which get round Balise: name a small group", r.Name)
			continue
		}
		for _, g := range c.Groups {
			if !slices.Contains(r.Groups, g.Name) {
				continue
			}
			for _, n := range g.Networks {
				if n.Addr().Is4() && n.Bits() < largeV4Bits || n.Addr().Is6() && n.Bits() < largeV6Bits {
					p.warn(fmt.Sprintf("rule[%d]", i), "rule %q lets group %q (%s, wider than a /%d) use public DNS-over-HTTPS resolvers, which get round Balise: name a small group",
						r.Name, g.Name, n, map[bool]int{true: largeV4Bits, false: largeV6Bits}[n.Addr().Is4()])
					break
				}
			}
		}
	}
}
