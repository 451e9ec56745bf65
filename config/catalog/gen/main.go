// Command gen builds Balise's embedded service catalog (catalog.toml) from
// the reference catalog: a services.toml file of services with their
// domains, a provenance.tsv file naming the sources of every entry, and a
// SOURCES.md file giving each source's commit and licence; and from
// doh.toml, kept beside catalog.toml, which lists public DNS-over-HTTPS
// and DNS-over-TLS endpoints by provider with the documentation of each
// host. The doh service lists the reference's permissive DoH entries and
// every host of doh.toml (a host documented there is no longer
// copyleft-only). coverage.toml, also beside catalog.toml, adds the
// services the institutions' policies name that the reference lacks (and
// their categories), and hosts of reference services documented by the
// services' own pages, each with its sources (see coverage.go).
//
// Usage (from the config directory, through go generate):
//
//	go run ./catalog/gen -src DIR [-doh catalog/doh.toml] [-coverage catalog/coverage.toml] -out catalog/catalog.toml
//
// Entries whose only sources are copyleft, share-alike or unlicensed
// compilations are not part of the default lists: domain entries go to
// the service's copyleft list (listed only with [catalog]
// copyleft_entries = true), other entries are left out. Regular
// expressions are not supported by Balise's matcher and are left out.
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// copyleft are the source keys (before ':') whose licence does not allow
// redistributing their entries in Balise's permissively licensed data.
var copyleft = map[string]bool{"adguard": true, "ut1": true, "dibdot": true, "gzach": true}

type service struct {
	ID                   string   `toml:"id"`
	Name                 string   `toml:"name"`
	Category             string   `toml:"category"`
	Aliases              []string `toml:"aliases"`
	Domains              []string `toml:"domains"`
	TLDEntries           []string `toml:"tld_entries"`
	SharedInfrastructure []string `toml:"shared_infrastructure"`
	CNAMETargets         []string `toml:"cname_targets"`
	ExtraDomains         []string `toml:"extra_domains"`
	Exceptions           []string `toml:"exceptions"`
	Regex                []string `toml:"regex"`
	Sources              []string `toml:"sources"`
}

type input struct {
	Categories []string            `toml:"categories"`
	Services   map[string]*service `toml:"services"`
	Canaries   struct {
		Firefox            []string `toml:"firefox"`
		ICloudPrivateRelay []string `toml:"icloud_private_relay"`
		DoHEndpoints       []string `toml:"doh_endpoints"`
		Sources            []string `toml:"sources"`
	} `toml:"doh_canaries"`
}

// out is the schema of catalog.toml (see the config package's catalog.go).
type outService struct {
	ID           string
	Optional     bool
	Name         string
	Category     string
	Aliases      []string
	Domains      []string
	Exceptions   []string
	CNAMETargets []string
	Shared       []string
	Extra        []string
	Copyleft     []string
	Sources      []string
}

type stats struct {
	copyleftDomains, omitted, regex, unsourced int
	omittedList                                []string
}

func main() {
	src := flag.String("src", "", "directory of the reference catalog (services.toml, provenance.tsv, SOURCES.md)")
	outPath := flag.String("out", "catalog.toml", "file to write")
	dohPath := flag.String("doh", "catalog/doh.toml", "DNS-over-HTTPS endpoints by provider, with sources")
	covPath := flag.String("coverage", "catalog/coverage.toml", "services and hosts the policies name, with sources")
	flag.Parse()
	if *src == "" {
		fmt.Fprintln(os.Stderr, "gen: -src is required (set BALISE_CATALOG_SRC for go generate)")
		os.Exit(2)
	}
	if err := run(*src, *dohPath, *covPath, *outPath); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}

