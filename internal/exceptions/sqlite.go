package exceptions

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	_ "modernc.org/sqlite" // the "sqlite" database/sql driver
)

// migrations bring a store from schema version i to i+1 (PRAGMA
// user_version). Append only; never edit a released step.
var migrations = []string{
	`CREATE TABLE meta (
		key   TEXT PRIMARY KEY,
		value TEXT NOT NULL
	);
	CREATE TABLE requests (
		id            TEXT PRIMARY KEY,
		created_ns    INTEGER NOT NULL,
		client        TEXT NOT NULL,
		user          TEXT NOT NULL DEFAULT '',
		name          TEXT NOT NULL DEFAULT '',
		contact       TEXT NOT NULL DEFAULT '',
		services      TEXT NOT NULL,
		host          TEXT NOT NULL DEFAULT '',
		justification TEXT NOT NULL DEFAULT '',
		duration_ns   INTEGER NOT NULL,
		lang          TEXT NOT NULL DEFAULT '',
		status        TEXT NOT NULL,
		decided_by    TEXT NOT NULL DEFAULT '',
		decided_ns    INTEGER NOT NULL DEFAULT 0,
		note          TEXT NOT NULL DEFAULT '',
		grant_subject TEXT,
		grant_user    TEXT,
		grant_services TEXT,
		grant_not_before_ns INTEGER,
		grant_not_after_ns  INTEGER,
		grant_by      TEXT,
		revoked_ns    INTEGER,
		revoked_by    TEXT
	);
	CREATE INDEX requests_client ON requests (client, created_ns);
	CREATE INDEX requests_status ON requests (status, created_ns);
	CREATE INDEX requests_created ON requests (created_ns);`,
	// 2: break credit spent, kept only for the credit's window (credit_store.go).
	creditSchema,
}

// SQLiteStore is the embedded Store: one SQLite file in WAL mode with
// synchronous commits; every Update is an immediate transaction, so that
// writers queue on the database lock (up to a 10 s busy timeout) instead
// of failing with SQLITE_BUSY.
type SQLiteStore struct {
	db *sql.DB
}

// OpenSQLite opens (creating it and its directory when missing) the store
// at path and brings its schema up to date.
func OpenSQLite(ctx context.Context, path string) (*SQLiteStore, error) {
	if path == "" {
		return nil, errors.New("exceptions store: empty path")
	}
	if strings.ContainsAny(path, "?#") {
		return nil, fmt.Errorf("exceptions store %s: path must not contain '?' or '#'", path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("exceptions store: %w", err)
	}
	// The register holds personal data: create it private. SQLite gives
	// its -wal and -shm files the database file's permissions.
	if f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600); err == nil {
		f.Close()
	}
	dsn := path + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)" +
		"&_pragma=synchronous(FULL)&_pragma=foreign_keys(1)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("exceptions store %s: %w", path, err)
	}
	// Each connection has its own cache and lock state; a few suffice.
	db.SetMaxOpenConns(4)
	db.SetMaxIdleConns(2)
	s := &SQLiteStore{db: db}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("exceptions store %s: %w", path, err)
	}
	return s, nil
}

func (s *SQLiteStore) migrate(ctx context.Context) error {
	tx, err := s.db.BeginTx(ctx, nil) // immediate: one migrator at a time
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var v int
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return err
	}
	if v > len(migrations) {
		return fmt.Errorf("schema version %d is newer than this program knows (%d)", v, len(migrations))
	}
	if v == len(migrations) {
		return nil
	}
	for ; v < len(migrations); v++ {
		if _, err := tx.ExecContext(ctx, migrations[v]); err != nil {
			return fmt.Errorf("migration %d: %w", v+1, err)
		}
	}
	if _, err := tx.ExecContext(ctx, "PRAGMA user_version = "+strconv.Itoa(v)); err != nil {
		return err
	}
	return tx.Commit()
}

// Close closes the database.
func (s *SQLiteStore) Close() error { return s.db.Close() }

// Update implements Store.
func (s *SQLiteStore) Update(ctx context.Context, fn func(Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("exceptions store: begin: %w", err)
	}
	if err := fn(sqliteTx{ctx, tx}); err != nil {
		tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("exceptions store: commit: %w", err)
	}
	return nil
}

