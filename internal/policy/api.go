package policy

import (
	"net/netip"
	"time"
)

// Verdict is what Balise does with a connection or a query.
type Verdict uint8

const (
	// Allow lets the client reach the host.
	Allow Verdict = iota
	// Block stops the client from reaching the host.
	Block
)

// String returns "allow" or "block".
func (v Verdict) String() string {
	if v == Block {
		return "block"
	}
	return "allow"
}

// Reason says which part of the policy produced a Decision.
type Reason uint8

const (
	// ReasonUnlisted: the host is in no list; Balise does not touch it.
	ReasonUnlisted Reason = iota
	// ReasonRule: a [[rule]] matched and decided.
	ReasonRule
	// ReasonDefault: the host is listed and no rule matched; default_action applied.
	ReasonDefault
	// ReasonGrant: an approved exception grant allowed the host.
	ReasonGrant
	// ReasonCanary: a browser/OS canary name (DoH canary, iCloud Private Relay).
	ReasonCanary
	// ReasonAllowList: the host is in a local allow list ([[list]] allow = true)
	// or is a per-service exception of the catalog.
	ReasonAllowList
	// ReasonCredit: a break the client started on a [[credit]] allowed
	// the host (see Grant.Credit).
	ReasonCredit

	numReasons
)

var reasonNames = [numReasons]string{"unlisted", "rule", "default", "grant", "canary", "allowlist", "credit"}

// String returns the reason's stable name, as used in logs, metrics and JSON.
func (r Reason) String() string {
	if r < numReasons {
		return reasonNames[r]
	}
	return "unknown"
}

// Reasons lists every reason, in order, so that front-ends can create their
// metric series up front.
func Reasons() []Reason {
	out := make([]Reason, numReasons)
	for i := range out {
		out[i] = Reason(i)
	}
	return out
}

// BypassCategory is the category of services that let a client get round
// Balise (public DNS-over-HTTPS and DNS-over-TLS resolvers). It is bypass
// hygiene, not a preference: "*" in a rule's Services or Categories, an
// empty rule and a grant for "*" never include its services, and
// Spec.DefaultAction Allow does not open them (no rule matching:
// Block, ReasonDefault). Only a rule that names the category or one of
// its services, or a grant that names one of its services, lifts it. An
// allow-list entry lifts one of its hosts only when it names the listed
// name itself or a name under it, never through a parent domain.
const BypassCategory = "doh"

// Query is one question to the engine: may this client, at this instant,
// reach this host?
type Query struct {
	// Host is the name as the client sent it: any case, an optional trailing
	// dot, Unicode or punycode, or an IP literal (v4, v6, bracketed v6).
	// Decide normalizes it itself.
	Host string
	// Client is the client's address. IPv4-mapped IPv6 addresses are
	// treated as IPv4. The zero Addr belongs to no network group.
	Client netip.Addr
	// User is the authenticated user name, when a directory source knows it.
	// Empty: rules and grants that need a user do not match.
	User string
	// Groups are the user's directory groups, as names or DNs. Nil: only
	// network groups apply.
	Groups []string
	// Time is the instant of the question. The engine never reads a clock.
	Time time.Time
	// CNAMETarget marks a name seen as a CNAME target in an upstream answer
	// chain. Only then do the catalog's cname_targets entries classify.
	CNAMETarget bool
}

// Decision is the engine's answer.
type Decision struct {
	Verdict Verdict
	Reason  Reason
	// Service is the listed service's id ("" for unlisted hosts).
	Service string
	// ServiceName is the service's display name ("" for unlisted hosts).
	ServiceName string
	// Category is the service's category ("" for unlisted hosts).
	Category string
	// Rule is the name of the rule that decided ("" unless Reason is
	// ReasonRule); an unnamed rule is "#N", N counting rules from 1.
	Rule string
	// Grant is the id of the grant that allowed ("" unless Reason is ReasonGrant).
	Grant string
	// Credit is the name of the credit whose break allowed ("" unless
	// Reason is ReasonCredit).
	Credit string
	// Until is the earliest instant at which the decision for this client
	// and host could change (next edge of a relevant window, grant start or
	// end), bounded by Spec.MaxUntil after Query.Time; always after
	// Query.Time when set. Zero for unlisted hosts, invalid names, IP
	// literals, allow-list and canary decisions: they never change with
	// time.
	Until time.Time
	// Invalid is true when Host is not a valid host name nor an IP literal.
	// Such a decision is Allow/ReasonUnlisted: front-ends reject the name
	// with their own protocol error.
	Invalid bool
	// IP is true when Host is an IP literal.
	IP bool
	// Bypass is true when the service is in BypassCategory: blocked
	// unless a rule or a grant names it, whatever DefaultAction says.
	Bypass bool
	// Report is the first rule in report mode (Rule.Report) that matched
	// before the rule that decided, had it been enforced; its zero value
	// (Report.Rule == "") means none did.
	Report Report
}

// Report is what a rule in report mode would have done.
type Report struct {
	// Rule is the rule's name ("" = no report rule matched).
	Rule string
	// Action is the rule's action, which was not applied.
	Action Verdict
}