func run(src, dohPath, covPath, outPath string) error {
	var in input
	if _, err := toml.DecodeFile(filepath.Join(src, "services.toml"), &in); err != nil {
		return err
	}
	dohData, err := readDoH(dohPath)
	if err != nil {
		return err
	}
	cov, err := readCoverage(covPath, in.Categories)
	if err != nil {
		return err
	}
	prov, err := readProvenance(filepath.Join(src, "provenance.tsv"))
	if err != nil {
		return err
	}
	date, err := readDate(filepath.Join(src, "SOURCES.md"))
	if err != nil {
		return err
	}
	var st stats
	// permissive reports whether the entry has at least one source that
	// is not copyleft. Entries absent from the provenance file are kept
	// when the service has permissive sources (they come from its notes).
	permissive := func(entry, svc, field string) bool {
		keys, ok := prov[[3]string{entry, svc, field}]
		if !ok {
			st.unsourced++
			return true
		}
		for _, k := range keys {
			name, _, _ := strings.Cut(k, ":")
			if !copyleft[name] {
				return true
			}
		}
		return false
	}
	split := func(entries []string, svc, field string, keepCopyleft *[]string) []string {
		var keep []string
		for _, e := range entries {
			switch {
			case permissive(e, svc, field):
				keep = append(keep, e)
			case keepCopyleft != nil:
				*keepCopyleft = append(*keepCopyleft, e)
				st.copyleftDomains++
			default:
				st.omitted++
				st.omittedList = append(st.omittedList, fmt.Sprintf("%s (%s %s)", e, svc, field))
			}
		}
		return keep
	}

	ids := make([]string, 0, len(in.Services))
	for id := range in.Services {
		ids = append(ids, id)
	}
	for _, c := range cov.Services {
		if _, ok := in.Services[c.ID]; !ok {
			ids = append(ids, c.ID)
		}
	}
	sort.Strings(ids)
	var services []outService
	for _, id := range ids {
		s, ok := in.Services[id]
		if !ok {
			services = append(services, cov.newService(id))
			continue
		}
		o := outService{ID: s.ID, Name: s.Name, Category: s.Category, Aliases: s.Aliases, Sources: cleanSources(s.Sources)}
		// A service the reference marks optional is listed only when a
		// configuration enables it.
		if name, ok := strings.CutSuffix(s.Name, " (optional)"); ok {
			o.Name, o.Optional = name, true
		}
		if o.ID != id {
			return fmt.Errorf("service %q has id %q", id, s.ID)
		}
		o.Domains = split(s.Domains, id, "domains", &o.Copyleft)
		// Whole TLDs are suffixes like any other domain.
		o.Domains = append(o.Domains, s.TLDEntries...)
		o.Exceptions = split(s.Exceptions, id, "exceptions", nil)
		o.CNAMETargets = split(s.CNAMETargets, id, "cname_targets", nil)
		o.Shared = split(s.SharedInfrastructure, id, "shared_infrastructure", nil)
		o.Extra = split(s.ExtraDomains, id, "extra_domains", nil)
		st.regex += len(s.Regex)
		if c := cov.service(id); c != nil {
			st.copyleftDomains -= c.mergeInto(&o, cov.Sources)
		}
		services = append(services, o)
	}
	doh := outService{ID: "doh", Name: "DNS-over-HTTPS endpoints", Category: "doh", Sources: cleanSources(in.Canaries.Sources)}
	doh.Domains = split(in.Canaries.DoHEndpoints, "", "doh_endpoints", &doh.Copyleft)
	documented := dohData.hosts()
	doh.Domains = dedupKeep(append(doh.Domains, documented...))
	kept := len(doh.Copyleft)
	doh.Copyleft = slices.DeleteFunc(doh.Copyleft, func(h string) bool { return slices.Contains(documented, h) })
	st.copyleftDomains -= kept - len(doh.Copyleft)
	doh.Sources = append(doh.Sources, dohData.sourceLines()...)
	services = append(services, doh)
	canaries := append(slices.Clone(in.Canaries.Firefox), in.Canaries.ICloudPrivateRelay...)

	count := 0
	for _, s := range services {
		if !s.Optional {
			count += len(s.Domains)
		}
	}
	version := fmt.Sprintf("%s.%d", date, count)
	categories := append(slices.Clone(in.Categories), cov.Categories...)
	categories = append(categories, "doh")

	var b bytes.Buffer
	fmt.Fprintf(&b, "# Balise service catalog. Generated by config/catalog/gen: do not edit.\n")
	fmt.Fprintf(&b, "# Sources, commits and licences: ATTRIBUTION.md.\n")
	fmt.Fprintf(&b, "# Each entry covers the name and its subdomains. Per service:\n")
	fmt.Fprintf(&b, "#   optional      the service is listed only when [catalog] enable names it\n")
	fmt.Fprintf(&b, "#   domains       listed by default\n")
	fmt.Fprintf(&b, "#   exceptions    stay reachable for everyone\n")
	fmt.Fprintf(&b, "#   cname_targets classify only as CNAME targets of a listed name\n")
	fmt.Fprintf(&b, "#   shared        shared infrastructure: listed only with [catalog] shared_infrastructure\n")
	fmt.Fprintf(&b, "#   extra         brand, typo and legacy names: listed only with [catalog] extra_domains = true\n")
	fmt.Fprintf(&b, "#   copyleft      resting only on copyleft sources: listed only with [catalog] copyleft_entries = true\n\n")
	fmt.Fprintf(&b, "version = %q\n", version)
	writeList(&b, "categories", categories)
	writeList(&b, "canaries", canaries)
	for _, s := range services {
		fmt.Fprintf(&b, "\n[[service]]\nid = %q\nname = %q\ncategory = %q\n", s.ID, s.Name, s.Category)
		if s.Optional {
			b.WriteString("optional = true\n")
		}
		writeList(&b, "aliases", s.Aliases)
		writeList(&b, "domains", s.Domains)
		writeList(&b, "exceptions", s.Exceptions)
		writeList(&b, "cname_targets", s.CNAMETargets)
		writeList(&b, "shared", s.Shared)
		writeList(&b, "extra", s.Extra)
		writeList(&b, "copyleft", s.Copyleft)
		writeList(&b, "sources", s.Sources)
	}
	if err := os.WriteFile(outPath, b.Bytes(), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "gen: version %s, %d services, %d copyleft-only domains kept apart, %d other copyleft-only entries left out, %d regular expressions left out, %d entries without provenance kept\n",
		version, len(services), st.copyleftDomains, st.omitted, st.regex, st.unsourced)
	for _, o := range st.omittedList {
		fmt.Fprintln(os.Stderr, "gen: left out:", o)
	}
	return nil
}

