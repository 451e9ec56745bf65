package main

import (
	"fmt"
	"slices"
	"strings"

	"github.com/BurntSushi/toml"
)

// coverageFile is the schema of coverage.toml: services the institutions'
// policies name, with host names documented by the services' own pages or
// a permissively licensed list.
type coverageFile struct {
	Read       string            `toml:"read"`
	Categories []string          `toml:"categories"`
	Sources    map[string]string `toml:"sources"`
	Services   []coverageService `toml:"service"`
}

// coverageService adds hosts to a reference service (ID only) or
// declares a new one (ID, Name and Category).
type coverageService struct {
	ID       string   `toml:"id"`
	Name     string   `toml:"name"`
	Category string   `toml:"category"`
	Shared   []string `toml:"shared"`
	Hosts    []struct {
		Name    string   `toml:"name"`
		Sources []string `toml:"sources"`
	} `toml:"hosts"`
}

// readCoverage reads coverage.toml and checks it: every host is a
// lower-case name without a trailing dot, listed once in the file, with at
// least one source that is a URL or a key of [sources]; a new service has
// a name and a known category.
func readCoverage(path string, refCategories []string) (*coverageFile, error) {
	var f coverageFile
	md, err := toml.DecodeFile(path, &f)
	if err != nil {
		return nil, err
	}
	if u := md.Undecoded(); len(u) > 0 {
		return nil, fmt.Errorf("%s: unknown keys %v", path, u)
	}
	cats := append(slices.Clone(refCategories), f.Categories...)
	seen := map[string]bool{}
	ids := map[string]bool{}
	for _, s := range f.Services {
		if s.ID == "" || ids[s.ID] {
			return nil, fmt.Errorf("%s: service %q: missing or repeated id", path, s.ID)
		}
		ids[s.ID] = true
		if s.Category != "" && !slices.Contains(cats, s.Category) {
			return nil, fmt.Errorf("%s: service %q: unknown category %q", path, s.ID, s.Category)
		}
		if len(s.Hosts) == 0 {
			return nil, fmt.Errorf("%s: service %q has no hosts", path, s.ID)
		}
		for _, h := range append(s.Shared, hostNames(s)...) {
			if !goodName(h) {
				return nil, fmt.Errorf("%s: service %q: bad host %q", path, s.ID, h)
			}
		}
		for _, h := range s.Hosts {
			if seen[h.Name] {
				return nil, fmt.Errorf("%s: host %q listed twice", path, h.Name)
			}
			seen[h.Name] = true
			if len(h.Sources) == 0 {
				return nil, fmt.Errorf("%s: host %q has no source", path, h.Name)
			}
			for _, src := range h.Sources {
				_, key := f.Sources[src]
				if !key && !strings.HasPrefix(src, "https://") && !strings.HasPrefix(src, "http://") {
					return nil, fmt.Errorf("%s: host %q: source %q is neither a URL nor a key of [sources]", path, h.Name, src)
				}
			}
		}
	}
	return &f, nil
}

func goodName(h string) bool {
	return h != "" && h == strings.ToLower(h) && !strings.HasSuffix(h, ".") && strings.Contains(h, ".")
}

func hostNames(s coverageService) []string {
	out := make([]string, len(s.Hosts))
	for i, h := range s.Hosts {
		out[i] = h.Name
	}
	return out
}

// service returns the entry for id, or nil.
func (f *coverageFile) service(id string) *coverageService {
	for i := range f.Services {
		if f.Services[i].ID == id {
			return &f.Services[i]
		}
	}
	return nil
}

// newService builds a service that is not in the reference catalog.
func (f *coverageFile) newService(id string) outService {
	c := f.service(id)
	o := outService{ID: c.ID, Name: c.Name, Category: c.Category}
	c.mergeInto(&o, f.Sources)
	return o
}

// mergeInto adds the hosts to o's default domains (removing them from its
// copyleft list), the shared names to its shared list, and one source line
// per host. It returns how many hosts left the copyleft list.
func (c *coverageService) mergeInto(o *outService, keys map[string]string) int {
	moved := 0
	// Hosts documented by the same sources share one line.
	var order []string
	var byDocs [][]string
	for _, h := range c.Hosts {
		if !slices.Contains(o.Domains, h.Name) {
			o.Domains = append(o.Domains, h.Name)
		}
		if i := slices.Index(o.Copyleft, h.Name); i >= 0 {
			o.Copyleft = slices.Delete(o.Copyleft, i, i+1)
			moved++
		}
		docs := make([]string, len(h.Sources))
		for i, s := range h.Sources {
			if d, ok := keys[s]; ok {
				s = d
			}
			docs[i] = s
		}
		d := strings.Join(docs, "; ")
		if i := slices.Index(order, d); i >= 0 {
			byDocs[i] = append(byDocs[i], h.Name)
		} else {
			order = append(order, d)
			byDocs = append(byDocs, []string{h.Name})
		}
	}
	for i, d := range order {
		o.Sources = append(o.Sources, fmt.Sprintf("%s (config/catalog/coverage.toml): %s", strings.Join(byDocs[i], ", "), d))
	}
	for _, s := range c.Shared {
		if !slices.Contains(o.Shared, s) {
			o.Shared = append(o.Shared, s)
		}
	}
	return moved
}
