package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/user"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/balise-net/balise/config"
	"github.com/balise-net/balise/internal/exceptions"
)

const exceptionsUsage = `usage: balise exceptions --config FILE COMMAND [flags]

commands:
  list    [--status pending|approved|denied|revoked|expired|all] [--json]
  show    ID [--json]
  approve ID (--for DURATION | --until RFC3339) --by NAME [--note TEXT] [--subject client|user]
  deny    ID --by NAME --reason TEXT
  revoke  ID --by NAME --reason TEXT
  extend  ID (--for DURATION | --until RFC3339) --by NAME [--note TEXT]
  export  --format csv|json [--since DATE] [--by NAME]
  verify
  purge   [--older-than DURATION] [--by NAME]
  migrate --to postgres://USER@HOST/DB?sslmode=verify-full [--password-file FILE]

DURATION is a Go duration or a number of days ("4h", "7d", "365d"); DATE is
YYYY-MM-DD (in the configured timezone) or RFC 3339. Every command works
while balise serve runs on the same register, except migrate, which copies
an embedded register (SQLite and its audit log) into an empty PostgreSQL
database and verifies the copy: stop balise serve first.
`

// exceptionsCLI is one run of `balise exceptions`.
type exceptionsCLI struct {
	stdout, stderr io.Writer
	config         string
	cfg            *config.Config
	reg            *exceptions.Register
	verifying      bool // the command is verify
}

// runExceptions runs `balise exceptions ...` (args after "exceptions") and
// returns the exit code.
func runExceptions(args []string, stdout, stderr io.Writer) int {
	c := &exceptionsCLI{stdout: stdout, stderr: stderr}
	fs := c.flagSet("")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() == 0 {
		fmt.Fprint(stderr, exceptionsUsage)
		return exitUsage
	}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	switch cmd {
	case "list":
		return c.list(rest)
	case "show":
		return c.show(rest)
	case "approve":
		return c.approve(rest)
	case "deny", "revoke":
		return c.close(cmd, rest)
	case "extend":
		return c.extend(rest)
	case "export":
		return c.export(rest)
	case "verify":
		return c.verify(rest)
	case "purge":
		return c.purge(rest)
	case "migrate":
		return c.migrate(rest)
	case "help":
		fmt.Fprint(stdout, exceptionsUsage)
		return exitOK
	}
	fmt.Fprintf(stderr, "balise exceptions: unknown command %q\n%s", cmd, exceptionsUsage)
	return exitUsage
}

// flagSet returns the flag set of a command; --config is accepted before
// and after the command name.
func (c *exceptionsCLI) flagSet(cmd string) *flag.FlagSet {
	name := "exceptions"
	if cmd != "" {
		name += " " + cmd
	}
	fs := newFlagSet(name, c.stderr)
	fs.StringVar(&c.config, "config", c.config, "configuration `FILE` (with an [exceptions] table)")
	fs.Usage = func() { fmt.Fprint(c.stderr, exceptionsUsage) }
	return fs
}

// parse parses a command's flags and returns its positional arguments,
// which may come before, between or after the flags. want is the number
// of positional arguments required. It returns -1 on success, else the
// exit code.
func (c *exceptionsCLI) parse(fs *flag.FlagSet, args []string, want int) ([]string, int) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, exitOK
			}
			return nil, exitUsage
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(pos) != want {
		if want == 0 {
			fmt.Fprintf(c.stderr, "balise %s: unexpected argument %q\n", fs.Name(), strings.Join(pos, " "))
		} else {
			fmt.Fprintf(c.stderr, "balise %s: want a request ID (such as EX-0042)\n", fs.Name())
		}
		return nil, exitUsage
	}
	return pos, -1
}