func writeList(b *bytes.Buffer, key string, vals []string) {
	if len(vals) == 0 {
		return
	}
	q := make([]string, len(vals))
	for i, v := range vals {
		q[i] = strconv.Quote(v)
	}
	if line := strings.Join(q, ", "); len(vals) <= 3 && len(line) < 70 {
		fmt.Fprintf(b, "%s = [%s]\n", key, line)
		return
	}
	fmt.Fprintf(b, "%s = [\n", key)
	for _, v := range vals {
		fmt.Fprintf(b, "  %q,\n", v)
	}
	b.WriteString("]\n")
}

// readProvenance maps (entry, service, field) to its source keys. The
// service column is empty for the DoH and canary rows.
func readProvenance(path string) (map[[3]string][]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[[3]string][]string{}
	sc := bufio.NewScanner(f)
	first := true
	for sc.Scan() {
		if first {
			first = false
			continue
		}
		cols := strings.Split(sc.Text(), "\t")
		if len(cols) < 5 {
			continue
		}
		svc := cols[1]
		if cols[2] == "doh_endpoints" {
			svc = ""
		}
		out[[3]string{cols[0], svc, cols[2]}] = strings.Split(cols[4], ";")
	}
	return out, sc.Err()
}

// sourceWording rewrites notes about how a source was looked up into
// what it is.
var sourceWording = strings.NewReplacer(
	"find_string / search(code) hits in public repositories (URLs and hostname lists in code); ids recorded in SOURCES.md",
	"hostnames found in public source code (URLs and hostname lists)",
	"search(pages) result addresses (pages exist at these hosts)", "public web pages at these hosts",
	" (searchfox, docs corpus)", "",
	"; pages corpus)", ")",
	" (pages corpus)", "",
	", read via search docs corpus)", ")",
)

