package main

import (
	"context"
	"fmt"

	"github.com/balise-net/balise/config"
	"github.com/balise-net/balise/internal/exceptions"
)

// openExceptionsStore opens the register's store named by [exceptions]
// store: the SQLite file, or the PostgreSQL database (password from
// store_password_file) shared by several nodes. app names the connections
// in pg_stat_activity.
func openExceptionsStore(ctx context.Context, ex *config.ExceptionsSection, app string) (exceptions.Store, error) {
	if !ex.Postgres() {
		return exceptions.OpenSQLite(ctx, ex.Store)
	}
	return openPostgres(ctx, ex.Store, ex.StorePasswordFile, app, false)
}

func openPostgres(ctx context.Context, url, passwordFile, app string, readOnly bool) (*exceptions.PGStore, error) {
	pw, err := readPasswordFile(passwordFile)
	if err != nil {
		return nil, err
	}
	return exceptions.OpenPostgres(ctx, exceptions.PGOptions{URL: url, Password: pw, ApplicationName: app, ReadOnly: readOnly})
}

// readPasswordFile reads a password kept on one line ("" for no file); a
// final newline (LF or CRLF) is not part of it.
func readPasswordFile(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	pw, err := config.ReadSecretFile(path)
	if err != nil {
		return "", fmt.Errorf("exceptions.store_password_file: %w", err)
	}
	return pw.Value(), nil
}

// storeName is the store for messages: the file, or the URL (which holds
// no password).
func storeName(ex *config.ExceptionsSection) string {
	if ex.Postgres() {
		return exceptions.RedactURL(ex.Store)
	}
	return ex.Store
}
