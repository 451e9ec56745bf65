package config

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"time"

	"github.com/balise-net/balise/internal/policy"
)

// nameRE is the syntax of group, schedule, list and rule names.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// name reads a required, unique name of a [[kind]] table.
func (p *parser) name(t *tbl, kind string, seen map[string]string) string {
	n := t.str("name", "")
	switch {
	case !t.has("name") || n == "":
		p.keyErr(t.path, "%s has no name", kind)
		return ""
	case !nameRE.MatchString(n):
		p.valueErr(t.key("name"), "invalid name %q (letters, digits, '-', '_' and '.'; at most 64)", n)
		return ""
	case seen[n] != "":
		p.valueErr(t.key("name"), "duplicate %s name %q (first defined at %s)", kind, n, seen[n])
		return ""
	}
	seen[n] = p.where(t.path)
	return n
}

// where describes a key's location for cross-references in messages.
func (p *parser) where(key string) string {
	if at, ok := p.pos.key[key]; ok {
		return fmt.Sprintf("line %d", at.line)
	}
	return key
}

func (p *parser) groups(ts []*tbl) []Group {
	seen := map[string]string{}
	var out []Group
	for _, t := range ts {
		g := Group{Name: p.name(t, "group", seen)}
		g.Networks, _ = p.prefixes(t, "networks")
		g.DirectoryGroups, _ = t.strs("directory_groups")
		g.Users, _ = t.strs("users")
		if len(g.Networks) == 0 && len(g.DirectoryGroups) == 0 && len(g.Users) == 0 &&
			!t.has("networks") && !t.has("directory_groups") && !t.has("users") {
			p.keyErr(t.path, "group %shas no networks, directory_groups or users", quoteSpace(g.Name))
		}
		t.finish()
		if g.Name != "" {
			out = append(out, g)
		}
	}
	return out
}

func (p *parser) schedules(ts []*tbl) []Schedule {
	seen := map[string]string{}
	var out []Schedule
	for _, t := range ts {
		s := Schedule{Name: p.name(t, "schedule", seen)}
		ws, ok := t.strs("windows")
		if !ok || len(ws) == 0 {
			p.keyErr(t.path, "schedule %shas no windows", quoteSpace(s.Name))
		}
		for i, w := range ws {
			pw, err := policy.ParseWindow(w)
			if err != nil {
				msg := err.Error()
				if !strings.Contains(msg, w) {
					msg = fmt.Sprintf("invalid window %q: %s", w, msg)
				}
				p.valueErr(fmt.Sprintf("%s[%d]", t.key("windows"), i), "%s", msg)
				continue
			}
			s.Windows = append(s.Windows, w)
			s.Parsed = append(s.Parsed, pw)
		}
		t.finish()
		if s.Name != "" {
			out = append(out, s)
		}
	}
	return out
}

