package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/balise-net/balise/config"
	"github.com/balise-net/balise/internal/directory"
	"github.com/balise-net/balise/internal/exceptions"
	"github.com/balise-net/balise/internal/identity"
)

const identityUsage = `usage: balise identity reveal --config FILE --by NAME --reason TEXT
                       [--candidate NAME]... [--candidates FILE] PSEUDONYM

reveal turns a pseudonym of the proxy's decision lines (u-...) back into
the user name it stands for, for an investigation. It recomputes the
pseudonyms of the candidate names: the users of the exception register's
requests and grants, the configuration's [[group]] users, every user of
[directory], and the names given with --candidate or in --candidates (one
per line). Every reveal,
found or not, is recorded in the exception register's audit chain with
NAME, TEXT and the pseudonym (never the name). Exit 0: found; 1: not found
or an error; 2: usage.
`

// stringsFlag is a repeatable string flag.
type stringsFlag []string

func (s *stringsFlag) String() string { return strings.Join(*s, ",") }

func (s *stringsFlag) Set(v string) error {
	*s = append(*s, v)
	return nil
}

// identityCLI is one run of `balise identity reveal`.
type identityCLI struct {
	stdout, stderr io.Writer
	// directory lists the directory's users as more candidates
	// (directoryUsers; tests may replace it). Reveal tries every name it
	// yields.
	directory func(ctx context.Context, cfg *config.Config, yield func(name string) bool) error
}

// runIdentity runs `balise identity ...` (args after "identity").
func runIdentity(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, identityUsage)
		return exitUsage
	}
	c := &identityCLI{stdout: stdout, stderr: stderr, directory: directoryUsers}
	switch args[0] {
	case "reveal":
		return c.reveal(args[1:])
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, identityUsage)
		return exitOK
	}
	fmt.Fprintf(stderr, "balise identity: unknown command %q\n%s", args[0], identityUsage)
	return exitUsage
}

func (c *identityCLI) usage(format string, args ...any) int {
	fmt.Fprintf(c.stderr, "balise identity reveal: "+format+"\n", args...)
	return exitUsage
}

func (c *identityCLI) fail(format string, args ...any) int {
	fmt.Fprintf(c.stderr, "balise identity reveal: "+format+"\n", args...)
	return exitInvalid
}

func (c *identityCLI) reveal(args []string) int {
	fset := newFlagSet("identity reveal", c.stderr)
	fset.Usage = func() { fmt.Fprint(c.stderr, identityUsage) }
	cfgPath := fset.String("config", "", "configuration `FILE` (with an [exceptions] table)")
	by := fset.String("by", "", "the officer's `NAME`, recorded in the audit chain")
	reason := fset.String("reason", "", "why (an investigation, a complaint number), recorded in the audit chain")
	var names stringsFlag
	fset.Var(&names, "candidate", "a user `NAME` to try as well (repeatable)")
	namesFile := fset.String("candidates", "", "a `FILE` of user names to try as well, one per line")
	var pos []string
	for {
		if err := fset.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return exitOK
			}
			return exitUsage
		}
		if fset.NArg() == 0 {
			break
		}
		pos = append(pos, fset.Arg(0))
		args = fset.Args()[1:]
	}
	switch {
	case len(pos) != 1:
		return c.usage("want one PSEUDONYM (u-... as decision lines carry it)")
	case *cfgPath == "":
		return c.usage("--config FILE is required")
	}
	pseudonym := strings.TrimSpace(pos[0])
	rec := exceptions.Reveal{By: *by, Reason: *reason, Pseudonym: pseudonym}
	if err := exceptions.CheckReveal(rec); err != nil {
		return c.usage("%v", err)
	}
	if err := identity.CheckPseudonym(pseudonym); err != nil {
		return c.usage("%q: %v", pseudonym, err)
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return c.fail("%s", problemText(err))
	}
	if cfg.Exceptions == nil {
		return c.fail("%s has no [exceptions] table: a reveal must be recorded in the exception register's audit chain", *cfgPath)
	}
	key, err := identity.ReadKey(cfg.Identity.KeyFile)
	if errors.Is(err, fs.ErrNotExist) {
		return c.fail("no pseudonym key at %s (identity.key_file): balise serve creates it; without it no pseudonym can be revealed", cfg.Identity.KeyFile)
	} else if err != nil {
		return c.fail("%v", err)
	}
	ps, err := identity.NewPseudonyms(key, identity.LogPseudonym)
	if err != nil {
		return c.fail("%v", err)
	}
	ctx := context.Background()
	reg, code := c.openRegister(ctx, cfg)
	if code >= 0 {
		return code
	}
	defer reg.Close()
	candidates, err := c.candidates(ctx, cfg, reg, names, *namesFile)
	if err != nil {
		return c.fail("%v", err)
	}
	found := ps.Match(pseudonym, slices.Values(candidates))
	rec.Found = len(found)
	// The reveal is recorded before the name is shown: a reveal that
	// cannot be recorded shows nothing.
	if err := reg.RecordReveal(ctx, rec); err != nil {
		return c.fail("not recorded, nothing revealed: %v", err)
	}
	if len(found) == 0 {
		return c.fail("%s: no candidate name matches (%d names tried; the reveal is recorded). Add names with --candidate or --candidates", pseudonym, len(candidates))
	}
	for _, n := range found {
		fmt.Fprintf(c.stdout, "%s\t%s\n", pseudonym, n)
	}
	return exitOK
}