// Listed reports whether the host belongs to a listed service.
func (d Decision) Listed() bool { return d.Service != "" }

// Service is a listed social-media service (or a [[list]] of the config).
type Service struct {
	// ID is the stable identifier used in rules, grants, logs and metrics.
	ID string
	// Name is the display name shown on the block page. Empty: ID.
	Name string
	// Category is one of the configured categories; rules match on it.
	Category string
	// Domains are blocked with every subdomain (label boundary). When two
	// services list the same name, the first in Spec.Services owns it.
	Domains []string
	// Exceptions are hosts (with their subdomains) under Domains that stay
	// reachable for everyone: they classify as ReasonAllowList.
	Exceptions []string
	// CNAMETargets classify only for queries with CNAMETarget set.
	CNAMETargets []string
}

// Group is a set of clients, by network and/or directory group.
type Group struct {
	Name string
	// Networks are CIDR prefixes (v4 and v6); a client inside any of them
	// belongs to the group.
	Networks []netip.Prefix
	// DirectoryGroups are directory group names or DNs; a query whose
	// Groups contain one of them belongs to the group. Case-insensitive;
	// a name also matches a DN whose first RDN has that value
	// ("communications" matches "CN=Communications,OU=Groups,DC=…"), a DN
	// matches only that DN (spaces around separators do not count).
	DirectoryGroups []string
	// Users are user names or DNs that belong to the group, matched
	// against Query.User as DirectoryGroups are against Query.Groups.
	Users []string
}

// Schedule is a named set of weekly windows.
type Schedule struct {
	Name    string
	Windows []Window
}

// Window is a weekly time window in the policy's zone. See ParseWindow.
type Window struct {
	// Days is a bit set of the days the window starts on: bit time.Sunday
	// (0) through time.Saturday (6).
	Days uint8
	// Start and End are offsets from local midnight. End <= Start means
	// the window crosses midnight and ends the next day.
	Start, End time.Duration
}

// Rule is one ordered policy rule; the first that matches decides.
type Rule struct {
	Name string
	// Groups the rule applies to; "*" is everyone. Empty: everyone.
	Groups []string
	// Services (ids) and Categories the rule applies to; "*" is every
	// listed service except those of BypassCategory. When both are empty
	// the rule matches every service except those of BypassCategory.
	Services   []string
	Categories []string
	// During are schedule names; the rule matches only inside one of their
	// windows. Empty: always.
	During []string
	Action Verdict
	// Report puts the rule in report mode: when it would match, the
	// decision records it in Decision.Report and the rule is skipped
	// (evaluation goes on with the next rules). False: it enforces.
	Report bool
}

// Grant is an approved exception: it allows its subject to reach its
// services between NotBefore and NotAfter, before any rule.
type Grant struct {
	// ID identifies the grant in decisions and logs (the request id).
	ID string
	// Subject is a client address or prefix. Invalid (zero) when the
	// grant is for a user.
	Subject netip.Prefix
	// User is the subject when the grant is for a user ("" otherwise);
	// it matches Query.User ASCII case-insensitively. A grant may have
	// both a Subject and a User: either matches.
	User string
	// Services are service ids; "*" is every service except those of
	// BypassCategory, which a grant reaches only by naming them.
	Services []string
	// NotBefore and NotAfter bound the grant: it applies in
	// [NotBefore, NotAfter). A zero NotBefore means "from the start"; a
	// zero NotAfter makes the grant void (grants always end).
	NotBefore, NotAfter time.Time
	// Credit is set on a break in progress: the name of the [[credit]]
	// the client spends. Such a grant decides after the other grants and
	// before the rules, with ReasonCredit (see credit.go). A break names
	// its services: "*" in Services is ignored.
	Credit string
}

// Spec is everything the engine is compiled from. The config package
// builds it from TOML; tests build it directly.
type Spec struct {
	// Location is the zone windows are read in. Nil: UTC.
	Location *time.Location
	// DefaultAction applies to listed hosts when no rule matched.
	DefaultAction Verdict
	// Services are the listed services: the catalog's and the config's lists.
	// When two services list the same name, the earlier one classifies it.
	Services []Service
	// Categories are the category names rules may use, in addition to
	// those of Services (a category with no service is valid). Nil: only
	// the services' categories.
	Categories []string
	// AllowHosts always pass, with their subdomains (local allow lists),
	// even under a longer listed name; but not a canary, and not a host
	// of BypassCategory listed under a longer name than the allow entry
	// (allowing google.com does not open dns.google.com).
	AllowHosts []string
	// Canaries are names blocked for everyone with ReasonCanary (browser
	// DoH canary, iCloud Private Relay), with their subdomains; grants,
	// rules and AllowHosts do not lift them. Nil: none.
	Canaries []string
	// Groups are at most 64 (a client's membership is a 64-bit set).
	Groups    []Group
	Schedules []Schedule
	Rules     []Rule
	// MaxUntil bounds Decision.Until after Query.Time. Zero or negative:
	// 24 hours.
	MaxUntil time.Duration
}
