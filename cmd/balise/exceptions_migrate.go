package main

import (
	"context"
	"fmt"
	"net/url"

	"github.com/balise-net/balise/config"
	"github.com/balise-net/balise/internal/exceptions"
)

// migrate runs `balise exceptions migrate --to URL`: the configured
// embedded register (SQLite and its audit log) is copied, chain included,
// into an empty PostgreSQL database, and the copy verified.
func (c *exceptionsCLI) migrate(args []string) int {
	fs := c.flagSet("migrate")
	to := fs.String("to", "", "the target PostgreSQL `URL` (postgres://USER@HOST/DB?sslmode=verify-full; no password in it)")
	pwFile := fs.String("password-file", "", "`FILE` holding the target's password on one line (default: [exceptions] store_password_file)")
	if _, code := c.parse(fs, args, 0); code >= 0 {
		return code
	}
	if !config.IsPostgresURL(*to) {
		fmt.Fprintln(c.stderr, "balise exceptions migrate: --to postgres://USER@HOST/DB is required")
		return exitUsage
	}
	if u, err := url.Parse(*to); err != nil {
		fmt.Fprintln(c.stderr, "balise exceptions migrate: --to: invalid URL")
		return exitUsage
	} else if _, ok := u.User.Password(); ok || u.Query().Has("password") {
		fmt.Fprintln(c.stderr, "balise exceptions migrate: --to must not hold a password: use --password-file FILE")
		return exitUsage
	}
	if code := c.open(); code >= 0 {
		return code
	}
	defer c.reg.Close()
	ex := c.cfg.Exceptions
	if ex.Postgres() {
		return c.fail("migrate", fmt.Errorf("the register in %s is already in PostgreSQL", c.config))
	}
	if *pwFile == "" {
		*pwFile = ex.StorePasswordFile
	}
	ctx := context.Background()
	dst, err := openPostgres(ctx, *to, *pwFile, "balise-migrate", false)
	if err != nil {
		return c.fail("migrate", err)
	}
	defer dst.Close()
	res, err := c.reg.MigrateTo(ctx, dst)
	if err != nil {
		return c.fail("migrate", err)
	}
	fmt.Fprintf(c.stdout, "migrated %d requests and %d audit events from %s and %s to %s; the copy verifies (chain head seq %d, %s)\n",
		res.Requests, res.Head.Seq, ex.Store, ex.AuditLog, exceptions.RedactURL(*to), res.Head.Seq, res.Head.Hash)
	fmt.Fprintf(c.stdout, "next: set [exceptions] store = %q (and store_password_file) on every node, then start balise serve\n", exceptions.RedactURL(*to))
	return exitOK
}
