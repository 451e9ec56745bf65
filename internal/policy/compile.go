package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// maxGroups is the number of groups a policy may define: a client's
// membership is a 64-bit set.
const maxGroups = 64

// maxValues bounds the distinct kinds of matcher entries (a value index
// is 16 bits). Each service contributes a handful.
const maxValues = 1 << 16

// Kinds of names given to the matcher builder; a raw value is
// kind<<24 | service index.
const (
	kindListed = iota
	kindException
	kindCNAME
	kindAllow
	kindCanary
	kindParent // a proper suffix of another entry
)

const noService = -1

// entryVal is what a matcher entry means. A name may be several things at
// once (listed by one service and in the local allow list, say).
type entryVal struct {
	listed int32 // service listing this name and its subdomains, or -1
	except int32 // service for which this name is an exception, or -1
	cname  int32 // service whose CNAME target this name is, or -1
	allow  bool  // local allow list
	canary bool
	// parent is set when longer entries end with this name: a lookup
	// must go on to the next label.
	parent bool
}

// serviceInfo is a compiled service.
type serviceInfo struct {
	Service      // without Domains
	domains  int // number of Domains entries given
	category int // index in compiled.categories
	// bypass is set for services of BypassCategory: "*" in rules and
	// grants does not reach them and default_action allow does not
	// open them.
	bypass bool
}

// network is one CIDR prefix of a group.
type network struct {
	prefix netip.Prefix
	bit    uint64
}

// network4 is an IPv4 prefix of a group, as a mask and masked address.
type network4 struct {
	mask, addr uint32
	bit        uint64
}

// nameBit is a directory group or user name of a group.
type nameBit struct {
	name string
	dn   bool // name is a distinguished name (see nameMatches)
	bit  uint64
}

// compiled is everything of a Policy but its grants; Policies made by
// WithGrants share it.
type compiled struct {
	loc           *time.Location
	zone          zoneTable
	defaultAction Verdict
	maxUntil      int64 // nanoseconds

	m       matcher
	values  []entryVal
	entries int // listed entries (DomainCount)

	services   []serviceInfo
	byID       map[string]int
	categories []string

	groupNames []string
	networks4  []network4
	networks   []network // IPv6
	dirGroups  []nameBit
	users      []nameBit

	rules []rule
	// hasReport is set when a rule is in report mode.
	hasReport bool
	// svcRules lists, per service index, the rules whose services or
	// categories include it, in order.
	svcRules [][]int32
	// svcIdentity tells, per service index, whether a reachable rule
	// names a group with users or directory groups (IdentityMatters).
	svcIdentity []bool
}

// New compiles spec. It reports the first inconsistency it finds (an
// unknown group, schedule, service or category in a rule, an invalid
// domain); the config package validates beforehand and reports every
// problem with its position.
//
// New keeps no reference to spec's slices: Service.Domains are reduced to
// fingerprints (see LookupService).
func New(spec Spec) (*Policy, error) {
	c := &compiled{
		loc:           spec.Location,
		defaultAction: spec.DefaultAction,
		maxUntil:      int64(spec.MaxUntil),
		byID:          make(map[string]int, len(spec.Services)),
	}
	if c.loc == nil {
		c.loc = time.UTC
	}
	if spec.DefaultAction > Block {
		return nil, fmt.Errorf("invalid default action %d", spec.DefaultAction)
	}
	if c.maxUntil <= 0 {
		c.maxUntil = int64(24 * time.Hour)
	}
	c.zone = newZoneTable(c.loc)
	if err := c.compileServices(&spec); err != nil {
		return nil, err
	}
	if err := c.compileGroups(spec.Groups); err != nil {
		return nil, err
	}
	if err := c.compileRules(&spec); err != nil {
		return nil, err
	}
	c.compileIdentity(spec.Groups)
	return &Policy{c: c, g: &grantIndex{}}, nil
}

