package config

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/balise-net/balise/internal/policy"
)

// Sources of a ServiceCatalog, as balise_catalog_info{source} shows them.
const (
	// CatalogEmbedded is the catalog built into the binary.
	CatalogEmbedded = "embedded"
	// CatalogUpdate is a signed catalog fetched from [catalog] update_url
	// (or its last good copy on disk).
	CatalogUpdate = "update"
	// CatalogFile is a catalog read from a file given on the command line.
	CatalogFile = "file"
)

// ServiceCatalog is a parsed and checked service catalog: the embedded one
// or an update. It is immutable.
type ServiceCatalog struct {
	d      *catalogData
	source string
	serial int64
	raw    []byte // the exact bytes, for updates (nil for the embedded one)
}

// EmbeddedCatalog returns the catalog built into the binary.
func EmbeddedCatalog() *ServiceCatalog {
	d := embeddedCatalog()
	return &ServiceCatalog{d: d, source: CatalogEmbedded, serial: serialOf(d)}
}

// ParseCatalog parses and checks catalog data (the format of
// config/catalog/catalog.toml) with the checks the embedded catalog
// passes: unknown keys, ids and aliases unique, categories known (doh
// among them), names canonical, no name twice in a service, no public
// suffix listed. source is CatalogUpdate or CatalogFile. An update must
// carry a serial (see Serial).
func ParseCatalog(data []byte, source string) (*ServiceCatalog, error) {
	var d catalogData
	md, err := toml.Decode(string(data), &d)
	if err != nil {
		return nil, fmt.Errorf("catalog: %v", err)
	}
	var probs []string
	if u := md.Undecoded(); len(u) > 0 {
		keys := make([]string, len(u))
		for i, k := range u {
			keys[i] = k.String()
		}
		probs = append(probs, "unknown keys "+strings.Join(keys, ", "))
	}
	probs = append(probs, lintCatalog(&d)...)
	if source == CatalogUpdate && d.Serial <= 0 {
		probs = append(probs, "serial: missing (an update needs a serial greater than the catalog in use)")
	}
	if len(probs) > 0 {
		if len(probs) > 10 {
			probs = append(probs[:10], fmt.Sprintf("and %d more problems", len(probs)-10))
		}
		return nil, fmt.Errorf("catalog: %s", strings.Join(probs, "; "))
	}
	d.index()
	return &ServiceCatalog{d: &d, source: source, serial: serialOf(&d), raw: slices.Clone(data)}, nil
}

// index builds byID.
func (c *catalogData) index() {
	c.byID = map[string]int{}
	for i, s := range c.Services {
		c.byID[s.ID] = i
		for _, a := range s.Aliases {
			c.byID[a] = i
		}
	}
}

// lintCatalog returns the problems of a catalog, one phrase each.
func lintCatalog(c *catalogData) []string {
	var probs []string
	add := func(format string, args ...any) { probs = append(probs, fmt.Sprintf(format, args...)) }
	if c.Version == "" {
		add("version: missing")
	}
	if !slices.Contains(c.Categories, policy.BypassCategory) {
		add("categories: %q is missing", policy.BypassCategory)
	}
	for _, cat := range c.Categories {
		if !nameRE.MatchString(cat) {
			add("categories: invalid category %q", cat)
		}
	}
	if len(c.Services) == 0 {
		add("no service")
	}
	names := map[string]string{}
	for i, s := range c.Services {
		where := fmt.Sprintf("service[%d]", i)
		if s.ID != "" {
			where = fmt.Sprintf("service %q", s.ID)
		}
		for _, n := range append([]string{s.ID}, s.Aliases...) {
			if !nameRE.MatchString(n) {
				add("%s: invalid id or alias %q", where, n)
			}
			if prev, dup := names[n]; dup {
				add("%s: id or alias %q already used by %q", where, n, prev)
			}
			names[n] = s.ID
		}
		if !slices.Contains(c.Categories, s.Category) {
			add("%s: category %q is not one of the catalog's categories", where, s.Category)
		}
		for _, f := range []struct {
			name string
			list []string
		}{
			{"domains", s.Domains}, {"exceptions", s.Exceptions}, {"cname_targets", s.CNAMETargets},
			{"shared", s.Shared}, {"extra", s.Extra}, {"copyleft", s.Copyleft},
		} {
			seen := map[string]bool{}
			for _, d := range f.list {
				n, err := policy.NormalizeHost(d)
				switch {
				case err != nil || n != d:
					add("%s: %s: %q is not a canonical host name", where, f.name, d)
				case seen[d]:
					add("%s: %s: %q twice", where, f.name, d)
				case !strings.Contains(d, ".") && (d == s.ID || slices.Contains(s.Aliases, d)):
					// The service's own brand top-level domain (.youtube).
				default:
					if msg, bad := publicSuffixOf(d); bad {
						add("%s: %s: %s", where, f.name, msg)
					}
				}
				seen[d] = true
			}
		}
	}
	for _, cn := range c.Canaries {
		if n, err := policy.NormalizeHost(cn); err != nil || n != cn {
			add("canaries: %q is not a canonical host name", cn)
		}
	}
	return probs
}

// serialOf returns the catalog's serial: the serial key, or for a
// catalog without one (the embedded catalog before serials) its version
// date as YYYYMMDD00.
func serialOf(c *catalogData) int64 {
	if c.Serial > 0 {
		return c.Serial
	}
	date, _, _ := strings.Cut(c.Version, ".")
	t, err := time.Parse("2006-01-02", date)
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseInt(t.Format("20060102"), 10, 64)
	return n * 100
}

// Version is the catalog's version string ("2026-11-22.587").
func (c *ServiceCatalog) Version() string { return c.d.Version }

// Serial is the catalog's serial, which only grows from one catalog to
// the next: an update is refused unless its serial is greater than the
// one in use. By convention YYYYMMDDNN (the date and a counter), as DNS
// zone serials; a catalog without the key counts as its version's date
// followed by 00.
func (c *ServiceCatalog) Serial() int64 { return c.serial }

// Source is CatalogEmbedded, CatalogUpdate or CatalogFile.
func (c *ServiceCatalog) Source() string { return c.source }

// Bytes returns the catalog's exact bytes (those the signature covers);
// nil for the embedded catalog.
func (c *ServiceCatalog) Bytes() []byte { return slices.Clone(c.raw) }

// Info describes the catalog.
func (c *ServiceCatalog) Info() CatalogInfo { return c.d.info() }

// Domains returns the domains each service lists by default, by service
// id (for diffs).
func (c *ServiceCatalog) Domains() map[string][]string {
	out := make(map[string][]string, len(c.d.Services))
	for _, s := range c.d.Services {
		out[s.ID] = slices.Clone(s.Domains)
	}
	return out
}

// errOlder is wrapped by NewerThan's error.
var errOlder = errors.New("not newer than the catalog in use")

// NewerThan returns nil when c may replace cur: its serial is greater.
func (c *ServiceCatalog) NewerThan(cur *ServiceCatalog) error {
	if c.serial <= cur.serial {
		return fmt.Errorf("serial %d (version %s) is %w (serial %d, version %s)", c.serial, c.Version(), errOlder, cur.serial, cur.Version())
	}
	return nil
}

// EmbeddedCatalogText returns the text of the embedded catalog.
func EmbeddedCatalogText() []byte { return slices.Clone(catalogTOML) }