// View implements Store. Reads run in a deferred transaction, a snapshot
// in WAL mode that never waits for writers.
func (s *SQLiteStore) View(ctx context.Context, fn func(ReadTx) error) error {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("exceptions store: %w", err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "BEGIN DEFERRED"); err != nil {
		return fmt.Errorf("exceptions store: begin: %w", err)
	}
	defer conn.ExecContext(context.WithoutCancel(ctx), "ROLLBACK")
	return fn(sqliteTx{ctx, conn})
}

type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

type sqliteTx struct {
	ctx context.Context
	q   querier
}

const requestColumns = `id, created_ns, client, user, name, contact, services, host,
	justification, duration_ns, lang, status, decided_by, decided_ns, note,
	grant_subject, grant_user, grant_services, grant_not_before_ns,
	grant_not_after_ns, grant_by, revoked_ns, revoked_by`

type scanner interface{ Scan(dest ...any) error }

// requestRows are the rows of a request query, database/sql's and pgx's
// alike.
type requestRows interface {
	scanner
	Next() bool
	Err() error
}

// collectRequests reads every request of rows; the caller closes them.
func collectRequests(rows requestRows) ([]Request, error) {
	var out []Request
	for rows.Next() {
		r, err := scanRequest(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// filterClause writes f as SQL conditions to append to a WHERE clause
// ("" or " AND …"), with the n-th argument's placeholder from ph (n from
// 1), and returns the arguments.
func filterClause(f Filter, ph func(n int) string) (string, []any) {
	var b strings.Builder
	var args []any
	cond := func(expr string, v any) {
		args = append(args, v)
		b.WriteString(" AND " + expr + " " + ph(len(args)))
	}
	if f.Status != "" {
		cond("status =", string(f.Status))
	}
	if f.Client.IsValid() {
		cond("client =", f.Client.String())
	}
	if !f.Since.IsZero() {
		cond("created_ns >=", f.Since.UnixNano())
	}
	if !f.Before.IsZero() {
		cond("created_ns <", f.Before.UnixNano())
	}
	return b.String(), args
}

func scanRequest(sc scanner) (Request, error) {
	var (
		r                            Request
		createdNS, durNS, decidedNS  int64
		client, services             string
		gSubject, gUser, gServices   sql.NullString
		gNotBefore, gNotAfter, revNS sql.NullInt64
		gBy, revBy                   sql.NullString
		status                       string
	)
	err := sc.Scan(&r.ID, &createdNS, &client, &r.User, &r.Name, &r.Contact, &services, &r.Host,
		&r.Justification, &durNS, &r.Lang, &status, &r.DecidedBy, &decidedNS, &r.Note,
		&gSubject, &gUser, &gServices, &gNotBefore, &gNotAfter, &gBy, &revNS, &revBy)
	if err != nil {
		return r, err
	}
	r.Created = fromNS(createdNS)
	r.Duration = time.Duration(durNS)
	r.Decided = fromNS(decidedNS)
	r.Status = Status(status)
	if r.Client, err = netip.ParseAddr(client); err != nil {
		return r, fmt.Errorf("request %s: client: %w", r.ID, err)
	}
	if err := json.Unmarshal([]byte(services), &r.Services); err != nil {
		return r, fmt.Errorf("request %s: services: %w", r.ID, err)
	}
	if gNotAfter.Valid {
		g := &Grant{
			User:      gUser.String,
			NotBefore: fromNS(gNotBefore.Int64),
			NotAfter:  fromNS(gNotAfter.Int64),
			GrantedBy: gBy.String,
			RequestID: r.ID,
			RevokedBy: revBy.String,
		}
		if revNS.Valid {
			g.Revoked = fromNS(revNS.Int64)
		}
		if gSubject.String != "" {
			if g.Subject, err = netip.ParsePrefix(gSubject.String); err != nil {
				return r, fmt.Errorf("request %s: grant subject: %w", r.ID, err)
			}
		}
		if err := json.Unmarshal([]byte(gServices.String), &g.Services); err != nil {
			return r, fmt.Errorf("request %s: grant services: %w", r.ID, err)
		}
		r.Grant = g
	}
	return r, nil
}

func toNS(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNS(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

func (t sqliteTx) Request(id string) (Request, error) {
	row := t.q.QueryRowContext(t.ctx, "SELECT "+requestColumns+" FROM requests WHERE id = ?", id)
	r, err := scanRequest(row)
	if errors.Is(err, sql.ErrNoRows) {
		return r, fmt.Errorf("%w %s", ErrNotFound, quote(id))
	}
	return r, err
}

func (t sqliteTx) Requests(f Filter) ([]Request, error) {
	where, args := filterClause(f, func(int) string { return "?" })
	rows, err := t.q.QueryContext(t.ctx, "SELECT "+requestColumns+" FROM requests WHERE 1=1"+where+" ORDER BY created_ns, id", args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	return collectRequests(rows)
}

func (t sqliteTx) meta(key string) (string, error) {
	var v string
	err := t.q.QueryRowContext(t.ctx, "SELECT value FROM meta WHERE key = ?", key).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return v, err
}

func (t sqliteTx) setMeta(key, value string) error {
	_, err := t.q.ExecContext(t.ctx,
		"INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
		key, value)
	return err
}

func (t sqliteTx) Head() (Head, error) {
	v, err := t.meta("audit_head")
	if err != nil || v == "" {
		return Head{Hash: zeroHash}, err
	}
	var h Head
	if err := json.Unmarshal([]byte(v), &h); err != nil {
		return h, fmt.Errorf("audit head: %w", err)
	}
	return h, nil
}

func (t sqliteTx) SetHead(h Head) error {
	b, _ := json.Marshal(h)
	return t.setMeta("audit_head", string(b))
}

func (t sqliteTx) NextID() (string, error) {
	v, err := t.meta("next_request")
	if err != nil {
		return "", err
	}
	n := int64(1)
	if v != "" {
		if n, err = strconv.ParseInt(v, 10, 64); err != nil {
			return "", fmt.Errorf("next_request: %w", err)
		}
	}
	if err := t.setMeta("next_request", strconv.FormatInt(n+1, 10)); err != nil {
		return "", err
	}
	return FormatID(n), nil
}

// FormatID returns the id of the n-th request ("EX-0042").
func FormatID(n int64) string { return fmt.Sprintf("EX-%04d", n) }

func (t sqliteTx) PutRequest(r Request) error {
	services, _ := json.Marshal(r.Services)
	var (
		gSubject, gUser, gServices, gBy, revBy sql.NullString
		gNotBefore, gNotAfter, revNS           sql.NullInt64
	)
	if g := r.Grant; g != nil {
		if g.Subject.IsValid() {
			gSubject = sql.NullString{String: g.Subject.String(), Valid: true}
		} else {
			gSubject = sql.NullString{Valid: true}
		}
		gUser = sql.NullString{String: g.User, Valid: true}
		gs, _ := json.Marshal(g.Services)
		gServices = sql.NullString{String: string(gs), Valid: true}
		gBy = sql.NullString{String: g.GrantedBy, Valid: true}
		gNotBefore = sql.NullInt64{Int64: toNS(g.NotBefore), Valid: true}
		gNotAfter = sql.NullInt64{Int64: toNS(g.NotAfter), Valid: true}
		if !g.Revoked.IsZero() {
			revNS = sql.NullInt64{Int64: toNS(g.Revoked), Valid: true}
			revBy = sql.NullString{String: g.RevokedBy, Valid: true}
		}
	}
	_, err := t.q.ExecContext(t.ctx, `INSERT OR REPLACE INTO requests (`+requestColumns+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		r.ID, toNS(r.Created), r.Client.String(), r.User, r.Name, r.Contact, string(services), r.Host,
		r.Justification, int64(r.Duration), r.Lang, string(r.Status), r.DecidedBy, toNS(r.Decided), r.Note,
		gSubject, gUser, gServices, gNotBefore, gNotAfter, gBy, revNS, revBy)
	return err
}

func (t sqliteTx) DeleteRequest(id string) error {
	_, err := t.q.ExecContext(t.ctx, "DELETE FROM requests WHERE id = ?", id)
	return err
}
