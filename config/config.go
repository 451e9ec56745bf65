package config

import (
	_ "embed"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/balise-net/balise/internal/policy"
)

//go:embed default.toml
var defaultTOML []byte

// DefaultTOML returns the text of the embedded default configuration, the
// one `balise serve` uses without --config.
func DefaultTOML() []byte { return append([]byte(nil), defaultTOML...) }

// Config is a parsed, validated configuration. Every field holds its
// default when the file leaves it out; paths are already resolved relative
// to the directory of the file.
type Config struct {
	// Path is the file the configuration came from ("" for the embedded
	// default). Relative paths inside it were resolved from its directory.
	Path string
	// Warnings are valid settings that weaken a default or are probably
	// not what was meant (Problem.Warning is set). `check`
	// prints them; `serve` logs them.
	Warnings Problems

	// Timezone is the IANA zone name windows are read in
	// (default "America/Toronto"); Location is that zone, resolved.
	Timezone string
	Location *time.Location
	// DefaultAction is "allow" or "block" (default "block"): what happens
	// to a listed host when no rule matched.
	DefaultAction string
	// BlockCanaries blocks the browser DoH canary and the iCloud Private
	// Relay names for everyone (default true).
	BlockCanaries bool
	// BlockMessage and BlockMessageEN explain the institution's rule on the
	// block page, in French and English ("" = a generic sentence).
	BlockMessage   string
	BlockMessageEN string
	// Institution is the name shown on the block page ("" = none).
	Institution string

	Catalog    CatalogSection
	Log        LogSection
	ListCache  ListsSection
	Proxy      ProxySection
	DNS        DNSSection
	Metrics    MetricsSection
	Exceptions *ExceptionsSection // nil when the file has no [exceptions] table
	Directory  *DirectorySection  // nil when the file has no [directory] table
	Identity   IdentitySection
	Console    *ConsoleSection // nil when the file has no [console] table

	Groups    []Group
	Schedules []Schedule
	Lists     []List
	Rules     []Rule
	// Credits are the [[credit]] tables: break minutes employees spend
	// themselves (see Credit).
	Credits []Credit

	// cat is the service catalog the configuration was read against (nil:
	// the embedded one); see LoadWith.
	cat *ServiceCatalog

	// hosts holds the service hosts of the last Spec (see ServiceHosts);
	// nil for a Config not made by Parse.
	hosts *serviceHosts
}

// CatalogSection is [catalog]: which parts of the embedded service catalog
// are listed.
type CatalogSection struct {
	// Disable lists catalog service ids that are not listed at all.
	Disable []string
	// Enable lists optional catalog services that are listed (by default
	// optional services, such as podcast-hosting, are not).
	Enable []string
	// ExtraDomains also lists the services' brand, typo and legacy
	// registrations (default false).
	ExtraDomains bool
	// SharedInfrastructure lists service ids (or "*") whose shared
	// infrastructure domains (CDNs used by other sites too, such as
	// fbcdn.net or googlevideo.com) are listed as well. Default none.
	SharedInfrastructure []string
	// CategoriesOff lists whole categories that are not listed.
	CategoriesOff []string
	// CopyleftEntries also lists catalog entries whose only sources are
	// copyleft or share-alike compilations (default false).
	CopyleftEntries bool
	// UpdateURL is where signed catalog updates are fetched (https; ""
	// = no updates, the default: the embedded catalog only). The
	// signature is fetched from UpdateURL + ".minisig".
	UpdateURL string
	// UpdateKey is the publisher's minisign public key (its base64 line,
	// "RW..."); required with UpdateURL. A catalog it did not sign is
	// never applied.
	UpdateKey string
	// UpdateInterval is how often UpdateURL is checked (default 6h, at
	// least 1m).
	UpdateInterval time.Duration
	// UpdateDir is where the last good update and its signature are kept
	// (not a key): "<[exceptions] state_dir>/catalog", or
	// "balise-data/catalog" next to the configuration file.
	UpdateDir string
}

// LogSection is [log].
type LogSection struct {
	// DecisionWindow is the deduplication window of decision log lines
	// (default 1m).
	DecisionWindow time.Duration
}

// ListsSection is [lists]: settings shared by every [[list]].
type ListsSection struct {
	// CacheDir is where the last good copy of each URL list is kept.
	// Default: "<[exceptions] state_dir>/lists", or "balise-data/lists"
	// next to the configuration file when there is no [exceptions].
	CacheDir string
}

