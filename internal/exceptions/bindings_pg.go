package exceptions

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/balise-net/balise/internal/identity"
)

// BindingShareOptions configures a BindingShare. The zero value holds the
// defaults.
type BindingShareOptions struct {
	// TTL is [identity] binding_ttl: bindings older than that are not
	// applied and the leader deletes them from the database. Zero: 30
	// minutes.
	TTL time.Duration
	// Queue bounds the local binds waiting for the database (while it is
	// down); beyond it binds are dropped and counted. Zero: 4096.
	Queue int
	// Refresh is the shortest time between two publications of one user
	// on one address (identity.OutboxOptions.Refresh). Zero: TTL/60,
	// between 1 s and 1 minute.
	Refresh time.Duration
	// Poll is the time between two reads of the database when no change
	// rang. Zero: 1 s; at most 2 s.
	Poll time.Duration
	// PurgeEvery is the time between two deletions of expired bindings by
	// the leader. Zero: 1 minute (or TTL, when shorter).
	PurgeEvery time.Duration
	// Registerer receives balise_identity_shared_published_total,
	// balise_identity_shared_dropped_total,
	// balise_identity_shared_applied_total and
	// balise_identity_shared_queued (no address nor user in any label).
	// Nil: not registered.
	Registerer prometheus.Registerer
	// Clock gives the time. Nil: time.Now.
	Clock func() time.Time
	// Logger receives the loss and the return of the database (never a
	// binding). Nil: slog.Default().
	Logger *slog.Logger
}

// BindingShare shares identity bindings between the nodes of one
// PostgreSQL register: Publish (Bindings' OnBind) queues this node's
// binds, Run writes them to identity_bindings and applies the other
// nodes' to the local Bindings. A nil *BindingShare (no shared store)
// does nothing.
type BindingShare struct {
	store *PGStore
	opt   BindingShareOptions
	out   *identity.Outbox

	published, applied atomic.Uint64
	running            atomic.Bool
}

// flushDelay gathers the binds of a burst into one write: a node writes,
// and rings the others, at most about 20 times a second.
const flushDelay = 50 * time.Millisecond

