package exceptions

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/balise-net/balise/internal/policy"
)

// cache holds the register's open requests (pending and approved) as last
// read from the store: the grants it gives stay in force while the store
// is unreachable (fail static), and a store with change versions is read
// only for what changed since.
type cache struct {
	syncMu  sync.Mutex // one sync at a time
	mu      sync.Mutex
	loaded  bool
	version int64
	open    map[string]Request
}

func isOpen(s Status) bool { return s == StatusPending || s == StatusApproved }

// sync brings the cache up to date: with a versioned store, the requests
// changed since the last version seen; otherwise every open request.
func (r *Register) sync(ctx context.Context) error {
	c := &r.cache
	c.syncMu.Lock()
	defer c.syncMu.Unlock()
	c.mu.Lock()
	loaded, since := c.loaded, c.version
	c.mu.Unlock()
	return r.opt.Store.View(ctx, func(tx ReadTx) error {
		vt, versioned := tx.(versionedReadTx)
		if versioned && loaded {
			v, err := vt.ChangeVersion()
			if err != nil || v == since {
				return err
			}
			changed, err := vt.RequestsSince(since)
			if err != nil {
				return err
			}
			c.mu.Lock()
			for _, q := range changed {
				if isOpen(q.Status) {
					c.open[q.ID] = q
				} else {
					delete(c.open, q.ID)
				}
			}
			c.version = v
			c.mu.Unlock()
			return nil
		}
		var v int64
		if versioned {
			var err error
			if v, err = vt.ChangeVersion(); err != nil {
				return err
			}
		}
		open := map[string]Request{}
		for _, st := range []Status{StatusPending, StatusApproved} {
			reqs, err := tx.Requests(Filter{Status: st})
			if err != nil {
				return err
			}
			for _, q := range reqs {
				open[q.ID] = q
			}
		}
		c.mu.Lock()
		c.open, c.version, c.loaded = open, v, true
		c.mu.Unlock()
		return nil
	})
}

// leader reports whether this node writes expiry and retention events:
// always with a store of its own, only the lock holder with a shared one.
func (r *Register) leader(ctx context.Context) bool {
	l := true
	if s, ok := r.opt.Store.(sharedStore); ok {
		l = s.Leader(ctx)
	}
	if l {
		r.metrics.leader.Set(1)
	} else {
		r.metrics.leader.Set(0)
	}
	return l
}

// Refresh is the server's periodic task: it reads what changed in the
// store, marks grants that ended by now as expired (one expired event
// each; on a shared store only the leader does), updates the gauges, and
// returns the grants to hand to the policy engine. When the expiry events
// cannot be written (a damaged audit log), Refresh still returns the
// grants in force, which never include ended ones, with the error. When
// the store cannot be read the grants are nil (keep the last ones: Grants
// returns them).
func (r *Register) Refresh(ctx context.Context, now time.Time) ([]policy.Grant, Stats, error) {
	if err := r.sync(ctx); err != nil {
		r.metrics.storeUp.Set(0)
		return nil, Stats{}, err
	}
	r.metrics.storeUp.Set(1)
	var ended []string
	r.cache.mu.Lock()
	for id, q := range r.cache.open {
		if q.Status == StatusApproved && q.Grant != nil && !now.Before(q.Grant.NotAfter) {
			ended = append(ended, id)
		}
	}
	r.cache.mu.Unlock()
	slices.Sort(ended)
	var expireErr error
	if leader := r.leader(ctx); len(ended) > 0 && leader {
		var gone []string // purged meanwhile: no change version tells of a deletion
		expireErr = r.update(ctx, func(tx Tx, _ time.Time) ([]Event, error) {
			var events []Event
			gone = gone[:0]
			for _, id := range ended {
				q, err := tx.Request(id)
				if errors.Is(err, ErrNotFound) {
					gone = append(gone, id)
					continue
				}
				if err != nil {
					return nil, err
				}
				if q.Status != StatusApproved || now.Before(q.Grant.NotAfter) {
					continue // decided meanwhile by another process
				}
				q.Status = StatusExpired
				if err := tx.PutRequest(q); err != nil {
					return nil, err
				}
				events = append(events, Event{Event: EventExpired, ID: q.ID, Client: q.Client.String(),
					Services: q.Services, NotAfter: formatTime(q.Grant.NotAfter), Actor: "balise"})
			}
			return events, nil
		})
		if expireErr == nil {
			r.cache.mu.Lock()
			for _, id := range gone {
				delete(r.cache.open, id)
			}
			r.cache.mu.Unlock()
			r.sync(ctx)
		}
	}
	grants, st := r.snapshot(now)
	r.metrics.observe(st, now)
	grants = r.refreshBreaks(ctx, grants, now)
	if expireErr != nil {
		return grants, st, fmt.Errorf("recording expired grants: %w", expireErr)
	}
	return grants, st, nil
}

