package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	_ "time/tzdata" // zones resolve on hosts without a zoneinfo database

	"github.com/BurntSushi/toml"
)

// parser turns one TOML document into a Config, collecting problems.
type parser struct {
	path     string // the file, for messages ("" = embedded default)
	dir      string // where relative paths start
	data     []byte
	pos      *positions
	cat      *ServiceCatalog // the service catalog references are checked against (nil: embedded)
	problems Problems
	warnings Problems
}

// catalog returns the catalog the configuration is read against.
func (p *parser) catalog() *catalogData {
	if p.cat != nil {
		return p.cat.d
	}
	return embeddedCatalog()
}

func newParser(path string, data []byte) *parser {
	dir := "."
	if path != "" {
		dir = filepath.Dir(path)
	}
	return &parser{path: path, dir: dir, data: data}
}

// valueErr records a problem about the value at key (positioned at the
// value when known).
func (p *parser) valueErr(key, format string, args ...any) {
	pr := Problem{File: p.path, Key: key, Msg: fmt.Sprintf(format, args...)}
	if p.pos != nil {
		if at, ok := p.pos.value(key); ok {
			pr.Line, pr.Col = at.line, at.col
		}
	}
	p.problems = append(p.problems, pr)
}

// keyErr records a problem about the key itself (positioned at the key).
func (p *parser) keyErr(key, format string, args ...any) {
	pr := Problem{File: p.path, Key: key, Msg: fmt.Sprintf(format, args...)}
	if p.pos != nil {
		at, ok := p.pos.key[key]
		if !ok {
			at, ok = p.pos.val[key]
		}
		if ok {
			pr.Line, pr.Col = at.line, at.col
		}
	}
	p.problems = append(p.problems, pr)
}

// warn records a warning about the value at key: the configuration is
// valid, but probably not what the operator meant or weaker than the
// defaults. `check` prints warnings and still exits 0 (1 with --strict).
func (p *parser) warn(key, format string, args ...any) {
	pr := Problem{File: p.path, Key: key, Msg: fmt.Sprintf(format, args...), Warning: true}
	if p.pos != nil {
		if at, ok := p.pos.value(key); ok {
			pr.Line, pr.Col = at.line, at.col
		} else if at, ok := p.pos.key[key]; ok {
			pr.Line, pr.Col = at.line, at.col
		}
	}
	p.warnings = append(p.warnings, pr)
}

// fileErr records a problem located in another file (a list file).
func (p *parser) fileErr(file string, line int, format string, args ...any) {
	col := 0
	if line > 0 {
		col = 1
	}
	p.problems = append(p.problems, Problem{File: file, Line: line, Col: col, Msg: fmt.Sprintf(format, args...)})
}

func (p *parser) parse() *Config {
	var doc map[string]any
	if _, err := toml.Decode(string(p.data), &doc); err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			pr := Problem{File: p.path, Line: pe.Position.Line, Col: pe.Position.Col, Msg: pe.Message}
			if pe.Position.Start > 0 && pe.Position.Start <= len(p.data) {
				at := indexLines(p.data).at(pe.Position.Start)
				pr.Line, pr.Col = at.line, at.col
			}
			p.problems = append(p.problems, pr)
		} else {
			p.problems = append(p.problems, Problem{File: p.path, Msg: err.Error()})
		}
		return nil
	}
	p.pos = scanPositions(p.data)
	root := p.table("", doc)
	c := &Config{Path: p.path, hosts: &serviceHosts{}, cat: p.cat}

	c.Timezone = root.str("timezone", "America/Toronto")
	loc, err := time.LoadLocation(c.Timezone)
	if err != nil || c.Timezone == "" || c.Timezone == "Local" {
		p.valueErr("timezone", "unknown time zone %q (an IANA name such as \"America/Toronto\")", c.Timezone)
		loc = time.UTC
	}
	c.Location = loc
	c.DefaultAction = root.enum("default_action", "block", "allow", "block")
	c.BlockCanaries = root.boolean("block_canaries", true)
	c.BlockMessage = root.str("block_message", "")
	c.BlockMessageEN = root.str("block_message_en", "")
	c.Institution = root.str("institution", "")

	c.Catalog = p.catalogSection(root.sub("catalog"))
	c.Log = p.logSection(root.sub("log"))
	c.Proxy = p.proxySection(root.sub("proxy"))
	c.DNS = p.dnsSection(root.sub("dns"))
	c.Metrics = p.metricsSection(root.sub("metrics"))
	if t := root.sub("exceptions"); t != nil {
		c.Exceptions = p.exceptionsSection(t)
	}
	c.ListCache = p.listsSection(root.sub("lists"), c.Exceptions)
	c.Catalog.UpdateDir = p.resolve(filepath.Join("balise-data", "catalog"))
	if c.Exceptions != nil && c.Exceptions.StateDir != "" {
		c.Catalog.UpdateDir = filepath.Join(c.Exceptions.StateDir, "catalog")
	}
	c.Directory = p.directorySection(root.sub("directory"))
	c.Identity = p.identitySection(root.sub("identity"), c.Exceptions)
	c.Console = p.consoleSection(root.sub("console"), c)
	p.checkIdentity(c)

	c.Groups = p.groups(root.tables("group"))
	c.Schedules = p.schedules(root.tables("schedule"))
	c.Lists = p.lists(root.tables("list"))
	c.Rules = p.rules(root.tables("rule"), c)
	c.Credits = p.credits(root.tables("credit"), c)
	root.finish()
	if len(p.problems) == 0 {
		p.checkDangers(c)
	}
	return c
}

