package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/balise-net/balise/config"
	"github.com/balise-net/balise/internal/exceptions"
	"github.com/balise-net/balise/internal/policy"
	"github.com/balise-net/balise/proxy"
)

// The register's web side is what the proxy shows on block pages.
var _ proxy.Exceptions = (*exceptions.Web)(nil)

// startExceptions starts the exception register when the configuration
// has an [exceptions] table: it opens the store (and the audit log, with
// an embedded store), sets rt.exceptions to the register's web side (the
// request form behind the block page, an *exceptions.Web), installs the
// current grants, and follows the store (exceptions.Register.Follow):
// every grant_poll, and on a PostgreSQL store as soon as another node's
// change rings, approvals, revocations and expiries reach the policy.
// While the store is unreachable the last grants stay in force. It stops
// when ctx ends.
//
// Changes to [exceptions] take effect at the next restart.
func startExceptions(ctx context.Context, rt *runtime) error {
	ex := rt.cfg.Exceptions
	if ex == nil {
		return nil
	}
	st, err := openExceptionsStore(ctx, ex, "balise")
	if err != nil {
		return err
	}
	m := &exceptionsRunner{rt: rt, ex: ex}
	var notifier *exceptions.Notifier
	opt := exceptions.Options{
		Store: st, CloseStore: true, AuditLog: ex.AuditLog, Durations: ex.Durations,
		MaxPendingPerClient: ex.MaxPendingPerClient, MaxPerDayPerClient: ex.MaxPerDayPerClient,
		ValidService:      func(id string) bool { _, ok := rt.policy.Load().LookupService(id); return ok },
		PendingAlertAfter: ex.PendingAlertAfter,
		Registerer:        rt.reg,
		Clock:             rt.now,
		Logger:            rt.log,
	}
	if ex.NotifyURL != "" {
		notifier = exceptions.NewNotifier(exceptions.NotifierOptions{URL: ex.NotifyURL, Format: ex.NotifyFormat, Timeout: ex.NotifyTimeout, Logger: rt.log})
		opt.Notify = notifier.Enqueue
	}
	reg, err := exceptions.Open(ctx, opt)
	if err != nil {
		st.Close()
		return err
	}
	// With PostgreSQL, identity bindings are shared between nodes through
	// the register (nil with SQLite).
	share, err := reg.ShareBindings(exceptions.BindingShareOptions{
		TTL: rt.cfg.Identity.BindingTTL, Registerer: rt.reg, Clock: rt.now, Logger: rt.log})
	if err != nil {
		reg.Close()
		return err
	}
	rt.bindingShare = share
	if err := reg.Repair(ctx); errors.Is(err, exceptions.ErrAudit) {
		// Filtering goes on; requests and decisions fail until the
		// officer restores the log.
		rt.log.Error("exception audit log does not match the register: no request can be recorded until it is restored (see balise exceptions verify)", "error", err)
	} else if err != nil {
		reg.Close()
		return err
	}
	if notifier != nil {
		notifier.SetMetrics(reg.Metrics())
	}
	key, err := exceptions.LoadKey(filepath.Join(ex.StateDir, "csrf.key"))
	if err != nil {
		reg.Close()
		return fmt.Errorf("exceptions: CSRF key: %w", err)
	}
	cw := creditWiring{rt: rt}
	if err := reg.SetCredits(cw.plans, rt.reg); err != nil {
		reg.Close()
		return err
	}
	web, err := exceptions.NewWeb(exceptions.WebOptions{
		Credits:   cw.covering,
		CreditsOf: cw.of,
		UserOf:    cw.userOf,
		Register:  reg,
		Tokens:    exceptions.NewTokens(key, 0),
		ServiceName: func(id string) string {
			if s, ok := rt.policy.Load().LookupService(id); ok && s.Name != "" {
				return s.Name
			}
			return id
		},
		Logger:     rt.log,
		Clock:      rt.now,
		StatusBase: rt.cfg.Proxy.PortalURL,
		Location:   rt.cfg.Location,
	})
	if err != nil {
		reg.Close()
		return err
	}
	m.reg = reg
	// The first snapshot is installed before the front-ends start.
	if err := m.poll(ctx); err != nil {
		m.lastErr = err
		rt.log.Error("exception register unavailable", "error", err)
	}
	rt.exceptions = web
	if notifier != nil {
		rt.wg.Go(func() { notifier.Run(ctx) })
	}
	rt.wg.Go(func() {
		defer reg.Close()
		reg.Follow(ctx, exceptions.FollowOptions{Poll: ex.GrantPoll, Apply: m.apply, AfterRefresh: m.retention})
	})
	rt.onReload(func(c *config.Config) {
		if !reflect.DeepEqual(c.Exceptions, ex) {
			rt.log.Warn("changes to [exceptions] take effect at the next restart")
		}
	})
	audit := ex.AuditLog
	if ex.Postgres() {
		audit = "(in the database)"
	}
	rt.log.Info("exception register open", "store", storeName(ex), "audit_log", audit,
		"grants", len(m.last), "grant_poll", ex.GrantPoll.String())
	return nil
}

// exceptionsRunner installs the register's grants and runs retention.
type exceptionsRunner struct {
	rt  *runtime
	ex  *config.ExceptionsSection
	reg *exceptions.Register

	mu       sync.Mutex
	last     []policy.Grant
	lastErr  error
	lastPurg time.Time
}

// poll reads the register once (before the front-ends start) and installs
// the grants.
func (m *exceptionsRunner) poll(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	grants, _, err := m.reg.Refresh(ctx, m.rt.now())
	if grants != nil {
		m.apply(grants)
	}
	return err
}

// apply installs the grants when they changed.
func (m *exceptionsRunner) apply(grants []policy.Grant) {
	m.mu.Lock()
	same := slices.EqualFunc(grants, m.last, exceptions.EqualGrant)
	if !same {
		m.last = grants
	}
	m.mu.Unlock()
	if !same {
		m.rt.SetGrants(grants)
		breaks := 0
		for _, g := range grants {
			if g.Credit != "" {
				breaks++
			}
		}
		// Breaks in progress travel with the grants (policy.Grant.Credit);
		// only their number is logged, never whose they are.
		m.rt.log.Info("exception grants updated", "grants", len(grants)-breaks, "breaks", breaks)
	}
}

// retention purges decided requests older than [exceptions] retention,
// at most once an hour; a purge that removes nothing is not recorded.
func (m *exceptionsRunner) retention(ctx context.Context) {
	now := m.rt.now()
	if now.Sub(m.lastPurg) < time.Hour || m.ex.Retention <= 0 {
		return
	}
	m.lastPurg = now
	ids, err := m.reg.PurgeExpired(ctx, m.ex.Retention)
	if err != nil {
		m.rt.log.Error("exception retention purge failed", "error", err)
	} else if len(ids) > 0 {
		m.rt.log.Info("exception requests purged (retention)", "count", len(ids), "retention", m.ex.Retention.String())
	}
}
