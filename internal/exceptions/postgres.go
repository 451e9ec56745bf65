package exceptions

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// pgMigrations bring a PostgreSQL store from schema version i to i+1
// (recorded in schema_migrations). Append only; never edit a released step.
//
// Every row a shared table holds carries "version", the change version of
// the Update that last wrote it (change_version.version, bumped once per
// Update and commit-ordered because Updates are serialized): a node reads
// "the rows whose version is past the last one I saw". A later table shared
// between nodes (identity bindings) gets the same column and is read the
// same way (Stamp on the write side, PGStore.ChangedSince on the read side,
// the same doorbell).
var pgMigrations = []string{
	`CREATE TABLE meta (
		key   text PRIMARY KEY,
		value text NOT NULL
	);
	CREATE TABLE change_version (
		one     boolean PRIMARY KEY DEFAULT true CHECK (one),
		version bigint NOT NULL
	);
	INSERT INTO change_version (one, version) VALUES (true, 0);
	CREATE TABLE requests (
		id            text PRIMARY KEY,
		created_ns    bigint NOT NULL,
		client        text NOT NULL,
		user_name     text NOT NULL DEFAULT '',
		name          text NOT NULL DEFAULT '',
		contact       text NOT NULL DEFAULT '',
		services      text NOT NULL,
		host          text NOT NULL DEFAULT '',
		justification text NOT NULL DEFAULT '',
		duration_ns   bigint NOT NULL,
		lang          text NOT NULL DEFAULT '',
		status        text NOT NULL,
		decided_by    text NOT NULL DEFAULT '',
		decided_ns    bigint NOT NULL DEFAULT 0,
		note          text NOT NULL DEFAULT '',
		grant_subject text,
		grant_user    text,
		grant_services text,
		grant_not_before_ns bigint,
		grant_not_after_ns  bigint,
		grant_by      text,
		revoked_ns    bigint,
		revoked_by    text,
		version       bigint NOT NULL
	);
	CREATE INDEX requests_client ON requests (client, created_ns);
	CREATE INDEX requests_status ON requests (status, created_ns);
	CREATE INDEX requests_created ON requests (created_ns);
	CREATE INDEX requests_version ON requests (version);
	CREATE TABLE audit_events (
		seq    bigint PRIMARY KEY CHECK (seq > 0),
		prev   text NOT NULL,
		hash   text NOT NULL UNIQUE,
		line   text NOT NULL,
		stored timestamptz NOT NULL DEFAULT now()
	);
	CREATE TABLE audit_head (
		one  boolean PRIMARY KEY DEFAULT true CHECK (one),
		seq  bigint NOT NULL,
		hash text NOT NULL
	);
	INSERT INTO audit_head (one, seq, hash) VALUES (true, 0, '` + "0000000000000000000000000000000000000000000000000000000000000000" + `');`,
	// 2: identity bindings shared between nodes (bindings_pg.go): the last
	// authentication of each user from each address, kept binding_ttl.
	`CREATE TABLE identity_bindings (
		addr      text NOT NULL,
		user_name text NOT NULL,
		at_ns     bigint NOT NULL,
		version   bigint NOT NULL,
		PRIMARY KEY (addr, user_name)
	);
	CREATE INDEX identity_bindings_version ON identity_bindings (version);
	CREATE INDEX identity_bindings_at ON identity_bindings (at_ns);`,
	// 3: break credit spent, kept only for the credit's window
	// (credit_store.go); not shared through change versions: the
	// register reads the breaks in progress at every refresh.
	creditSchema,
}

// Advisory lock keys (one 64-bit space per database): the schema
// migration, the Update serialization, and the leader's lock.
const (
	lockMigrate int64 = 0x62616c6973650001 // "balise" 1
	lockUpdate  int64 = 0x62616c6973650002
	lockLeader  int64 = 0x62616c6973650003
)

// changeChannel is the NOTIFY channel rung by every Update that changed
// something; the payload is the new change version.
const changeChannel = "balise_changes"