func (p *parser) lists(ts []*tbl) []List {
	seen := map[string]string{}
	cat := p.catalog()
	var out []List
	for _, t := range ts {
		l := List{Name: p.name(t, "list", seen)}
		if _, clash := cat.service(l.Name); clash && l.Name != "" {
			p.valueErr(t.key("name"), "%q is a catalog service; give the list its own name", l.Name)
			l.Name = ""
		}
		l.DisplayName = t.str("display_name", "")
		l.Allow = t.boolean("allow", false)
		l.Category = t.str("category", "")
		switch {
		case l.Allow && l.Category != "":
			p.valueErr(t.key("category"), "an allow list has no category")
		case !l.Allow && l.Category == "":
			p.keyErr(t.path, "list %sneeds a category (or allow = true)", quoteSpace(l.Name))
		case !l.Allow && !nameRE.MatchString(l.Category):
			p.valueErr(t.key("category"), "invalid category %q", l.Category)
		}
		doms, _ := t.strs("domains")
		for i, d := range doms {
			n, err := normalizeDomain(d)
			if err != nil {
				p.valueErr(fmt.Sprintf("%s[%d]", t.key("domains"), i), "%v", err)
				continue
			}
			l.Domains = append(l.Domains, n)
		}
		files, _ := t.strs("files")
		for i, f := range files {
			abs := p.resolve(f)
			l.Files = append(l.Files, abs)
			doms, probs, err := readListFile(abs)
			if err != nil {
				p.valueErr(fmt.Sprintf("%s[%d]", t.key("files"), i), "%v", err)
				continue
			}
			for _, pr := range probs {
				p.fileErr(abs, pr.Line, "%s", pr.Msg)
			}
			l.fileDomains = append(l.fileDomains, doms...)
		}
		urls, _ := t.strs("urls")
		for i, u := range urls {
			if err := checkListURL(u); err != nil {
				p.valueErr(fmt.Sprintf("%s[%d]", t.key("urls"), i), "%v", err)
				continue
			}
			l.URLs = append(l.URLs, u)
		}
		l.Refresh = t.duration("refresh", 24*time.Hour)
		if l.Refresh < time.Minute && t.has("refresh") {
			p.valueErr(t.key("refresh"), "must be at least 1m")
			l.Refresh = 24 * time.Hour
		}
		l.SHA256 = strings.ToLower(t.str("sha256", ""))
		if l.SHA256 != "" {
			if !isHex(l.SHA256, 64) {
				p.valueErr(t.key("sha256"), "must be 64 hexadecimal digits")
			} else if len(urls) != 1 {
				p.valueErr(t.key("sha256"), "pins the content of one URL; the list has %d", len(urls))
			}
		}
		if !t.has("domains") && !t.has("files") && !t.has("urls") {
			p.keyErr(t.path, "list %shas no domains, files or urls", quoteSpace(l.Name))
		}
		t.finish()
		if l.Name != "" {
			out = append(out, l)
		}
	}
	return out
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// rules reads [[rule]]s and checks their references against c, whose
// groups, schedules and lists are already read.
func (p *parser) rules(ts []*tbl, c *Config) []Rule {
	seen := map[string]string{}
	groups := map[string]bool{"*": true}
	for _, g := range c.Groups {
		groups[g.Name] = true
	}
	schedules := map[string]bool{}
	for _, s := range c.Schedules {
		schedules[s.Name] = true
	}
	refs := c.references()
	var out []Rule
	for _, t := range ts {
		r := Rule{Name: p.name(t, "rule", seen)}
		var defined int
		check := func(k string, known func(string) string) []string {
			vals, ok := t.strs(k)
			if !ok {
				return nil
			}
			defined++
			if len(vals) == 0 {
				p.valueErr(t.key(k), "is empty; leave the key out or write [\"*\"] for all")
			}
			for i, v := range vals {
				if msg := known(v); msg != "" {
					p.valueErr(fmt.Sprintf("%s[%d]", t.key(k), i), "%s", msg)
				}
			}
			return vals
		}
		r.Groups = check("groups", func(g string) string {
			if groups[g] {
				return ""
			}
			return fmt.Sprintf("unknown group %q", g)
		})
		r.Services = check("services", refs.service)
		for i, s := range r.Services {
			r.Services[i] = refs.canonical(s)
		}
		r.Categories = check("categories", refs.category)
		r.During = check("during", func(s string) string {
			if schedules[s] {
				return ""
			}
			return fmt.Sprintf("unknown schedule %q", s)
		})
		if defined == 0 {
			p.keyErr(t.path, `empty rule: it names no groups, services, categories nor during (write groups = ["*"] to apply it to everyone)`)
		}
		if !t.has("action") {
			p.keyErr(t.path, `rule %shas no action ("allow" or "block")`, quoteSpace(r.Name))
		} else {
			r.Action = t.enum("action", "", "allow", "block")
		}
		r.Mode = t.enum("mode", "enforce", "enforce", "report")
		t.finish()
		out = append(out, r)
	}
	return out
}

// normalizeDomain checks and normalizes a domain entry of the config: a
// host name (not an IP address, no wildcard).
func normalizeDomain(s string) (string, error) {
	if strings.HasPrefix(s, "*.") {
		return "", fmt.Errorf("invalid domain %q: write %q, an entry covers its subdomains", s, s[2:])
	}
	n, err := normalizeHost(s)
	if err != nil {
		return "", fmt.Errorf("invalid domain %q", s)
	}
	if _, err := netip.ParseAddr(n); err == nil {
		return "", fmt.Errorf("%q is an IP address, not a domain", s)
	}
	return n, nil
}

// normalizeHost is policy.NormalizeHost, the one normalization of
// Balise.
func normalizeHost(s string) (string, error) {
	return policy.NormalizeHost(s)
}

// quoteSpace returns the quoted name and a space, or nothing for "".
func quoteSpace(name string) string {
	if name == "" {
		return ""
	}
	return fmt.Sprintf("%q ", name)
}