// open loads the configuration and opens the register.
func (c *exceptionsCLI) open() int {
	if c.config == "" {
		fmt.Fprintln(c.stderr, "balise exceptions: --config FILE is required")
		return exitUsage
	}
	cfg, err := config.Load(c.config)
	if err != nil {
		fmt.Fprintf(c.stderr, "balise exceptions: %s\n", problemText(err))
		return exitInvalid
	}
	if cfg.Exceptions == nil {
		fmt.Fprintf(c.stderr, "balise exceptions: %s has no [exceptions] table: the exception register is off (add one to turn it on)\n", c.config)
		return exitInvalid
	}
	ex := cfg.Exceptions
	ctx := context.Background()
	st, err := openExceptionsStore(ctx, ex, "balise-exceptions")
	if err != nil {
		fmt.Fprintf(c.stderr, "balise exceptions: %v\n", err)
		return exitInvalid
	}
	reg, err := exceptions.Open(ctx, exceptions.Options{
		Store: st, CloseStore: true, AuditLog: ex.AuditLog, Durations: ex.Durations,
		MaxPendingPerClient: ex.MaxPendingPerClient, MaxPerDayPerClient: ex.MaxPerDayPerClient,
	})
	if err != nil {
		st.Close()
		fmt.Fprintf(c.stderr, "balise exceptions: %v\n", err)
		return exitInvalid
	}
	if err := reg.Repair(ctx); errors.Is(err, exceptions.ErrAudit) {
		// Reads and verify still work; writes fail with this error,
		// which verify explains itself.
		if !c.verifying {
			fmt.Fprintf(c.stderr, "balise exceptions: warning: %v\n", err)
		}
	} else if err != nil {
		reg.Close()
		fmt.Fprintf(c.stderr, "balise exceptions: %v\n", err)
		return exitInvalid
	}
	c.cfg, c.reg = cfg, reg
	return -1
}

// fail reports err and returns exit code 1.
func (c *exceptionsCLI) fail(cmd string, err error) int {
	fmt.Fprintf(c.stderr, "balise exceptions %s: %v\n", cmd, err)
	return exitInvalid
}

func (c *exceptionsCLI) local(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.In(c.cfg.Location).Format("2006-01-02 15:04 MST")
}