func cleanSources(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = sourceWording.Replace(s)
	}
	return out
}

var dateRE = regexp.MustCompile(`Read date: (\d{4}-\d{2}-\d{2})`)

func readDate(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	m := dateRE.FindSubmatch(data)
	if m == nil {
		return "", fmt.Errorf("%s: no \"Read date: YYYY-MM-DD\" line", path)
	}
	return string(m[1]), nil
}

// dohFile is the schema of doh.toml.
type dohFile struct {
	Read      string            `toml:"read"`
	Sources   map[string]string `toml:"sources"`
	Providers []struct {
		Name  string `toml:"name"`
		Hosts []struct {
			Name    string   `toml:"name"`
			Sources []string `toml:"sources"`
		} `toml:"hosts"`
	} `toml:"provider"`
}

// readDoH reads doh.toml and checks it: every host is a lower-case name
// without a trailing dot, listed once, with at least one source that is
// a URL or a key of [sources].
func readDoH(path string) (*dohFile, error) {
	var f dohFile
	md, err := toml.DecodeFile(path, &f)
	if err != nil {
		return nil, err
	}
	if u := md.Undecoded(); len(u) > 0 {
		return nil, fmt.Errorf("%s: unknown keys %v", path, u)
	}
	seen := map[string]bool{}
	for _, p := range f.Providers {
		if p.Name == "" || len(p.Hosts) == 0 {
			return nil, fmt.Errorf("%s: provider %q: a name and hosts are required", path, p.Name)
		}
		for _, h := range p.Hosts {
			if h.Name == "" || h.Name != strings.ToLower(h.Name) || strings.HasSuffix(h.Name, ".") || !strings.Contains(h.Name, ".") {
				return nil, fmt.Errorf("%s: provider %q: bad host %q", path, p.Name, h.Name)
			}
			if seen[h.Name] {
				return nil, fmt.Errorf("%s: host %q listed twice", path, h.Name)
			}
			seen[h.Name] = true
			if len(h.Sources) == 0 {
				return nil, fmt.Errorf("%s: host %q has no source", path, h.Name)
			}
			for _, s := range h.Sources {
				if _, ok := f.Sources[s]; !ok && !strings.HasPrefix(s, "https://") {
					return nil, fmt.Errorf("%s: host %q: source %q is neither a URL nor a key of [sources]", path, h.Name, s)
				}
			}
		}
	}
	return &f, nil
}

// hosts returns every host, in file order.
func (f *dohFile) hosts() []string {
	var out []string
	for _, p := range f.Providers {
		for _, h := range p.Hosts {
			out = append(out, h.Name)
		}
	}
	return out
}

// sourceLines describes, per provider, the hosts and the documents they
// come from, then the shared documents.
func (f *dohFile) sourceLines() []string {
	out := []string{fmt.Sprintf("DNS-over-HTTPS and DNS-over-TLS hosts by provider (config/catalog/doh.toml, read %s):", f.Read)}
	used := map[string]bool{}
	for _, p := range f.Providers {
		var names, docs []string
		for _, h := range p.Hosts {
			names = append(names, h.Name)
			for _, s := range h.Sources {
				if !slices.Contains(docs, s) {
					docs = append(docs, s)
				}
				used[s] = true
			}
		}
		out = append(out, fmt.Sprintf("%s: %s — %s", p.Name, strings.Join(names, ", "), strings.Join(docs, "; ")))
	}
	keys := make([]string, 0, len(f.Sources))
	for k := range f.Sources {
		if used[k] {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		out = append(out, fmt.Sprintf("%s: %s", k, f.Sources[k]))
	}
	return out
}

// dedupKeep removes repeated entries, keeping the first of each.
func dedupKeep(ss []string) []string {
	seen := map[string]bool{}
	out := ss[:0:0]
	for _, s := range ss {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