// ShareBindings returns the sharing of identity bindings through this
// store (see BindingShare); Run starts it.
func (s *PGStore) ShareBindings(opt BindingShareOptions) (*BindingShare, error) {
	if opt.TTL <= 0 {
		opt.TTL = 30 * time.Minute
	}
	if opt.Poll <= 0 {
		opt.Poll = time.Second
	}
	opt.Poll = min(opt.Poll, 2*time.Second)
	if opt.PurgeEvery <= 0 {
		opt.PurgeEvery = min(time.Minute, opt.TTL)
	}
	if opt.Clock == nil {
		opt.Clock = time.Now
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	sh := &BindingShare{store: s, opt: opt,
		out: identity.NewOutbox(identity.OutboxOptions{TTL: opt.TTL, Max: opt.Queue, Refresh: opt.Refresh})}
	if r := opt.Registerer; r != nil {
		for _, c := range []prometheus.Collector{
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "balise_identity_shared_published_total",
				Help: "Identity bindings of this node written to the shared register for the other nodes."},
				func() float64 { return float64(sh.published.Load()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "balise_identity_shared_dropped_total",
				Help: "Identity bindings of this node not shared because the queue was full (register unavailable)."},
				func() float64 { return float64(sh.out.Stats().Dropped) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "balise_identity_shared_applied_total",
				Help: "Identity bindings read from the shared register and applied on this node."},
				func() float64 { return float64(sh.applied.Load()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "balise_identity_shared_queued",
				Help: "Identity bindings of this node waiting to be written to the shared register."},
				func() float64 { return float64(sh.out.Stats().Queued) }),
		} {
			if err := r.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return sh, nil
}

// ShareBindings returns the sharing of identity bindings through the
// register's store when it is shared (PostgreSQL); nil, and no error,
// with a store of this node's own (SQLite), where there is nothing to
// share. The methods of a nil *BindingShare do nothing.
func (r *Register) ShareBindings(opt BindingShareOptions) (*BindingShare, error) {
	s, ok := r.opt.Store.(*PGStore)
	if !ok {
		return nil, nil
	}
	return s.ShareBindings(opt)
}

// Publish queues a binding recorded on this node for the others; it is
// meant as identity.Options.OnBind. It never blocks: while the database
// is unreachable at most Queue binds wait, the others are dropped and
// counted.
func (sh *BindingShare) Publish(x identity.Binding) {
	if sh != nil {
		sh.out.Publish(x)
	}
}

// BindingShareStats are a BindingShare's figures (no address, no user).
type BindingShareStats struct {
	// Published counts bindings written to the database.
	Published uint64
	// Dropped counts binds not shared because the queue was full.
	Dropped uint64
	// Applied counts bindings read from the database and applied.
	Applied uint64
	// Queued is the number of binds waiting for the database.
	Queued int
}

// Stats returns the current figures.
func (sh *BindingShare) Stats() BindingShareStats {
	if sh == nil {
		return BindingShareStats{}
	}
	o := sh.out.Stats()
	return BindingShareStats{Published: sh.published.Load(), Dropped: o.Dropped,
		Applied: sh.applied.Load(), Queued: o.Queued}
}

// Run shares bindings until ctx ends: it writes the binds Publish queued
// (batched, upserted by address and user, each write ringing the other
// nodes), applies to b the bindings changed since the last version read
// (on every ring and every Poll; after a loss of the database it reads
// everything it missed), and, on the leader node only, deletes the
// bindings older than TTL every PurgeEvery, so that no one's logins are
// kept longer. While the database is unreachable b keeps answering from
// what it holds, and Run retries at least every second. Run is called
// once; a nil *BindingShare returns at once.
func (sh *BindingShare) Run(ctx context.Context, b *identity.Bindings) {
	if sh == nil || b == nil || !sh.running.CompareAndSwap(false, true) {
		return
	}
	bell, unsubscribe := sh.store.subscribe()
	defer unsubscribe()
	var wg sync.WaitGroup
	wg.Go(func() { sh.store.Listen(ctx, time.Second) })
	wg.Go(func() { sh.flushLoop(ctx) })
	sh.follow(ctx, b, bell)
	wg.Wait()
}

// follow applies the changed bindings to b and purges, until ctx ends.
func (sh *BindingShare) follow(ctx context.Context, b *identity.Bindings, bell <-chan struct{}) {
	log := sh.opt.Logger
	var since int64
	var lastErr error
	var lastPurge time.Time
	for {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		v, err := sh.read(rctx, b, since)
		if err == nil {
			since = v
			if time.Since(lastPurge) >= sh.opt.PurgeEvery {
				if err = sh.purge(rctx, sh.opt.Clock()); err == nil {
					lastPurge = time.Now()
				}
			}
		}
		cancel()
		if ctx.Err() != nil {
			return
		}
		switch {
		case err != nil && lastErr == nil:
			log.Error("shared identity bindings: register unavailable, each node answers from the bindings it holds", "error", err)
		case err == nil && lastErr != nil:
			log.Info("shared identity bindings: register available again")
		}
		lastErr = err
		wait := sh.opt.Poll
		if err != nil {
			wait = min(wait, time.Second)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-bell:
		case <-t.C:
		}
		t.Stop()
	}
}

// read applies to b the bindings changed since version since that are
// not older than TTL, and returns the version read.
func (sh *BindingShare) read(ctx context.Context, b *identity.Bindings, since int64) (int64, error) {
	now := sh.opt.Clock().UnixNano()
	ttl := int64(sh.opt.TTL)
	return sh.store.ChangedSince(ctx, "identity_bindings", []string{"addr", "user_name", "at_ns"}, since,
		func(rows pgx.Rows) error {
			var (
				addr, user string
				at         int64
			)
			if err := rows.Scan(&addr, &user, &at); err != nil {
				return err
			}
			a, err := netip.ParseAddr(addr)
			if err != nil || at+ttl <= now {
				return nil // not ours to judge; expired: the leader deletes it
			}
			b.Apply(identity.Binding{Addr: a, User: user, At: time.Unix(0, at)})
			sh.applied.Add(1)
			return nil
		})
}

// purge deletes, on the leader only, the bindings older than TTL at now.
func (sh *BindingShare) purge(ctx context.Context, now time.Time) error {
	if !sh.store.Leader(ctx) {
		return nil
	}
	_, err := sh.store.pool.Exec(ctx, `DELETE FROM identity_bindings WHERE at_ns <= $1`,
		now.UnixNano()-int64(sh.opt.TTL))
	return pgErr(err)
}

// flushLoop writes the queued binds until ctx ends, then tries once more
// (for at most a second) so that the last binds are not lost on a restart.
func (sh *BindingShare) flushLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			sh.flush(fctx)
			cancel()
			return
		case <-sh.out.Ready():
		}
		t := time.NewTimer(flushDelay)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
		for sh.flush(ctx) != nil && ctx.Err() == nil {
			t := time.NewTimer(time.Second)
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
		}
	}
}

// flush writes the queued binds in one transaction; on failure they go
// back to the queue (within its bound).
func (sh *BindingShare) flush(ctx context.Context) error {
	xs := sh.out.Take()
	if len(xs) == 0 {
		return nil
	}
	if err := sh.write(ctx, xs); err != nil {
		sh.out.Requeue(xs)
		return err
	}
	sh.published.Add(uint64(len(xs)))
	return nil
}

// write upserts xs, keyed by address and user, stamped with one change
// version (which rings every node at commit).
func (sh *BindingShare) write(ctx context.Context, xs []identity.Binding) error {
	addrs := make([]string, len(xs))
	users := make([]string, len(xs))
	ats := make([]int64, len(xs))
	for i, x := range xs {
		addrs[i], users[i], ats[i] = x.Addr.String(), x.User, x.At.UnixNano()
	}
	return sh.store.Update(ctx, func(tx Tx) error {
		t, ok := tx.(*pgTx)
		if !ok {
			return errors.New("identity bindings: not a PostgreSQL transaction")
		}
		v, err := t.Stamp()
		if err != nil {
			return err
		}
		_, err = t.q.Exec(t.ctx, `INSERT INTO identity_bindings AS b (addr, user_name, at_ns, version)
			SELECT a, u, n, $4 FROM unnest($1::text[], $2::text[], $3::bigint[]) AS x (a, u, n)
			ON CONFLICT (addr, user_name) DO UPDATE
			SET at_ns = greatest(b.at_ns, excluded.at_ns), version = excluded.version`,
			addrs, users, ats, v)
		return err
	})
}