// PGOptions configures a PostgreSQL store.
type PGOptions struct {
	// URL is the connection URL ("postgres://user@host:5432/db?sslmode=verify-full").
	// Required. It should hold no password: see Password.
	URL string
	// Password is the role's password (from exceptions.store_password_file).
	// Empty: the URL's, or none (peer or certificate authentication).
	Password string
	// ApplicationName names the connections in pg_stat_activity. Empty: "balise".
	ApplicationName string
	// MaxConns bounds the pool. Zero: 8.
	MaxConns int32
	// ConnectTimeout bounds one connection attempt. Zero: 5 s.
	ConnectTimeout time.Duration
	// ReadOnly opens an existing register without migrating it (for
	// `balise explain`): a schema older or newer than this program's is refused.
	ReadOnly bool
}

// PGStore is the Store shared by several Balise nodes: a PostgreSQL
// database. Updates are serialized across every node by a transaction-level
// advisory lock; the audit chain lives in the database (audit_events and
// audit_head), so all nodes append to one chain that cannot fork (seq is the
// primary key and every append holds the head row's lock). Views run in
// read-only repeatable-read transactions (a consistent snapshot).
type PGStore struct {
	pool     *pgxpool.Pool
	connCfg  *pgx.ConnConfig
	readOnly bool

	bell   chan struct{} // Doorbell's, rung (non-blocking) by the listener
	bellMu sync.Mutex
	bells  []chan struct{} // the other subscribers', rung with bell

	listenMu   sync.Mutex
	listenRefs int                // Listen calls running
	listenStop context.CancelFunc // stops the one listening connection
	listenDone chan struct{}      // closed when it stopped

	leaderMu   sync.Mutex
	leaderConn *pgx.Conn // tries for, or holds, the session-level leader lock
	isLeader   bool      // leaderConn holds the lock
}

// OpenPostgres connects to the database at opt.URL and brings its schema
// up to date (under an advisory lock, so several nodes may start at once).
func OpenPostgres(ctx context.Context, opt PGOptions) (*PGStore, error) {
	cfg, err := pgxpool.ParseConfig(opt.URL)
	if err != nil {
		return nil, fmt.Errorf("exceptions store: invalid PostgreSQL URL: %v", redactErr(err))
	}
	if opt.Password != "" {
		cfg.ConnConfig.Password = opt.Password
	}
	if opt.ApplicationName == "" {
		opt.ApplicationName = "balise"
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = opt.ApplicationName
	if opt.ConnectTimeout <= 0 {
		opt.ConnectTimeout = 5 * time.Second
	}
	cfg.ConnConfig.ConnectTimeout = opt.ConnectTimeout
	if opt.MaxConns <= 0 {
		opt.MaxConns = 8
	}
	cfg.MaxConns = opt.MaxConns
	cfg.HealthCheckPeriod = 5 * time.Second
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("exceptions store: %w", pgErr(err))
	}
	s := &PGStore{pool: pool, connCfg: cfg.ConnConfig, readOnly: opt.ReadOnly, bell: make(chan struct{}, 1)}
	if opt.ReadOnly {
		err = s.checkSchema(ctx)
	} else {
		err = s.migrate(ctx)
	}
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("exceptions store %s: %w", RedactURL(opt.URL), err)
	}
	return s, nil
}

// RedactURL returns the URL without its password, for messages.
func RedactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(invalid URL)"
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}

func redactErr(err error) string {
	// pgconn's parse errors may quote the connection string.
	var pe *pgconn.ParseConfigError
	if errors.As(err, &pe) {
		return "cannot parse the URL"
	}
	return err.Error()
}

