package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	"github.com/balise-net/balise/config"
	"github.com/balise-net/balise/internal/directory"
	"github.com/balise-net/balise/internal/exceptions"
	"github.com/balise-net/balise/internal/policy"
)

// explainInput is one question for explain.
type explainInput struct {
	Client netip.Addr
	// Host as typed: any case, trailing dot, Unicode, IP literal.
	Host string
	// User is the user name, matched by groups' users and by grants to a
	// person, exactly as Decide matches it for serve.
	User string
	// DirectoryGroups are directory group names, as a directory source
	// would report them for the client (--groups).
	DirectoryGroups []string
	At              time.Time
}

// explainResult is explain's answer; its JSON form is the contract of
// `balise explain --json` (verdict, service, category, rule, reason,
// until), plus context fields.
type explainResult struct {
	Verdict     string `json:"verdict"`
	Service     string `json:"service"`
	ServiceName string `json:"service_name"`
	Category    string `json:"category"`
	Rule        string `json:"rule"`
	Reason      string `json:"reason"`
	// Until is RFC 3339 in the policy's zone, "" when the decision never
	// changes with time (unlisted hosts).
	Until string `json:"until"`
	Grant string `json:"grant"`
	// Would and WouldRule describe the first rule in report mode that
	// matched before the deciding rule: the action it would have taken
	// and its name ("" when none did; report rules never decide).
	Would     string `json:"would"`
	WouldRule string `json:"would_rule"`
	// Credit is the [[credit]] whose break in progress allowed ("" when
	// none).
	Credit string `json:"credit"`
	// Host is the normalized host name; Input the host as given.
	Host  string `json:"host"`
	Input string `json:"input"`
	IP    bool   `json:"ip"`
	// Client is the client address; Groups the configuration's groups it
	// belongs to (by network, or by the directory groups given).
	Client          string   `json:"client"`
	Groups          []string `json:"groups"`
	User            string   `json:"user"`
	DirectoryGroups []string `json:"directory_groups"`
	// At is the instant of the question, RFC 3339 in the policy's zone.
	At string `json:"at"`
	// Grants says where grants came from: "register" (the live grants
	// of the exceptions register, N of them in LiveGrants), "offline"
	// (--offline: the file alone) or "none" (no [exceptions] table, or a
	// register that holds no request yet).
	Grants     string `json:"grants"`
	LiveGrants int    `json:"live_grants"`
	// Identity says which identity the decision used: "address" (no
	// user: network groups only), "user" (the user's name, no directory
	// groups), "user+groups" (--groups given), "user+directory" (groups
	// looked up in [directory]), "user+directory-unavailable" (the lookup
	// failed: name and network groups only, as serve would decide).
	Identity string `json:"identity"`

	decision policy.Decision
	at       time.Time
	loc      *time.Location
}

// errInvalidHost is returned by explain for a host that is neither a valid
// name nor an IP literal.
var errInvalidHost = errors.New("invalid host")

// explain asks p about in and describes the answer with cfg's names.
func explain(cfg *config.Config, p *policy.Policy, in explainInput) (explainResult, error) {
	host, err := policy.NormalizeHost(in.Host)
	if err != nil {
		return explainResult{}, fmt.Errorf("%w %q: %v", errInvalidHost, in.Host, err)
	}
	client := in.Client.Unmap()
	q := policy.Query{
		Host:   in.Host,
		Client: client,
		User:   in.User,
		Groups: in.DirectoryGroups,
		Time:   in.At,
	}
	d := p.Decide(q)
	if d.Invalid {
		return explainResult{}, fmt.Errorf("%w %q", errInvalidHost, in.Host)
	}
	loc := p.Location()
	if loc == nil {
		loc = time.UTC
	}
	r := explainResult{
		Verdict:         d.Verdict.String(),
		Service:         d.Service,
		ServiceName:     d.ServiceName,
		Category:        d.Category,
		Rule:            d.Rule,
		Reason:          d.Reason.String(),
		Grant:           d.Grant,
		Credit:          d.Credit,
		Host:            host,
		Input:           in.Host,
		IP:              d.IP,
		Client:          client.String(),
		Groups:          groupsOf(p, q),
		User:            in.User,
		DirectoryGroups: in.DirectoryGroups,
		At:              in.At.In(loc).Format(time.RFC3339),
		decision:        d,
		at:              in.At,
		loc:             loc,
	}
	if r.DirectoryGroups == nil {
		r.DirectoryGroups = []string{}
	}
	if !d.Until.IsZero() {
		r.Until = d.Until.In(loc).Format(time.RFC3339)
	}
	if d.Report.Rule != "" {
		r.Would, r.WouldRule = d.Report.Action.String(), d.Report.Rule
	}
	return r, nil
}

