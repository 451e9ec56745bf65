package config

import (
	"strings"
	"testing"
)

// exceptions.store takes a file path or a PostgreSQL URL: a URL is kept
// as is, refused with a password in it, and warned about when its TLS is
// weaker than verify-full to a host beyond loopback.
func TestExceptionsStoreURL(t *testing.T) {
	for _, tc := range []struct {
		store, extra string
		pg           bool
		bad          string
		warn         string
	}{
		{store: "data/b.db", pg: false},
		{store: "postgres://balise@db.example:5432/balise?sslmode=verify-full", pg: true},
		{store: "postgresql://balise@127.0.0.1:5432/balise?sslmode=disable", pg: true},
		{store: "postgres://balise@localhost/balise", pg: true},
		{store: "postgres://balise@[::1]:5432/balise", pg: true},
		{store: "postgres:///balise?host=/run/postgresql", pg: true},
		{store: "postgres://balise@db.example/balise", pg: true, warn: "sslmode=prefer"},
		{store: "postgres://balise@db.example/balise?sslmode=require", pg: true, warn: "sslmode=require"},
		{store: "postgres://balise@127.0.0.1,db.example/balise?sslmode=verify-ca", pg: true, warn: "sslmode=verify-ca"},
		{store: "postgres://balise:secret@db.example/balise?sslmode=verify-full", bad: "must not hold a password"},
		{store: "postgres://balise@db.example/balise?sslmode=verify-full&password=x", bad: "must not hold a password"},
		{store: "data/b.db", extra: `store_password_file = "pw"`, warn: "store_password_file: ignored"},
	} {
		src := "[exceptions]\nstore = \"" + tc.store + "\"\n" + tc.extra + "\n"
		c, err := Parse("/etc/balise/x.toml", []byte(src))
		if tc.bad != "" {
			if err == nil || !strings.Contains(err.Error(), tc.bad) || !strings.Contains(err.Error(), "exceptions.store") {
				t.Errorf("%s: err = %v, want %q", tc.store, err, tc.bad)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.store, err)
			continue
		}
		if got := c.Exceptions.Postgres(); got != tc.pg {
			t.Errorf("%s: Postgres() = %v, want %v", tc.store, got, tc.pg)
		}
		if tc.pg && c.Exceptions.Store != tc.store {
			t.Errorf("Store = %q, want the URL unchanged", c.Exceptions.Store)
		}
		var warns []string
		for _, w := range c.Warnings {
			warns = append(warns, w.String())
		}
		all := strings.Join(warns, "\n")
		if (tc.warn == "") != (len(warns) == 0) || !strings.Contains(all, tc.warn) {
			t.Errorf("%s: warnings %q, want %q", tc.store, all, tc.warn)
		}
	}
	c, err := Parse("/etc/balise/x.toml", []byte("[exceptions]\nstore = \"postgres://b@db/b?sslmode=verify-full\"\nstore_password_file = \"secrets/pg\"\n"))
	if err != nil || c.Exceptions.StorePasswordFile != "/etc/balise/secrets/pg" {
		t.Fatalf("store_password_file = %q, %v; want it resolved from the file's directory", c.Exceptions.StorePasswordFile, err)
	}
}
