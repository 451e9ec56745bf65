package exceptions

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/balise-net/balise/internal/policy"
)

// ErrNoStore means the register's store does not exist yet: no request
// was ever made, so there are no grants.
var ErrNoStore = errors.New("exceptions store does not exist")

// OpenSQLiteReadOnly opens an existing store for reading only: it never
// creates the file, never migrates the schema and never writes, so that
// `explain` can show live grants next to a running `serve`. A store whose
// schema is newer than this program knows is refused; a missing one is
// ErrNoStore. Update on the returned store fails.
func OpenSQLiteReadOnly(ctx context.Context, path string) (*SQLiteStore, error) {
	if path == "" {
		return nil, errors.New("exceptions store: empty path")
	}
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNoStore, path)
	} else if err != nil {
		return nil, fmt.Errorf("exceptions store: %w", err)
	}
	if strings.ContainsAny(path, "?#") {
		return nil, fmt.Errorf("exceptions store %s: path must not contain '?' or '#'", path)
	}
	u := url.URL{Scheme: "file", Path: path, RawQuery: "mode=ro&_pragma=busy_timeout(10000)&_pragma=query_only(1)"}
	db, err := sql.Open("sqlite", u.String())
	if err != nil {
		return nil, fmt.Errorf("exceptions store %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	var v int
	if err := db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		db.Close()
		return nil, fmt.Errorf("exceptions store %s: %w", path, err)
	}
	if v > len(migrations) {
		db.Close()
		return nil, fmt.Errorf("exceptions store %s: schema version %d is newer than this program knows (%d)", path, v, len(migrations))
	}
	if v < len(migrations) {
		db.Close()
		return nil, fmt.Errorf("exceptions store %s: schema version %d is older than this program's (%d); start `balise serve` once to migrate it", path, v, len(migrations))
	}
	return &SQLiteStore{db: db}, nil
}

// StoreGrants returns the grants of approved requests in st that have not
// ended at now (including grants that start later), as the policy engine
// takes them: the same set Register.ActiveGrants gives `serve`.
func StoreGrants(ctx context.Context, st Store, now time.Time) ([]policy.Grant, error) {
	var reqs []Request
	err := st.View(ctx, func(tx ReadTx) error {
		var err error
		reqs, err = tx.Requests(Filter{Status: StatusApproved})
		return err
	})
	if err != nil {
		return nil, err
	}
	return activeGrants(reqs, now), nil
}

// activeGrants keeps the grants of reqs not revoked and not ended at now.
func activeGrants(reqs []Request, now time.Time) []policy.Grant {
	var out []policy.Grant
	for _, q := range reqs {
		if g := q.Grant; g != nil && g.Revoked.IsZero() && now.Before(g.NotAfter) {
			out = append(out, g.Policy())
		}
	}
	return out
}