func (c *exceptionsCLI) list(args []string) int {
	fs := c.flagSet("list")
	status := fs.String("status", "all", "show only `STATUS`: pending, approved, denied, revoked, expired or all")
	asJSON := fs.Bool("json", false, "print a JSON array")
	if _, code := c.parse(fs, args, 0); code >= 0 {
		return code
	}
	st, err := exceptions.ParseStatus(*status)
	if err != nil {
		fmt.Fprintf(c.stderr, "balise exceptions list: %v\n", err)
		return exitUsage
	}
	if code := c.open(); code >= 0 {
		return code
	}
	defer c.reg.Close()
	reqs, err := c.reg.List(context.Background(), st)
	if err != nil {
		return c.fail("list", err)
	}
	if *asJSON {
		out := make([]exceptions.RequestJSON, 0, len(reqs))
		for _, q := range reqs {
			out = append(out, q.JSON())
		}
		return c.printJSON(out)
	}
	if len(reqs) == 0 {
		fmt.Fprintln(c.stdout, "no requests")
		return exitOK
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATUS\tRECEIVED\tCLIENT\tSERVICES\tASKED\tUNTIL\tNAME")
	for _, q := range reqs {
		until := ""
		if q.Grant != nil && q.Status == exceptions.StatusApproved {
			until = c.local(q.Grant.NotAfter)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", q.ID, q.Status, c.local(q.Created), q.Client,
			strings.Join(q.Services, ","), exceptions.FormatDuration(q.Duration), until, oneLine(q.Name, 40))
	}
	tw.Flush()
	return exitOK
}

func (c *exceptionsCLI) show(args []string) int {
	fs := c.flagSet("show")
	asJSON := fs.Bool("json", false, "print a JSON object")
	pos, code := c.parse(fs, args, 1)
	if code >= 0 {
		return code
	}
	if code := c.open(); code >= 0 {
		return code
	}
	defer c.reg.Close()
	q, err := c.reg.Get(context.Background(), pos[0])
	if err != nil {
		return c.fail("show", err)
	}
	if *asJSON {
		return c.printJSON(q.JSON())
	}
	c.printRequest(q)
	return exitOK
}

func (c *exceptionsCLI) printRequest(q exceptions.Request) {
	w := c.stdout
	fmt.Fprintf(w, "id:            %s\n", q.ID)
	fmt.Fprintf(w, "status:        %s\n", q.Status)
	fmt.Fprintf(w, "received:      %s\n", c.local(q.Created))
	fmt.Fprintf(w, "client:        %s\n", q.Client)
	if q.User != "" {
		fmt.Fprintf(w, "user:          %s\n", q.User)
	}
	fmt.Fprintf(w, "name:          %s\n", oneLine(q.Name, 0))
	fmt.Fprintf(w, "contact:       %s\n", oneLine(q.Contact, 0))
	fmt.Fprintf(w, "services:      %s\n", strings.Join(q.Services, ", "))
	fmt.Fprintf(w, "host:          %s\n", q.Host)
	fmt.Fprintf(w, "asked for:     %s\n", exceptions.FormatDuration(q.Duration))
	fmt.Fprintln(w, "justification:")
	for _, l := range strings.Split(q.Justification, "\n") {
		fmt.Fprintf(w, "  %s\n", oneLine(l, 0))
	}
	if q.DecidedBy != "" {
		fmt.Fprintf(w, "decided by:    %s, %s\n", oneLine(q.DecidedBy, 0), c.local(q.Decided))
	}
	if g := q.Grant; g != nil {
		fmt.Fprintf(w, "grant:         %s may reach %s from %s until %s\n", g.Subject, strings.Join(g.Services, ", "),
			c.local(g.NotBefore), c.local(g.NotAfter))
		if !g.Revoked.IsZero() {
			fmt.Fprintf(w, "revoked:       by %s, %s\n", oneLine(g.RevokedBy, 0), c.local(g.Revoked))
		}
	}
	if q.Note != "" {
		fmt.Fprintf(w, "note:          %s\n", oneLine(q.Note, 0))
	}
}

func (c *exceptionsCLI) approve(args []string) int {
	fs := c.flagSet("approve")
	forD := fs.String("for", "", "grant for `DURATION` from now (4h, 7d)")
	until := fs.String("until", "", "grant until `TIME` (RFC 3339)")
	by := fs.String("by", "", "your `NAME` (recorded in the audit log)")
	note := fs.String("note", "", "a `TEXT` kept with the decision")
	subject := fs.String("subject", "client", "who the grant applies to: client (the requester's workstation) or user")
	pos, code := c.parse(fs, args, 1)
	if code >= 0 {
		return code
	}
	a := exceptions.Approval{By: *by, Note: *note, Subject: *subject}
	switch {
	case *by == "":
		fmt.Fprintln(c.stderr, "balise exceptions approve: --by NAME is required")
		return exitUsage
	case (*forD == "") == (*until == ""):
		fmt.Fprintln(c.stderr, "balise exceptions approve: give exactly one of --for DURATION and --until RFC3339")
		return exitUsage
	case *subject != "client" && *subject != "user":
		fmt.Fprintf(c.stderr, "balise exceptions approve: --subject must be client or user, not %q\n", *subject)
		return exitUsage
	case *forD != "":
		d, err := exceptions.ParseDuration(*forD)
		if err != nil || d <= 0 {
			fmt.Fprintf(c.stderr, "balise exceptions approve: --for: invalid duration %q\n", *forD)
			return exitUsage
		}
		a.For = d
	default:
		t, err := time.Parse(time.RFC3339, *until)
		if err != nil {
			fmt.Fprintf(c.stderr, "balise exceptions approve: --until: %q is not an RFC 3339 time (2026-11-20T17:00:00-05:00)\n", *until)
			return exitUsage
		}
		a.Until = t
	}
	if code := c.open(); code >= 0 {
		return code
	}
	defer c.reg.Close()
	q, err := c.reg.Approve(context.Background(), pos[0], a)
	if err != nil {
		return c.fail("approve", err)
	}
	who := q.Grant.Subject.String()
	if q.Grant.User != "" {
		who = "user " + q.Grant.User
	}
	fmt.Fprintf(c.stdout, "%s approved: %s may reach %s until %s (running servers apply it within %s)\n",
		q.ID, who, strings.Join(q.Grant.Services, ", "), c.local(q.Grant.NotAfter), c.cfg.Exceptions.GrantPoll+time.Second)
	return exitOK
}

func (c *exceptionsCLI) extend(args []string) int {
	fs := c.flagSet("extend")
	forD := fs.String("for", "", "move the grant's end `DURATION` later (4h, 7d)")
	until := fs.String("until", "", "move the grant's end to `TIME` (RFC 3339)")
	by := fs.String("by", "", "your `NAME` (recorded in the audit log)")
	note := fs.String("note", "", "a `TEXT` kept with the decision")
	pos, code := c.parse(fs, args, 1)
	if code >= 0 {
		return code
	}
	x := exceptions.Extension{By: *by, Note: *note}
	switch {
	case *by == "":
		fmt.Fprintln(c.stderr, "balise exceptions extend: --by NAME is required")
		return exitUsage
	case (*forD == "") == (*until == ""):
		fmt.Fprintln(c.stderr, "balise exceptions extend: give exactly one of --for DURATION and --until RFC3339")
		return exitUsage
	case *forD != "":
		d, err := exceptions.ParseDuration(*forD)
		if err != nil || d <= 0 {
			fmt.Fprintf(c.stderr, "balise exceptions extend: --for: invalid duration %q\n", *forD)
			return exitUsage
		}
		x.For = d
	default:
		t, err := time.Parse(time.RFC3339, *until)
		if err != nil {
			fmt.Fprintf(c.stderr, "balise exceptions extend: --until: %q is not an RFC 3339 time (2026-11-20T17:00:00-05:00)\n", *until)
			return exitUsage
		}
		x.Until = t
	}
	if code := c.open(); code >= 0 {
		return code
	}
	defer c.reg.Close()
	q, err := c.reg.Extend(context.Background(), pos[0], x)
	if err != nil {
		return c.fail("extend", err)
	}
	fmt.Fprintf(c.stdout, "%s extended: the grant now ends %s (running servers apply it within %s)\n",
		q.ID, c.local(q.Grant.NotAfter), c.cfg.Exceptions.GrantPoll+time.Second)
	return exitOK
}

func (c *exceptionsCLI) close(cmd string, args []string) int {
	fs := c.flagSet(cmd)
	by := fs.String("by", "", "your `NAME` (recorded in the audit log)")
	reason := fs.String("reason", "", "the `TEXT` of the reason (recorded in the audit log)")
	pos, code := c.parse(fs, args, 1)
	if code >= 0 {
		return code
	}
	if *by == "" || *reason == "" {
		fmt.Fprintf(c.stderr, "balise exceptions %s: --by NAME and --reason TEXT are required\n", cmd)
		return exitUsage
	}
	if code := c.open(); code >= 0 {
		return code
	}
	defer c.reg.Close()
	var q exceptions.Request
	var err error
	if cmd == "deny" {
		q, err = c.reg.Deny(context.Background(), pos[0], *by, *reason)
	} else {
		q, err = c.reg.Revoke(context.Background(), pos[0], *by, *reason)
	}
	if err != nil {
		return c.fail(cmd, err)
	}
	if cmd == "deny" {
		fmt.Fprintf(c.stdout, "%s denied\n", q.ID)
	} else {
		fmt.Fprintf(c.stdout, "%s revoked: %s no longer reaches %s (running servers apply it within %s)\n",
			q.ID, q.Grant.Subject, strings.Join(q.Services, ", "), c.cfg.Exceptions.GrantPoll+time.Second)
	}
	return exitOK
}

func (c *exceptionsCLI) export(args []string) int {
	fs := c.flagSet("export")
	format := fs.String("format", "", "csv or json")
	since := fs.String("since", "", "only events at or after `DATE` (YYYY-MM-DD or RFC 3339)")
	by := fs.String("by", "", "your `NAME` (recorded in the audit log; default: the login name)")
	if _, code := c.parse(fs, args, 0); code >= 0 {
		return code
	}
	if *format != "csv" && *format != "json" {
		fmt.Fprintln(c.stderr, "balise exceptions export: --format csv or --format json is required")
		return exitUsage
	}
	if code := c.open(); code >= 0 {
		return code
	}
	defer c.reg.Close()
	var from time.Time
	if *since != "" {
		var err error
		if from, err = time.Parse(time.RFC3339, *since); err != nil {
			if from, err = time.ParseInLocation("2006-01-02", *since, c.cfg.Location); err != nil {
				fmt.Fprintf(c.stderr, "balise exceptions export: --since: %q is neither YYYY-MM-DD nor RFC 3339\n", *since)
				return exitUsage
			}
		}
	}
	if _, err := c.reg.Export(context.Background(), c.stdout, *format, from, actor(*by)); err != nil {
		return c.fail("export", err)
	}
	return exitOK
}

func (c *exceptionsCLI) verify(args []string) int {
	fs := c.flagSet("verify")
	if _, code := c.parse(fs, args, 0); code >= 0 {
		return code
	}
	c.verifying = true
	if code := c.open(); code >= 0 {
		return code
	}
	defer c.reg.Close()
	if err := c.reg.Verify(context.Background()); err != nil {
		fmt.Fprintf(c.stderr, "balise exceptions verify: FAILED: %v\n", err)
		return exitInvalid
	}
	reqs, _ := c.reg.List(context.Background(), "")
	if c.cfg.Exceptions.Postgres() {
		h, err := c.reg.ChainHead(context.Background())
		if err != nil {
			return c.fail("verify", err)
		}
		fmt.Fprintf(c.stdout, "audit log OK: %s (audit_events): %d events, chain intact and matching the register (%d requests); head %s\n",
			exceptions.RedactURL(c.cfg.Exceptions.Store), h.Seq, len(reqs), h.Hash)
		return exitOK
	}
	events, err := countLines(c.cfg.Exceptions.AuditLog)
	if err != nil {
		return c.fail("verify", err)
	}
	fmt.Fprintf(c.stdout, "audit log OK: %s: %d events, chain intact and matching the register (%d requests)\n",
		c.cfg.Exceptions.AuditLog, events, len(reqs))
	return exitOK
}

func (c *exceptionsCLI) purge(args []string) int {
	fs := c.flagSet("purge")
	older := fs.String("older-than", "", "remove decided requests received more than `DURATION` ago (default: [exceptions] retention)")
	by := fs.String("by", "", "your `NAME` (recorded in the audit log; default: the login name)")
	if _, code := c.parse(fs, args, 0); code >= 0 {
		return code
	}
	var d time.Duration
	if *older != "" {
		var err error
		if d, err = exceptions.ParseDuration(*older); err != nil || d <= 0 {
			fmt.Fprintf(c.stderr, "balise exceptions purge: --older-than: invalid duration %q\n", *older)
			return exitUsage
		}
	}
	if code := c.open(); code >= 0 {
		return code
	}
	defer c.reg.Close()
	if d == 0 {
		d = c.cfg.Exceptions.Retention
	}
	ids, err := c.reg.Purge(context.Background(), d, actor(*by))
	if err != nil {
		return c.fail("purge", err)
	}
	fmt.Fprintf(c.stdout, "purged %d requests received before %s", len(ids), c.local(time.Now().Add(-d)))
	if len(ids) > 0 {
		fmt.Fprintf(c.stdout, ": %s", strings.Join(ids, " "))
	}
	fmt.Fprintln(c.stdout)
	return exitOK
}

func (c *exceptionsCLI) printJSON(v any) int {
	enc := json.NewEncoder(c.stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return c.fail("json", err)
	}
	return exitOK
}

// oneLine makes requester-typed text safe for a terminal: control
// characters (escape sequences included) become visible escapes, and the
// text is cut at max characters (0: no cut).
func oneLine(s string, max int) string {
	var b strings.Builder
	n := 0
	for _, r := range s {
		if max > 0 && n == max {
			b.WriteString("…")
			break
		}
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			fmt.Fprintf(&b, "\\x%02x", r)
		} else {
			b.WriteRune(r)
		}
		n++
	}
	return b.String()
}

// actor is the officer's name for the log: --by, else the login name.
func actor(by string) string {
	if by != "" {
		return by
	}
	for _, k := range []string{"SUDO_USER", "USER", "LOGNAME"} {
		if v := os.Getenv(k); v != "" {
			return v
		}
	}
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return "unknown"
}

func countLines(path string) (int, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	return strings.Count(string(data), "\n"), err
}