// resolve makes a configured path relative to the config's directory
// (absolute when the config's path is).
func (p *parser) resolve(path string) string {
	if path == "" || filepath.IsAbs(path) {
		return path
	}
	return filepath.Join(p.dir, path)
}

// noTable stands for an absent section: every key takes its default.
func (p *parser) orEmpty(t *tbl, path string) *tbl {
	if t == nil {
		return p.table(path, map[string]any{})
	}
	return t
}

func (p *parser) logSection(t *tbl) LogSection {
	t = p.orEmpty(t, "log")
	defer t.finish()
	return LogSection{DecisionWindow: t.duration("decision_window", time.Minute)}
}

func (p *parser) metricsSection(t *tbl) MetricsSection {
	t = p.orEmpty(t, "metrics")
	defer t.finish()
	return MetricsSection{Listen: p.listen(t, "listen", []string{"127.0.0.1:9464"})}
}

func (p *parser) listsSection(t *tbl, ex *ExceptionsSection) ListsSection {
	t = p.orEmpty(t, "lists")
	defer t.finish()
	def := p.resolve(filepath.Join("balise-data", "lists"))
	if ex != nil && ex.StateDir != "" {
		def = filepath.Join(ex.StateDir, "lists")
	}
	dir := t.str("cache_dir", "")
	if dir == "" {
		return ListsSection{CacheDir: def}
	}
	return ListsSection{CacheDir: p.resolve(dir)}
}

// listen reads a listen key: one address or an array, each host:port.
func (p *parser) listen(t *tbl, k string, def []string) []string {
	addrs, ok := t.strOrStrs(k)
	if !ok {
		return def
	}
	for i, a := range addrs {
		key := t.key(k)
		if _, isArr := t.m[k].([]any); isArr {
			key = fmt.Sprintf("%s[%d]", key, i)
		}
		if err := checkHostPort(a); err != nil {
			p.valueErr(key, "%v", err)
		}
	}
	return addrs
}

// checkHostPort accepts "host:port" with a numeric port; host may be an
// IP, a name or empty (every interface).
func checkHostPort(a string) error {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return fmt.Errorf("invalid address %q (want host:port, e.g. \"127.0.0.1:53\" or \"[::1]:53\")", a)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("invalid port in %q", a)
	}
	if strings.ContainsAny(host, " /") {
		return fmt.Errorf("invalid host in %q", a)
	}
	return nil
}

// prefixes reads an array of CIDR prefixes; a bare address is its own
// /32 or /128.
func (p *parser) prefixes(t *tbl, k string) ([]netip.Prefix, bool) {
	ss, ok := t.strs(k)
	if !ok {
		return nil, false
	}
	out := make([]netip.Prefix, 0, len(ss))
	for i, s := range ss {
		pf, err := parsePrefix(s)
		if err != nil {
			p.valueErr(fmt.Sprintf("%s[%d]", t.key(k), i), "%v", err)
			continue
		}
		out = append(out, pf)
	}
	return out, true
}

func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		pf, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("invalid CIDR %q", s)
		}
		if pf.Masked() != pf {
			return netip.Prefix{}, fmt.Errorf("invalid CIDR %q: host bits set (did you mean %q?)", s, pf.Masked().String())
		}
		return pf.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR %q", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// path reads a file path, resolved from the config's directory.
func (p *parser) pathKey(t *tbl, k, def string) string {
	return p.resolve(t.str(k, def))
}

// checkURL validates an http(s) URL ("" is accepted: unset) and returns
// it parsed (nil when unset or invalid).
func (p *parser) checkURL(key, s string, schemes ...string) *url.URL {
	if s == "" {
		return nil
	}
	u, err := url.Parse(s)
	ok := err == nil && u.Host != ""
	if ok {
		ok = false
		for _, sc := range schemes {
			if u.Scheme == sc {
				ok = true
			}
		}
	}
	if !ok {
		p.valueErr(key, "invalid URL %q (want %s://host[:port]/...)", s, strings.Join(schemes, "|"))
		return nil
	}
	return u
}