func (c *compiled) compileServices(spec *Spec) error {
	catIndex := map[string]int{}
	addCategory := func(name string) int {
		if i, ok := catIndex[name]; ok {
			return i
		}
		catIndex[name] = len(c.categories)
		c.categories = append(c.categories, name)
		return len(c.categories) - 1
	}
	for _, cat := range spec.Categories {
		if cat == "" {
			return errors.New("empty category name")
		}
		addCategory(cat)
	}
	var b matcherBuilder
	total := len(spec.AllowHosts) + len(spec.Canaries)
	for _, s := range spec.Services {
		total += len(s.Domains) + len(s.Exceptions) + len(s.CNAMETargets)
	}
	// Most names have two or three labels: room for them and their
	// parent markers.
	b.entries = make([]rawEntry, 0, total*5/2)
	var buf hostBuf
	add := func(what, host string, kind, svc int) error {
		n, k, err := normalizeASCII(&buf, host)
		switch k {
		case hostName:
		case hostNonASCII:
			a, err := NormalizeHost(host)
			if err != nil {
				return fmt.Errorf("%s: invalid host %q: %v", what, host, err)
			}
			n, _, _ = normalizeASCII(&buf, a)
		case hostIP:
			return fmt.Errorf("%s: %q is an IP address, not a host name", what, host)
		default:
			return fmt.Errorf("%s: invalid host %q: %v", what, host, err)
		}
		b.addName(&buf, n, uint32(kind)<<24|uint32(svc&0xffffff))
		return nil
	}
	for i, s := range spec.Services {
		if s.ID == "" {
			return fmt.Errorf("service #%d: empty id", i+1)
		}
		if _, dup := c.byID[s.ID]; dup {
			return fmt.Errorf("service %q: defined twice", s.ID)
		}
		if s.Category == "" {
			return fmt.Errorf("service %q: empty category", s.ID)
		}
		if len(spec.Services) >= 1<<24 {
			return errors.New("too many services")
		}
		c.byID[s.ID] = len(c.services)
		info := serviceInfo{
			Service: Service{
				ID:           s.ID,
				Name:         s.Name,
				Category:     s.Category,
				Exceptions:   slices.Clone(s.Exceptions),
				CNAMETargets: slices.Clone(s.CNAMETargets),
			},
			domains:  len(s.Domains),
			category: addCategory(s.Category),
			bypass:   s.Category == BypassCategory,
		}
		if info.Name == "" {
			info.Name = s.ID
		}
		c.services = append(c.services, info)
		what := fmt.Sprintf("service %q", s.ID)
		for _, d := range s.Domains {
			if err := add(what, d, kindListed, i); err != nil {
				return err
			}
		}
		for _, d := range s.Exceptions {
			if err := add(what+" exception", d, kindException, i); err != nil {
				return err
			}
		}
		for _, d := range s.CNAMETargets {
			if err := add(what+" cname target", d, kindCNAME, i); err != nil {
				return err
			}
		}
	}
	for _, d := range spec.AllowHosts {
		if err := add("allow list", d, kindAllow, 0); err != nil {
			return err
		}
	}
	for _, d := range spec.Canaries {
		if err := add("canary", d, kindCanary, 0); err != nil {
			return err
		}
	}
	intern := map[entryVal]uint16{}
	internVal := func(v entryVal) (uint16, error) {
		if i, ok := intern[v]; ok {
			return i, nil
		}
		if len(c.values) >= maxValues {
			return 0, errors.New("too many distinct domain classifications")
		}
		c.values = append(c.values, v)
		intern[v] = uint16(len(c.values) - 1)
		return uint16(len(c.values) - 1), nil
	}
	merge := func(raw []uint32) (uint16, error) {
		v := entryVal{listed: noService, except: noService, cname: noService}
		for _, r := range raw {
			svc := int32(r & 0xffffff)
			switch r >> 24 {
			case kindListed:
				if v.listed == noService {
					v.listed = svc
				}
			case kindException:
				if v.except == noService {
					v.except = svc
				}
			case kindCNAME:
				if v.cname == noService {
					v.cname = svc
				}
			case kindAllow:
				v.allow = true
			case kindCanary:
				v.canary = true
			case kindParent:
				v.parent = true
			}
		}
		if v.listed != noService || v.cname != noService {
			c.entries++
		}
		return internVal(v)
	}
	union := func(a, b uint16) (uint16, error) {
		v, w := c.values[a], c.values[b]
		if v.listed == noService {
			v.listed = w.listed
		}
		if v.except == noService {
			v.except = w.except
		}
		if v.cname == noService {
			v.cname = w.cname
		}
		v.allow = v.allow || w.allow
		v.canary = v.canary || w.canary
		v.parent = v.parent || w.parent
		return internVal(v)
	}
	m, err := b.build(merge, union)
	if err != nil {
		return err
	}
	c.m = m
	return nil
}