// openRegister opens the exception register of cfg for one write.
func (c *identityCLI) openRegister(ctx context.Context, cfg *config.Config) (*exceptions.Register, int) {
	ex := cfg.Exceptions
	st, err := exceptions.OpenSQLite(ctx, ex.Store)
	if err != nil {
		return nil, c.fail("%v", err)
	}
	reg, err := exceptions.Open(ctx, exceptions.Options{Store: st, CloseStore: true, AuditLog: ex.AuditLog})
	if err != nil {
		st.Close()
		return nil, c.fail("%v", err)
	}
	return reg, -1
}

// candidates gathers the names to try: the register's users, the
// configuration's users, the names given, then the directory's (when
// c.directory is set).
func (c *identityCLI) candidates(ctx context.Context, cfg *config.Config, reg *exceptions.Register, given []string, file string) ([]string, error) {
	var out []string
	reqs, err := reg.List(ctx, "")
	if err != nil {
		return nil, err
	}
	for _, q := range reqs {
		out = append(out, q.User)
		if q.Grant != nil {
			out = append(out, q.Grant.User)
		}
	}
	for _, g := range cfg.Groups {
		out = append(out, g.Users...)
	}
	out = append(out, given...)
	if file != "" {
		f, err := os.Open(file)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if line := strings.TrimSpace(sc.Text()); line != "" && !strings.HasPrefix(line, "#") {
				out = append(out, line)
			}
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("%s: %v", file, err)
		}
	}
	if c.directory != nil {
		err := c.directory(ctx, cfg, func(name string) bool {
			out = append(out, name)
			return true
		})
		if err != nil {
			// The other candidates are still tried; say what was not.
			fmt.Fprintf(c.stderr, "balise identity reveal: directory: %v (its users were not tried)\n", err)
		}
	}
	seen := map[string]bool{}
	uniq := out[:0]
	for _, n := range out {
		if k := identity.Canonical(n); k != "" && !seen[k] {
			seen[k] = true
			uniq = append(uniq, n)
		}
	}
	return uniq, nil
}

// loadPseudonyms returns the pseudonyms of cfg's [identity], creating the
// key file (0600, 32 random bytes) when it is missing. serve calls it at
// start when it wires authentication: without the key, decision lines
// cannot carry pseudonyms and serve must not start.
func loadPseudonyms(cfg *config.Config) (*identity.Pseudonyms, error) {
	key, err := identity.LoadOrCreateKey(cfg.Identity.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("identity.key_file: %w", err)
	}
	return identity.NewPseudonyms(key, cfg.Identity.Log)
}

// directoryUsers yields every user of [directory] (none without one), so
// that reveal finds anyone the directory knows, not only the names the
// register and the configuration hold.
func directoryUsers(ctx context.Context, cfg *config.Config, yield func(name string) bool) error {
	if cfg.Directory == nil {
		return nil
	}
	dir, err := directory.New(directoryConfig(cfg.Directory))
	if err != nil {
		return err
	}
	defer dir.Close()
	ctx, cancel := context.WithTimeout(ctx, cfg.Directory.Timeout+time.Minute)
	defer cancel()
	return dir.Users(ctx, yield)
}