// snapshot computes the grants not ended at now and the gauges from the
// cache. The grants are non-nil (a computed snapshot), ordered by request.
func (r *Register) snapshot(now time.Time) ([]policy.Grant, Stats) {
	r.cache.mu.Lock()
	open := make([]Request, 0, len(r.cache.open))
	for _, q := range r.cache.open {
		open = append(open, q)
	}
	r.cache.mu.Unlock()
	slices.SortFunc(open, func(a, b Request) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return compareStrings(a.ID, b.ID)
	})
	var st Stats
	grants := []policy.Grant{}
	for _, q := range open {
		switch q.Status {
		case StatusPending:
			st.Pending++
			if st.OldestPending.IsZero() {
				st.OldestPending = q.Created
			}
			if now.Sub(q.Created) > r.opt.PendingAlertAfter {
				st.Overdue++
			}
		case StatusApproved:
			if g := q.Grant; g != nil && g.Revoked.IsZero() && now.Before(g.NotAfter) {
				grants = append(grants, g.Policy())
				if g.Active(now) {
					st.ActiveGrants++
				}
			}
		}
	}
	return grants, st
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Grants returns the grants not ended at now as last read from the store,
// without reading it: while the store is unreachable they are the last
// ones known (fail static). Nil before the first successful Refresh.
func (r *Register) Grants(now time.Time) []policy.Grant {
	r.cache.mu.Lock()
	loaded := r.cache.loaded
	r.cache.mu.Unlock()
	if !loaded {
		return nil
	}
	g, _ := r.snapshot(now)
	return r.withBreaks(g, now)
}

// FollowOptions configures Follow.
type FollowOptions struct {
	// Poll is the time between two reads of the store when nothing rang.
	// Zero: 1 s. While the store is unreachable Follow retries at least
	// every second whatever Poll is.
	Poll time.Duration
	// Apply receives the grants whenever they changed (and the first
	// time they could be read). Nil: not called.
	Apply func([]policy.Grant)
	// AfterRefresh runs after every refresh (the server's retention task).
	AfterRefresh func(ctx context.Context)
}

// Follow keeps the register current until ctx ends: it calls Refresh every
// Poll and, on a shared store, whenever another node's change rings the
// doorbell (LISTEN/NOTIFY; a ring lost during a reconnect is caught by the
// next poll, since every read asks for all changes past the last version
// seen). While the store is unreachable the last grants stay in force
// (Apply is not called), balise_exceptions_store_up is 0, and Follow
// retries every second; it logs the loss and the return. It logs the audit
// chain's head every ChainLogInterval.
func (r *Register) Follow(ctx context.Context, opt FollowOptions) {
	if opt.Poll <= 0 {
		opt.Poll = time.Second
	}
	var bell <-chan struct{}
	if s, ok := r.opt.Store.(sharedStore); ok {
		bell = s.Doorbell()
		listening := make(chan struct{})
		go func() {
			defer close(listening)
			s.Listen(ctx, time.Second)
		}()
		defer func() { <-listening }() // ctx is done: Listen returns too
	}
	log := r.opt.Logger
	var last []policy.Grant
	var lastErr error
	var lastChain time.Time
	first := true
	for {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		grants, _, err := r.Refresh(rctx, r.now())
		cancel()
		if ctx.Err() != nil {
			return
		}
		if grants != nil && (first || !slices.EqualFunc(grants, last, EqualGrant)) {
			first = false
			last = grants
			if opt.Apply != nil {
				opt.Apply(grants)
			}
		}
		switch {
		case err != nil && (lastErr == nil || err.Error() != lastErr.Error()):
			log.Error("exception register unavailable: the last grants known stay in force", "error", err)
		case err == nil && lastErr != nil:
			log.Info("exception register available again")
		}
		lastErr = err
		if err == nil && r.opt.ChainLogInterval > 0 && time.Since(lastChain) >= r.opt.ChainLogInterval {
			if h, herr := r.head(ctx); herr == nil {
				lastChain = time.Now()
				log.Info("exception audit chain head", "seq", h.Seq, "hash", h.Hash)
			}
		}
		if opt.AfterRefresh != nil {
			opt.AfterRefresh(ctx)
		}
		wait := opt.Poll
		if err != nil && wait > time.Second {
			wait = time.Second
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-bell:
		case <-r.credit.kick: // a break started or ended here
		case <-t.C:
		}
		t.Stop()
	}
}

// ChainHead returns the audit chain's head as the store recorded it.
func (r *Register) ChainHead(ctx context.Context) (Head, error) { return r.head(ctx) }

// head reads the audit chain's head.
func (r *Register) head(ctx context.Context) (Head, error) {
	var h Head
	err := r.opt.Store.View(ctx, func(tx ReadTx) error {
		var err error
		h, err = tx.Head()
		return err
	})
	return h, err
}

// EqualGrant reports whether two grants are the same.
func EqualGrant(a, b policy.Grant) bool {
	return a.ID == b.ID && a.Credit == b.Credit && a.Subject == b.Subject && a.User == b.User && slices.Equal(a.Services, b.Services) &&
		a.NotBefore.Equal(b.NotBefore) && a.NotAfter.Equal(b.NotAfter)
}

// PendingFor returns the oldest pending request from client that names
// service, as last read from the store (no I/O): the block page says a
// request is already waiting instead of offering the form again.
func (r *Register) PendingFor(client netip.Addr, service string) (Request, bool) {
	client = client.Unmap()
	r.cache.mu.Lock()
	defer r.cache.mu.Unlock()
	var out Request
	found := false
	for _, q := range r.cache.open {
		if q.Status != StatusPending || q.Client.Unmap() != client || !slices.Contains(q.Services, service) {
			continue
		}
		if !found || q.Created.Before(out.Created) {
			out, found = q, true
		}
	}
	return out, found
}