// groupsOf returns the names of the configuration's groups the client
// of q belongs to, as the engine sees them (by network, user or
// directory group), in configuration order; never nil.
func groupsOf(p *policy.Policy, q policy.Query) []string {
	out := p.GroupsOf(q)
	if out == nil {
		out = []string{}
	}
	return out
}

// localTime formats t for people: weekday, date, time and zone
// abbreviation in loc.
func localTime(t time.Time, loc *time.Location) string {
	return t.In(loc).Format("Mon 2006-01-02 15:04:05 MST")
}

// writeText prints r for people.
func (r explainResult) writeText(w io.Writer) {
	d := r.decision
	fmt.Fprintf(w, "verdict   %s\n", r.Verdict)
	host := r.Host
	if r.Input != r.Host {
		host += fmt.Sprintf(" (given as %q)", r.Input)
	}
	if r.IP {
		host += " (IP literal)"
	}
	fmt.Fprintf(w, "host      %s\n", host)
	groups := "none"
	if len(r.Groups) > 0 {
		groups = strings.Join(r.Groups, ", ")
	}
	fmt.Fprintf(w, "client    %s (groups: %s)\n", r.Client, groups)
	if r.User != "" {
		fmt.Fprintf(w, "user      %s\n", r.User)
	}
	if len(r.DirectoryGroups) > 0 {
		fmt.Fprintf(w, "directory %s\n", strings.Join(r.DirectoryGroups, ", "))
	}
	fmt.Fprintf(w, "identity  %s\n", r.Identity)
	fmt.Fprintf(w, "at        %s (%s)\n", localTime(r.at, r.loc), r.At)
	if d.Listed() {
		name := r.Service
		if r.ServiceName != "" && r.ServiceName != r.Service {
			name += " (" + r.ServiceName + ")"
		}
		fmt.Fprintf(w, "service   %s\n", name)
		fmt.Fprintf(w, "category  %s\n", r.Category)
	} else {
		fmt.Fprintf(w, "service   -\n")
	}
	rule := r.Rule
	if rule == "" {
		rule = "-"
	}
	fmt.Fprintf(w, "rule      %s\n", rule)
	fmt.Fprintf(w, "reason    %s: %s\n", r.Reason, reasonText(d))
	if r.WouldRule != "" {
		fmt.Fprintf(w, "would     %s — règle %q en mode rapport, non appliquée / rule %q in report mode, not enforced\n", r.Would, r.WouldRule, r.WouldRule)
	}
	if r.Grant != "" {
		fmt.Fprintf(w, "grant     %s\n", r.Grant)
	}
	if r.Credit != "" {
		fmt.Fprintf(w, "credit    %s (a break in progress, until %s)\n", r.Credit, r.Until)
	}
	switch r.Grants {
	case "register":
		fmt.Fprintf(w, "grants    %d live in the exceptions register\n", r.LiveGrants)
	case "offline":
		fmt.Fprintf(w, "grants    not read (--offline)\n")
	}
	if r.Until == "" {
		fmt.Fprintf(w, "until     - (does not change with time)\n")
	} else {
		fmt.Fprintf(w, "until     %s (%s)\n", localTime(d.Until, r.loc), r.Until)
	}
}

// reasonText says in words why the decision was taken.
func reasonText(d policy.Decision) string {
	switch d.Reason {
	case policy.ReasonUnlisted:
		if d.IP {
			return "an IP address in no list; Balise leaves it alone"
		}
		return "the host is in no list; Balise leaves it alone"
	case policy.ReasonRule:
		return fmt.Sprintf("rule %q is the first that matches", d.Rule)
	case policy.ReasonDefault:
		if d.Bypass {
			return "no rule names the doh category or service: DNS-over-HTTPS endpoints stay blocked (\"*\" and default_action do not open them)"
		}
		return fmt.Sprintf("no rule matches; default_action is %s", d.Verdict)
	case policy.ReasonGrant:
		return fmt.Sprintf("exception grant %s allows it", d.Grant)
	case policy.ReasonCredit:
		return fmt.Sprintf("a break in progress on credit %q allows it", d.Credit)
	case policy.ReasonCanary:
		return "a browser or operating-system canary name (block_canaries)"
	case policy.ReasonAllowList:
		return "the host is in an allow list or is a catalog exception"
	}
	return d.Reason.String()
}