// MetricsSection is [metrics].
type MetricsSection struct {
	// Listen are the addresses of /metrics, /healthz and /readyz
	// (default ["127.0.0.1:9464"]). An empty array turns it off.
	Listen []string
}

// Group is a [[group]]: a set of clients.
type Group struct {
	Name            string
	Networks        []netip.Prefix
	DirectoryGroups []string
	Users           []string
}

// Schedule is a [[schedule]]: named weekly windows. Windows are as
// written ("mon-fri 12:00-13:00"), for messages; Parsed holds each of them
// as policy.ParseWindow read it when the file was parsed (same order), and
// is what Spec hands the engine.
type Schedule struct {
	Name    string
	Windows []string
	Parsed  []policy.Window
}

// List is a [[list]]: extra listed domains (a service of its own, named
// after the list) or, with Allow, hosts that always pass.
type List struct {
	// Name is the list's name and the service id rules refer to.
	Name string
	// DisplayName is shown on the block page ("" = Name).
	DisplayName string
	// Category is the list's category; required unless Allow.
	Category string
	// Allow makes the list's hosts always reachable.
	Allow bool
	// Domains are inline entries, normalized.
	Domains []string
	// Files are list files (hosts, plain-domain or ||domain^ lines),
	// resolved from the configuration's directory. Load read their domains.
	Files []string
	// URLs are https:// lists fetched and refreshed by a Fetcher.
	URLs []string
	// Refresh is the refresh interval of URLs (default 24h).
	Refresh time.Duration
	// SHA256 pins the content of the single URL (hex, "" = no pin).
	SHA256 string

	fileDomains []string // domains read from Files by Load
}

// Rule is a [[rule]]. Groups, Services, Categories and During are
// matched as in policy.Rule: nil Groups is everyone, nil Services and
// Categories is every service, nil During is always. Services hold
// canonical ids (an alias such as "x" is replaced by "twitter"). Action
// is "allow" or "block".
//
// A rule must have a name and an action, and name at least one of groups,
// services, categories or during: a rule naming none is an "empty rule"
// problem (write groups = ["*"] to apply one to everyone). A key present
// with an empty array is a problem too.
type Rule struct {
	Name       string
	Groups     []string
	Services   []string
	Categories []string
	During     []string
	Action     string
	// Mode is "enforce" (default) or "report": a rule in report mode is
	// evaluated, a decision it would have made is logged as
	// would=<action>, and the rule is then skipped.
	Mode string
}

// Load reads, parses and validates the configuration file at path. Its
// error, when not about reading the file, is a Problems listing every
// problem found. Load never writes a file nor opens a socket.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, Problems{{File: path, Msg: errText(err)}}
	}
	return Parse(path, data)
}

// Parse is Load on data already read; path names the file in messages and
// anchors relative paths ("" = the working directory).
func Parse(path string, data []byte) (*Config, error) {
	return ParseWith(path, data, nil)
}

// LoadWith is Load against the service catalog cat (nil: the embedded
// one): rules, [catalog] and lists are checked against cat, and Spec
// lists its services. A catalog update is put in force by loading the
// configuration again with it.
func LoadWith(path string, cat *ServiceCatalog) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, Problems{{File: path, Msg: errText(err)}}
	}
	return ParseWith(path, data, cat)
}

// ParseWith is Parse against the service catalog cat (nil: the embedded
// one).
func ParseWith(path string, data []byte, cat *ServiceCatalog) (*Config, error) {
	p := newParser(path, data)
	p.cat = cat
	c := p.parse()
	if len(p.problems) > 0 {
		p.problems.sort(path)
		return nil, p.problems
	}
	p.warnings.sort(path)
	c.Warnings = p.warnings
	return c, nil
}

// catalog returns the catalog c was read against.
func (c *Config) catalog() *catalogData {
	if c.cat != nil {
		return c.cat.d
	}
	return embeddedCatalog()
}

// CatalogInUse returns the service catalog c was read against: the
// embedded one unless LoadWith was given another.
func (c *Config) CatalogInUse() *ServiceCatalog {
	if c.cat != nil {
		return c.cat
	}
	return EmbeddedCatalog()
}

// Default returns the embedded default configuration. It panics only if
// the embedded file is invalid, which a test rules out.
func Default() *Config {
	c, err := Parse("", defaultTOML)
	if err != nil {
		panic(fmt.Sprintf("config: embedded default is invalid: %v", err))
	}
	return c
}

// defaultLocation is the zone of a Config whose Location is unset.
func defaultLocation() *time.Location {
	loc, err := time.LoadLocation("America/Toronto")
	if err != nil {
		return time.UTC
	}
	return loc
}
