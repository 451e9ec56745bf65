package exceptions

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Break credit is kept in its own table, credit_spent, never in the audit
// chain: one row per break (subject, credit, covered services, start and
// end in nanoseconds since the epoch). A row is deleted once its end is
// older than the credit's window: no history of anyone's breaks is kept.

// creditSchema is the table, the same in SQLite and PostgreSQL.
const creditSchema = `CREATE TABLE credit_spent (
		subject  text NOT NULL,
		credit   text NOT NULL,
		services text NOT NULL,
		start_ns bigint NOT NULL,
		end_ns   bigint NOT NULL,
		PRIMARY KEY (subject, credit, start_ns)
	);
	CREATE INDEX credit_spent_end ON credit_spent (end_ns);`

// span is one break as stored.
type span struct {
	subject, credit string
	services        []string
	start, end      int64
}

// creditRunner runs the credit table's statements in one transaction of
// either database; statements are written with "?" placeholders.
type creditRunner struct {
	// notify is set by a change the other nodes must see at once (a
	// break started or ended): PostgreSQL rings their doorbell at commit.
	notify bool
	exec   func(q string, args ...any) (int64, error)
	query  func(q string, args []any, row func(scan func(dest ...any) error) error) error
}

// creditStore is a store that keeps break credit (SQLiteStore, PGStore).
type creditStore interface {
	// creditTx runs fn in one transaction; write transactions are
	// serialized with every other writer of the store.
	creditTx(ctx context.Context, write bool, fn func(*creditRunner) error) error
}

const spanColumns = "subject, credit, services, start_ns, end_ns"

func (c *creditRunner) spans(where string, args ...any) ([]span, error) {
	var out []span
	err := c.query("SELECT "+spanColumns+" FROM credit_spent WHERE "+where+" ORDER BY start_ns, subject, credit", args, func(scan func(...any) error) error {
		var s span
		var svcs string
		if err := scan(&s.subject, &s.credit, &svcs, &s.start, &s.end); err != nil {
			return err
		}
		if svcs != "" {
			s.services = strings.Split(svcs, ",")
		}
		out = append(out, s)
		return nil
	})
	return out, err
}

func (c *creditRunner) insert(s span) error {
	_, err := c.exec("INSERT INTO credit_spent ("+spanColumns+") VALUES (?, ?, ?, ?, ?)",
		s.subject, s.credit, strings.Join(s.services, ","), s.start, s.end)
	return err
}

// SQLite: immediate transactions (the DSN's _txlock) queue on the
// database lock like Update.
func (s *SQLiteStore) creditTx(ctx context.Context, write bool, fn func(*creditRunner) error) error {
	var q querier
	var tx *sql.Tx
	if write {
		var err error
		if tx, err = s.db.BeginTx(ctx, nil); err != nil {
			return fmt.Errorf("exceptions store: begin: %w", err)
		}
		defer tx.Rollback()
		q = tx
	} else {
		// A deferred read, as View: it never waits for writers.
		conn, err := s.db.Conn(ctx)
		if err != nil {
			return fmt.Errorf("exceptions store: %w", err)
		}
		defer conn.Close()
		if _, err := conn.ExecContext(ctx, "BEGIN DEFERRED"); err != nil {
			return fmt.Errorf("exceptions store: begin: %w", err)
		}
		defer conn.ExecContext(context.WithoutCancel(ctx), "ROLLBACK")
		q = conn
	}
	r := &creditRunner{
		exec: func(query string, args ...any) (int64, error) {
			res, err := q.ExecContext(ctx, query, args...)
			if err != nil {
				return 0, err
			}
			return res.RowsAffected()
		},
		query: func(query string, args []any, row func(func(...any) error) error) error {
			rows, err := q.QueryContext(ctx, query, args...)
			if err != nil {
				return err
			}
			defer rows.Close()
			for rows.Next() {
				if err := row(rows.Scan); err != nil {
					return err
				}
			}
			return rows.Err()
		},
	}
	if err := fn(r); err != nil {
		return err
	}
	if tx == nil {
		return nil
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("exceptions store: commit: %w", err)
	}
	return nil
}

// rebind turns "?" placeholders into PostgreSQL's "$n".
func rebind(q string) string {
	var b strings.Builder
	n := 0
	for _, r := range q {
		if r == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// PostgreSQL: a write takes the Update lock (so writers of every node
// queue as for requests) and, when the runner's notify is set, rings the
// other nodes' doorbell at commit, so that a break reaches every
// front-end at once.
func (s *PGStore) creditTx(ctx context.Context, write bool, fn func(*creditRunner) error) error {
	if write && s.readOnly {
		return errors.New("exceptions store: opened read-only")
	}
	opts := pgx.TxOptions{IsoLevel: pgx.ReadCommitted}
	if !write {
		opts = pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}
	}
	tx, err := s.pool.BeginTx(ctx, opts)
	if err != nil {
		return fmt.Errorf("exceptions store: begin: %w", pgErr(err))
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if write {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lockUpdate); err != nil {
			return fmt.Errorf("exceptions store: lock: %w", pgErr(err))
		}
	}
	r := &creditRunner{
		exec: func(q string, args ...any) (int64, error) {
			tag, err := tx.Exec(ctx, rebind(q), args...)
			return tag.RowsAffected(), err
		},
		query: func(q string, args []any, row func(func(...any) error) error) error {
			rows, err := tx.Query(ctx, rebind(q), args...)
			if err != nil {
				return err
			}
			defer rows.Close()
			for rows.Next() {
				if err := row(rows.Scan); err != nil {
					return err
				}
			}
			return rows.Err()
		},
	}
	if err := fn(r); err != nil {
		return pgErr(err)
	}
	if !write {
		return nil
	}
	if r.notify {
		if _, err := tx.Exec(ctx, `SELECT pg_notify($1, (SELECT version::text FROM change_version))`, changeChannel); err != nil {
			return pgErr(err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("exceptions store: commit: %w", pgErr(err))
	}
	return nil
}