func (s *PGStore) schemaVersion(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) (int, error) {
	var v int
	err := q.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM schema_migrations`).Scan(&v)
	return v, err
}

// migrate applies the missing migrations, each in its own transaction,
// holding a session advisory lock so that one node migrates while the
// others wait and then find nothing to do.
func (s *PGStore) migrate(ctx context.Context) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return pgErr(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, lockMigrate); err != nil {
		return pgErr(err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, lockMigrate)
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version integer PRIMARY KEY,
		applied timestamptz NOT NULL DEFAULT now())`); err != nil {
		return pgErr(err)
	}
	v, err := s.schemaVersion(ctx, conn)
	if err != nil {
		return pgErr(err)
	}
	if v > len(pgMigrations) {
		return fmt.Errorf("schema version %d is newer than this program knows (%d)", v, len(pgMigrations))
	}
	for ; v < len(pgMigrations); v++ {
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, pgMigrations[v]); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version) VALUES ($1)`, v+1)
			return err
		})
		if err != nil {
			return fmt.Errorf("migration %d: %w", v+1, pgErr(err))
		}
	}
	return nil
}

func (s *PGStore) checkSchema(ctx context.Context) error {
	v, err := s.schemaVersion(ctx, s.pool)
	if err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "42P01" { // undefined_table
			return fmt.Errorf("%w: the database has no register yet", ErrNoStore)
		}
		return pgErr(err)
	}
	switch {
	case v > len(pgMigrations):
		return fmt.Errorf("schema version %d is newer than this program knows (%d)", v, len(pgMigrations))
	case v < len(pgMigrations):
		return fmt.Errorf("schema version %d is older than this program's (%d); start `balise serve` once to migrate it", v, len(pgMigrations))
	}
	return nil
}

// Close releases the leader lock and the connections.
func (s *PGStore) Close() error {
	s.leaderMu.Lock()
	if s.leaderConn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if s.isLeader {
			// Hand over now rather than when the server notices the
			// connection is gone.
			s.leaderConn.Exec(ctx, `SELECT pg_advisory_unlock($1)`, lockLeader)
		}
		s.leaderConn.Close(ctx)
		cancel()
		s.leaderConn, s.isLeader = nil, false
	}
	s.leaderMu.Unlock()
	s.pool.Close()
	return nil
}

// Update implements Store: one transaction that first takes the update
// advisory lock (released at commit or rollback), so Updates from every
// node run one at a time, each seeing every change committed before it.
// A change notifies the other nodes (NOTIFY, delivered at commit).
func (s *PGStore) Update(ctx context.Context, fn func(Tx) error) error {
	if s.readOnly {
		return errors.New("exceptions store: opened read-only")
	}
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		return fmt.Errorf("exceptions store: begin: %w", pgErr(err))
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lockUpdate); err != nil {
		return fmt.Errorf("exceptions store: lock: %w", pgErr(err))
	}
	t := &pgTx{ctx: ctx, q: tx, write: true}
	if err := fn(t); err != nil {
		return pgErr(err)
	}
	if t.version > 0 {
		if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, changeChannel, strconv.FormatInt(t.version, 10)); err != nil {
			return pgErr(err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("exceptions store: commit: %w", pgErr(err))
	}
	return nil
}

// View implements Store with a read-only repeatable-read transaction.
func (s *PGStore) View(ctx context.Context, fn func(ReadTx) error) error {
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("exceptions store: begin: %w", pgErr(err))
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	return pgErr(fn(&pgTx{ctx: ctx, q: tx}))
}

// Doorbell returns a channel that receives (at most one pending value) when
// another node, or this one, committed a change. It rings only while
// Listen runs; a missed ring is caught by the periodic re-read.
func (s *PGStore) Doorbell() <-chan struct{} { return s.bell }

// subscribe returns another doorbell, rung with Doorbell's, for a second
// reader of changes (the identity bindings' follower), and the function
// that retires it.
func (s *PGStore) subscribe() (<-chan struct{}, func()) {
	c := make(chan struct{}, 1)
	s.bellMu.Lock()
	s.bells = append(s.bells, c)
	s.bellMu.Unlock()
	return c, func() {
		s.bellMu.Lock()
		defer s.bellMu.Unlock()
		for i, b := range s.bells {
			if b == c {
				s.bells = append(s.bells[:i], s.bells[i+1:]...)
				return
			}
		}
	}
}

func (s *PGStore) ring() {
	ring := func(b chan struct{}) {
		select {
		case b <- struct{}{}:
		default:
		}
	}
	ring(s.bell)
	s.bellMu.Lock()
	defer s.bellMu.Unlock()
	for _, b := range s.bells {
		ring(b)
	}
}

// Listen keeps a connection that LISTENs for changes and rings the
// doorbells, until ctx ends. When the connection is lost it reconnects
// (every retry, at most 1 s apart) and rings once after reconnecting, so
// that whatever was committed while it was away is read. Several Listen
// calls share one connection, kept while any of them runs.
func (s *PGStore) Listen(ctx context.Context, retry time.Duration) {
	s.listenMu.Lock()
	if s.listenRefs == 0 {
		lctx, stop := context.WithCancel(context.WithoutCancel(ctx))
		done := make(chan struct{})
		s.listenStop, s.listenDone = stop, done
		go func() {
			defer close(done)
			s.listen(lctx, retry)
		}()
	}
	s.listenRefs++
	s.listenMu.Unlock()
	<-ctx.Done()
	s.listenMu.Lock()
	s.listenRefs--
	var done chan struct{}
	if s.listenRefs == 0 {
		s.listenStop()
		done = s.listenDone
	}
	s.listenMu.Unlock()
	if done != nil {
		<-done
	}
}

func (s *PGStore) listen(ctx context.Context, retry time.Duration) {
	if retry <= 0 || retry > time.Second {
		retry = time.Second
	}
	for ctx.Err() == nil {
		cfg := s.connCfg.Copy()
		cfg.RuntimeParams["application_name"] = s.connCfg.RuntimeParams["application_name"] + "-listen"
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err == nil {
			if _, err = conn.Exec(ctx, "LISTEN "+changeChannel); err == nil {
				s.ring()
				for {
					if _, err = conn.WaitForNotification(ctx); err != nil {
						break
					}
					s.ring()
				}
			}
			conn.Close(context.WithoutCancel(ctx))
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(retry):
		}
	}
}

// Leader reports whether this node holds the leader's lock, trying to take
// it when free: the node that holds it writes expiry and retention events,
// the others skip them. The lock is a session lock on a dedicated
// connection, kept by leader and followers alike; when the leader's
// connection dies the lock is freed and another node takes it.
func (s *PGStore) Leader(ctx context.Context) bool {
	s.leaderMu.Lock()
	defer s.leaderMu.Unlock()
	if s.leaderConn != nil && s.leaderConn.Ping(ctx) != nil {
		s.leaderConn.Close(context.WithoutCancel(ctx))
		s.leaderConn, s.isLeader = nil, false
	}
	if s.leaderConn == nil {
		cfg := s.connCfg.Copy()
		cfg.RuntimeParams["application_name"] = s.connCfg.RuntimeParams["application_name"] + "-leader"
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			return false
		}
		s.leaderConn = conn
	}
	if !s.isLeader {
		var got bool
		if err := s.leaderConn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, lockLeader).Scan(&got); err != nil {
			s.leaderConn.Close(context.WithoutCancel(ctx))
			s.leaderConn = nil
			return false
		}
		s.isLeader = got
	}
	return s.isLeader
}

// pgQuerier is what pgTx needs of a pgx transaction.
type pgQuerier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

type pgTx struct {
	ctx     context.Context
	q       pgQuerier
	write   bool
	version int64 // this Update's change version, once bumped
}

const pgRequestColumns = `id, created_ns, client, user_name, name, contact, services, host,
	justification, duration_ns, lang, status, decided_by, decided_ns, note,
	grant_subject, grant_user, grant_services, grant_not_before_ns,
	grant_not_after_ns, grant_by, revoked_ns, revoked_by`

// bump returns this Update's change version, bumping change_version the
// first time.
func (t *pgTx) bump() (int64, error) {
	if t.version == 0 {
		if err := t.q.QueryRow(t.ctx, `UPDATE change_version SET version = version + 1 RETURNING version`).Scan(&t.version); err != nil {
			return 0, err
		}
	}
	return t.version, nil
}

func (t *pgTx) Request(id string) (Request, error) {
	r, err := scanRequest(t.q.QueryRow(t.ctx, "SELECT "+pgRequestColumns+" FROM requests WHERE id = $1", id))
	if errors.Is(err, pgx.ErrNoRows) {
		return r, fmt.Errorf("%w %s", ErrNotFound, quote(id))
	}
	return r, err
}

func (t *pgTx) Requests(f Filter) ([]Request, error) {
	where, args := filterClause(f, func(n int) string { return "$" + strconv.Itoa(n) })
	return t.queryRequests("SELECT "+pgRequestColumns+" FROM requests WHERE true"+where+" ORDER BY created_ns, id", args...)
}

func (t *pgTx) queryRequests(q string, args ...any) ([]Request, error) {
	rows, err := t.q.Query(t.ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	return collectRequests(rows)
}

// ChangeVersion returns the version of the last committed change.
func (t *pgTx) ChangeVersion() (int64, error) {
	var v int64
	err := t.q.QueryRow(t.ctx, `SELECT version FROM change_version`).Scan(&v)
	return v, err
}

// RequestsSince returns the requests written by changes after version v,
// oldest change first.
func (t *pgTx) RequestsSince(v int64) ([]Request, error) {
	return t.queryRequests("SELECT "+pgRequestColumns+" FROM requests WHERE version > $1 ORDER BY version, id", v)
}

// Stamp returns this Update's change version, to write in the "version"
// column of the rows it writes to a shared table other than requests
// (which PutRequest stamps itself); the doorbell rings at commit.
func (t *pgTx) Stamp() (int64, error) { return t.bump() }

// ChangedSince is the read side of a table shared the way requests are:
// in one consistent snapshot it calls fn with each row of table (columns
// as given) whose version is past since, in version order, and returns the
// change version to pass as since next time. It is the hook for sharing
// more than requests between nodes (identity bindings): give the table a
// "version bigint NOT NULL" column filled with Stamp.
func (s *PGStore) ChangedSince(ctx context.Context, table string, columns []string, since int64, fn func(pgx.Rows) error) (int64, error) {
	cols := make([]string, len(columns))
	for i, c := range columns {
		cols[i] = pgx.Identifier{c}.Sanitize()
	}
	var version int64
	err := s.View(ctx, func(rt ReadTx) error {
		t := rt.(*pgTx)
		var err error
		if version, err = t.ChangeVersion(); err != nil || version == since {
			return err
		}
		rows, err := t.q.Query(ctx, "SELECT "+strings.Join(cols, ", ")+" FROM "+pgx.Identifier{table}.Sanitize()+
			" WHERE version > $1 ORDER BY version", since)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			if err := fn(rows); err != nil {
				return err
			}
		}
		return rows.Err()
	})
	return version, err
}

func (t *pgTx) Head() (Head, error) {
	q := `SELECT seq, hash FROM audit_head`
	if t.write {
		q += ` FOR UPDATE` // appenders queue here too, whatever else holds
	}
	var h Head
	err := t.q.QueryRow(t.ctx, q).Scan(&h.Seq, &h.Hash)
	return h, err
}

func (t *pgTx) SetHead(h Head) error {
	_, err := t.q.Exec(t.ctx, `UPDATE audit_head SET seq = $1, hash = $2`, h.Seq, h.Hash)
	return err
}

// AppendEvent stores one audit line whose seq, prev and hash are e's.
func (t *pgTx) AppendEvent(seq int64, prev, hash string, line []byte) error {
	if _, err := t.bump(); err != nil {
		return err
	}
	_, err := t.q.Exec(t.ctx, `INSERT INTO audit_events (seq, prev, hash, line) VALUES ($1, $2, $3, $4)`,
		seq, prev, hash, string(line))
	return err
}

// EventHash returns the hash of the stored line seq ("" when absent).
func (t *pgTx) EventHash(seq int64) (string, error) {
	var h string
	err := t.q.QueryRow(t.ctx, `SELECT hash FROM audit_events WHERE seq = $1`, seq).Scan(&h)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	return h, err
}

// Events calls fn with every audit line at or after seq from, in order.
func (t *pgTx) Events(from int64, fn func(seq int64, hash string, line []byte) error) error {
	rows, err := t.q.Query(t.ctx, `SELECT seq, hash, line FROM audit_events WHERE seq >= $1 ORDER BY seq`, from)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var (
			seq        int64
			hash, line string
		)
		if err := rows.Scan(&seq, &hash, &line); err != nil {
			return err
		}
		if err := fn(seq, hash, []byte(line)); err != nil {
			return err
		}
	}
	return rows.Err()
}

func (t *pgTx) meta(key string) (string, error) {
	var v string
	err := t.q.QueryRow(t.ctx, "SELECT value FROM meta WHERE key = $1", key).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	return v, err
}

func (t *pgTx) setMeta(key, value string) error {
	_, err := t.q.Exec(t.ctx,
		"INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
		key, value)
	return err
}

func (t *pgTx) NextID() (string, error) {
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

func (t *pgTx) PutRequest(r Request) error {
	version, err := t.bump()
	if err != nil {
		return err
	}
	services, _ := json.Marshal(r.Services)
	var (
		gSubject, gUser, gServices, gBy, revBy sql.NullString
		gNotBefore, gNotAfter, revNS           sql.NullInt64
	)
	if g := r.Grant; g != nil {
		gSubject = sql.NullString{Valid: true}
		if g.Subject.IsValid() {
			gSubject.String = g.Subject.String()
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
	_, err = t.q.Exec(t.ctx, pgUpsert,
		r.ID, toNS(r.Created), r.Client.String(), r.User, r.Name, r.Contact, string(services), r.Host,
		r.Justification, int64(r.Duration), r.Lang, string(r.Status), r.DecidedBy, toNS(r.Decided), r.Note,
		gSubject, gUser, gServices, gNotBefore, gNotAfter, gBy, revNS, revBy, version)
	return err
}

// pgUpsert inserts or replaces a request, stamping its change version.
var pgUpsert = func() string {
	cols := strings.Split(strings.Join(strings.Fields(pgRequestColumns), ""), ",")
	cols = append(cols, "version")
	ph := make([]string, len(cols))
	set := make([]string, 0, len(cols))
	for i, c := range cols {
		ph[i] = "$" + strconv.Itoa(i+1)
		if c != "id" {
			set = append(set, c+" = excluded."+c)
		}
	}
	return "INSERT INTO requests (" + strings.Join(cols, ", ") + ") VALUES (" + strings.Join(ph, ", ") +
		") ON CONFLICT (id) DO UPDATE SET " + strings.Join(set, ", ")
}()

func (t *pgTx) DeleteRequest(id string) error {
	if _, err := t.bump(); err != nil {
		return err
	}
	_, err := t.q.Exec(t.ctx, "DELETE FROM requests WHERE id = $1", id)
	return err
}

// ErrUnavailable: the register's store cannot be reached (PostgreSQL down
// or unreachable). Nothing was recorded; the caller may retry later. Grants
// already known stay in force.
var ErrUnavailable = errors.New("exceptions store temporarily unavailable")

// pgErr marks the errors that mean "the database cannot be reached" with
// ErrUnavailable and leaves the others (constraint violations, the
// register's own errors) as they are.
func pgErr(err error) error {
	if err == nil || errors.Is(err, ErrUnavailable) || !unreachable(err) {
		return err
	}
	return fmt.Errorf("%w: %v", ErrUnavailable, err)
}

func unreachable(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		// 08: connection exception; 53: insufficient resources;
		// 57P01-57P03: admin/crash shutdown, cannot connect now.
		return strings.HasPrefix(pe.Code, "08") || strings.HasPrefix(pe.Code, "53") ||
			pe.Code == "57P01" || pe.Code == "57P02" || pe.Code == "57P03"
	}
	var ce *pgconn.ConnectError
	var ne net.Error
	switch {
	case errors.As(err, &ce), errors.As(err, &ne), pgconn.Timeout(err), pgconn.SafeToRetry(err),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "conn closed") || strings.Contains(msg, "closed pool") ||
		strings.Contains(msg, "connection reset") || strings.Contains(msg, "broken pipe")
}