// liveGrants reads the grants in force at at from the register's store,
// read-only (a running serve may hold it).
func liveGrants(ex *config.ExceptionsSection, at time.Time) ([]policy.Grant, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var st exceptions.Store
	var err error
	if ex.Postgres() {
		st, err = openPostgres(ctx, ex.Store, ex.StorePasswordFile, "balise-explain", true)
	} else {
		st, err = exceptions.OpenSQLiteReadOnly(ctx, ex.Store)
	}
	if err != nil {
		return nil, err
	}
	defer st.Close()
	g, err := exceptions.StoreGrants(ctx, st, at)
	if err != nil {
		return nil, err
	}
	b, err := exceptions.StoreBreaks(ctx, st, at)
	return append(g, b...), err
}

// runExplain runs `balise explain`.
func runExplain(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("explain", stderr)
	path := fs.String("config", "", "configuration `FILE` (required)")
	clientFlag := fs.String("client", "", "client `IP` address (required)")
	hostFlag := fs.String("host", "", "`HOST` name or IP literal (required)")
	user := fs.String("user", "", "user `NAME`, matched by groups' users and grants to a person; its groups come from [directory] unless --groups or --offline")
	groupsFlag := fs.String("groups", "", "comma-separated directory `groups` of the user (instead of asking [directory])")
	atFlag := fs.String("at", "", "the instant to decide at, `RFC3339` (default now)")
	asJSON := fs.Bool("json", false, "print one JSON object")
	offline := fs.Bool("offline", false, "decide on the file alone: no exceptions register, no socket")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: balise explain --config FILE --client IP --host HOST [--user NAME] [--groups a,b] [--at RFC3339] [--offline] [--json]")
		fs.PrintDefaults()
	}
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	var missing []string
	for _, f := range []struct{ name, val string }{{"--config", *path}, {"--client", *clientFlag}, {"--host", *hostFlag}} {
		if f.val == "" {
			missing = append(missing, f.name)
		}
	}
	if len(missing) > 0 {
		fmt.Fprintf(stderr, "balise explain: %s required\n", strings.Join(missing, ", "))
		fs.Usage()
		return exitUsage
	}
	client, err := netip.ParseAddr(strings.Trim(*clientFlag, "[]"))
	if err != nil || client.Zone() != "" {
		fmt.Fprintf(stderr, "balise explain: invalid --client %q: want an IPv4 or IPv6 address\n", *clientFlag)
		return exitInvalid
	}
	at := time.Now()
	if *atFlag != "" {
		at, err = time.Parse(time.RFC3339, *atFlag)
		if err != nil {
			fmt.Fprintf(stderr, "balise explain: invalid --at %q: want RFC 3339, like 2026-05-12T14:00:00-04:00\n", *atFlag)
			return exitInvalid
		}
	}
	var dirGroups []string
	for _, g := range strings.Split(*groupsFlag, ",") {
		if g = strings.TrimSpace(g); g != "" {
			dirGroups = append(dirGroups, g)
		}
	}
	cfg, p, err := loadAndCompile(*path)
	if err != nil {
		printProblems(stderr, *path, err)
		return exitInvalid
	}
	source, live := "none", 0
	switch {
	case *offline:
		source = "offline"
	case cfg.Exceptions != nil:
		grants, err := liveGrants(cfg.Exceptions, at)
		switch {
		case errors.Is(err, exceptions.ErrNoStore):
		case err != nil:
			fmt.Fprintf(stderr, "balise explain: exceptions register: %v (--offline decides without it)\n", err)
			return exitInvalid
		default:
			p = p.WithGrants(grants)
			source, live = "register", len(grants)
		}
	}
	identitySource := "address"
	switch {
	case *user == "":
	case *groupsFlag != "":
		identitySource = "user+groups"
	case *offline || cfg.Directory == nil:
		identitySource = "user"
	default:
		dirGroups, err = directoryGroups(cfg, *user)
		identitySource = "user+directory"
		if err != nil {
			identitySource = "user+directory-unavailable"
			fmt.Fprintf(stderr, "balise explain: directory: %v (decided on the name and network groups, as serve would)\n", err)
		}
	}
	r, err := explain(cfg, p, explainInput{Client: client, Host: *hostFlag, User: *user, DirectoryGroups: dirGroups, At: at})
	r.Grants, r.LiveGrants, r.Identity = source, live, identitySource
	if err != nil {
		fmt.Fprintf(stderr, "balise explain: %v\n", err)
		return exitInvalid
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r); err != nil {
			fmt.Fprintf(stderr, "balise explain: %v\n", err)
			return exitInvalid
		}
		return exitOK
	}
	r.writeText(stdout)
	return exitOK
}

// directoryGroups asks [directory] for user's groups, as serve would
// (nested groups, by CN and DN), within the directory's timeout.
func directoryGroups(cfg *config.Config, user string) ([]string, error) {
	dir, err := directory.New(directoryConfig(cfg.Directory))
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Directory.Timeout+time.Second)
	defer cancel()
	return dir.Groups(ctx, user)
}