func (c *compiled) compileGroups(groups []Group) error {
	if len(groups) > maxGroups {
		return fmt.Errorf("%d groups defined, at most %d are supported", len(groups), maxGroups)
	}
	seen := map[string]bool{}
	for i, g := range groups {
		if g.Name == "" {
			return fmt.Errorf("group #%d: empty name", i+1)
		}
		if g.Name == "*" {
			return fmt.Errorf("group %q: reserved name", g.Name)
		}
		if seen[g.Name] {
			return fmt.Errorf("group %q: defined twice", g.Name)
		}
		seen[g.Name] = true
		bit := uint64(1) << i
		c.groupNames = append(c.groupNames, g.Name)
		for _, p := range g.Networks {
			if !p.IsValid() {
				return fmt.Errorf("group %q: invalid network %v", g.Name, p)
			}
			p = unmapPrefix(p)
			if p.Addr().Is4() {
				mask := uint32(0)
				if p.Bits() > 0 {
					mask = ^uint32(0) << (32 - p.Bits())
				}
				a := p.Addr().As4()
				addr := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
				c.networks4 = append(c.networks4, network4{mask: mask, addr: addr & mask, bit: bit})
				continue
			}
			c.networks = append(c.networks, network{prefix: p, bit: bit})
		}
		for _, d := range g.DirectoryGroups {
			c.dirGroups = append(c.dirGroups, nameBit{d, isDN(d), bit})
		}
		for _, u := range g.Users {
			c.users = append(c.users, nameBit{u, isDN(u), bit})
		}
	}
	return nil
}

// unmapPrefix turns an IPv4-mapped IPv6 prefix into the IPv4 prefix it
// covers (clients are unmapped before matching) and masks the address.
func unmapPrefix(p netip.Prefix) netip.Prefix {
	a := p.Addr().WithZone("")
	if a.Is4In6() {
		bits := p.Bits() - 96
		if bits < 0 {
			bits = 0
		}
		return netip.PrefixFrom(a.Unmap(), bits).Masked()
	}
	return netip.PrefixFrom(a, p.Bits()).Masked()
}

func (c *compiled) groupIndex(name string) int {
	for i, g := range c.groupNames {
		if g == name {
			return i
		}
	}
	return -1
}

func (c *compiled) compileRules(spec *Spec) error {
	schedules := map[string][]Window{}
	for i, s := range spec.Schedules {
		if s.Name == "" {
			return fmt.Errorf("schedule #%d: empty name", i+1)
		}
		if _, dup := schedules[s.Name]; dup {
			return fmt.Errorf("schedule %q: defined twice", s.Name)
		}
		for _, w := range s.Windows {
			if err := validWindow(w); err != nil {
				return fmt.Errorf("schedule %q: %v", s.Name, err)
			}
		}
		schedules[s.Name] = s.Windows
		if s.Windows == nil {
			schedules[s.Name] = []Window{}
		}
	}
	words := (len(c.services) + 63) / 64
	for i, r := range spec.Rules {
		name := r.Name
		if name == "" {
			name = fmt.Sprintf("#%d", i+1)
		}
		where := fmt.Sprintf("rule %q", name)
		if r.Action > Block {
			return fmt.Errorf("%s: invalid action %d", where, r.Action)
		}
		cr := rule{name: name, action: r.Action, report: r.Report}
		if len(r.Groups) == 0 {
			cr.everyone = true
		}
		for _, g := range r.Groups {
			if g == "*" {
				cr.everyone = true
				continue
			}
			gi := c.groupIndex(g)
			if gi < 0 {
				return fmt.Errorf("%s: unknown group %q", where, g)
			}
			cr.groups |= 1 << gi
		}
		// "*", or no services and categories at all, is every service
		// but those of BypassCategory: only a rule that names the
		// category or one of its services reaches them.
		all := len(r.Services) == 0 && len(r.Categories) == 0
		cr.services = make([]uint64, words)
		for _, s := range r.Services {
			if s == "*" {
				all = true
				continue
			}
			si, ok := c.byID[s]
			if !ok {
				return fmt.Errorf("%s: unknown service %q", where, s)
			}
			cr.services[si/64] |= 1 << (si % 64)
		}
		for _, cat := range r.Categories {
			if cat == "*" {
				all = true
				continue
			}
			ci := slices.Index(c.categories, cat)
			if ci < 0 {
				return fmt.Errorf("%s: unknown category %q", where, cat)
			}
			for si := range c.services {
				if c.services[si].category == ci {
					cr.services[si/64] |= 1 << (si % 64)
				}
			}
		}
		if all {
			for si := range c.services {
				if !c.services[si].bypass {
					cr.services[si/64] |= 1 << (si % 64)
				}
			}
		}
		if len(r.During) == 0 {
			cr.week = weekSet{always: true}
		} else {
			var ws []Window
			for _, d := range r.During {
				w, ok := schedules[d]
				if !ok {
					return fmt.Errorf("%s: unknown schedule %q", where, d)
				}
				ws = append(ws, w...)
			}
			cr.week = newWeekSet(ws)
		}
		c.rules = append(c.rules, cr)
		c.hasReport = c.hasReport || cr.report
	}
	c.svcRules = make([][]int32, len(c.services))
	for si := range c.services {
		for ri := range c.rules {
			if c.rules[ri].hasService(si) {
				c.svcRules[si] = append(c.svcRules[si], int32(ri))
			}
		}
	}
	return nil
}
