package main

import (
	"errors"
	"fmt"
	"github.com/balise-net/balise/internal/exceptions"
	"github.com/balise-net/balise/internal/identity"
	"log/slog"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/balise-net/balise/config"
	"github.com/balise-net/balise/internal/decisionlog"
	"github.com/balise-net/balise/internal/policy"
)

// runtime is what `balise serve` shares with its front-ends (startDNS,
// startProxy, startExceptions): the current configuration and policy, the
// logger, the metrics registerer, the decision log and the clock.
//
// The start functions run one after the other before the reload loop
// starts, so they may read cfg directly; afterwards use config(), or
// register an onReload hook, which receives every configuration that
// compiled successfully.
type runtime struct {
	// cfg is the configuration currently in force. Written under mu.
	cfg *config.Config

	// policy is the policy the front-ends read on every decision: the
	// compiled configuration (base) with the current grant snapshot.
	policy atomic.Pointer[policy.Policy]

	// reg receives every metric of Balise (never the default registry).
	reg prometheus.Registerer
	// log is the process logger.
	log *slog.Logger
	// decisions writes the deduplicated decision lines (window from
	// [log] decision_window).
	decisions *decisionlog.Logger
	// now is the clock every front-end uses (time.Now outside tests).
	now func() time.Time

	// identity answers who is asking (set by startIdentity when
	// [proxy.auth] mode is "negotiate"; nil: decisions by address only).
	identity *identity.Service
	// bindingShare shares identity bindings with the other nodes through
	// the PostgreSQL register (set by startExceptions; nil with SQLite).
	bindingShare *exceptions.BindingShare

	// exceptions holds the exception register's web front-end, set by
	// startExceptions (nil when [exceptions] is absent). Its concrete type
	// belongs to the exceptions wiring.
	exceptions any

	// wg counts the front-ends' goroutines that must finish before the
	// process exits: a start function calls rt.wg.Go (or Add/Done) for
	// its servers, and makes them return once ctx ends. serve waits for
	// them at shutdown, up to 15 s.
	wg sync.WaitGroup

	// started is set once every front-end has started; /readyz fails
	// before.
	started atomic.Bool

	mu       sync.Mutex
	base     *policy.Policy // compiled configuration, no grants
	grants   []policy.Grant // current grant snapshot
	ready    []readyCheck
	live     []readyCheck
	reloads  []func(*config.Config)
	prepares []func(*config.Config) (func(), error)
	watchers []chan struct{} // signalled when the policy changes
	// listeners are Balise's bound listening addresses (addListeners),
	// which the proxy never connects to.
	listeners []netip.AddrPort
}

type readyCheck struct {
	name  string
	check func() error
}

// newRuntime returns a runtime whose policy is p compiled from cfg.
func newRuntime(cfg *config.Config, p *policy.Policy, reg prometheus.Registerer, log *slog.Logger, now func() time.Time) *runtime {
	if now == nil {
		now = time.Now
	}
	rt := &runtime{
		cfg:       cfg,
		reg:       reg,
		log:       log,
		now:       now,
		decisions: decisionlog.New(log, cfg.Log.DecisionWindow, 0),
	}
	if err := rt.decisions.Register(reg); err != nil {
		log.Warn("decision metrics not registered", "error", err)
	}
	rt.setBase(p)
	return rt
}

// config returns the configuration currently in force.
func (rt *runtime) config() *config.Config {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.cfg
}

// setBase installs a newly compiled policy, keeping the current grant
// snapshot: the front-ends see p.WithGrants(grants).
func (rt *runtime) setBase(p *policy.Policy) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	rt.base = p
	rt.publishLocked()
}

// SetGrants replaces the grant snapshot. It does not recompile anything:
// the compiled configuration is shared (policy.WithGrants).
func (rt *runtime) SetGrants(g []policy.Grant) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	rt.grants = g
	rt.publishLocked()
}

func (rt *runtime) publishLocked() {
	if rt.base == nil {
		return
	}
	rt.policy.Store(rt.base.WithGrants(rt.grants))
	for _, w := range rt.watchers {
		select {
		case w <- struct{}{}:
		default: // a signal is pending already
		}
	}
}

// watchPolicy returns a channel that receives a signal after the policy
// in force changes: a reload, a recompile after a list update, a new
// grant snapshot. Signals coalesce: one pending signal stands for any
// number of changes, so the receiver reads rt.policy afresh.
func (rt *runtime) watchPolicy() <-chan struct{} {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	w := make(chan struct{}, 1)
	rt.watchers = append(rt.watchers, w)
	return w
}

// onPrepare registers f to check a reloaded configuration before anything
// of it is put in force: f returns an error to make the reload fail (the
// running configuration stays), or a function that applies its part of
// cfg, which install runs before the new policy is published.
func (rt *runtime) onPrepare(f func(*config.Config) (apply func(), err error)) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	rt.prepares = append(rt.prepares, f)
}

// prepare runs the onPrepare checks on cfg and returns what applies it,
// or the first error.
func (rt *runtime) prepare(cfg *config.Config) ([]func(), error) {
	rt.mu.Lock()
	fs := slices.Clone(rt.prepares)
	rt.mu.Unlock()
	var applies []func()
	for _, f := range fs {
		apply, err := f(cfg)
		if err != nil {
			return nil, err
		}
		if apply != nil {
			applies = append(applies, apply)
		}
	}
	return applies, nil
}

// addReady registers a readiness check: /readyz answers 200 only while
// every check returns nil. name identifies it in /readyz's body.
func (rt *runtime) addReady(name string, check func() error) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	rt.ready = append(rt.ready, readyCheck{name: name, check: check})
}

// addLive registers a liveness check: the systemd watchdog is fed only
// while every check returns nil, so a front-end whose serving loop hangs
// gets the process restarted. A check must answer within a few seconds.
func (rt *runtime) addLive(name string, check func() error) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	rt.live = append(rt.live, readyCheck{name: name, check: check})
}

// liveness runs every liveness check and returns the first failure.
func (rt *runtime) liveness() error {
	rt.mu.Lock()
	checks := slices.Clone(rt.live)
	rt.mu.Unlock()
	for _, c := range checks {
		if err := c.check(); err != nil {
			return fmt.Errorf("%s: %w", c.name, err)
		}
	}
	return nil
}

// onReload registers f to run after every successful reload, with the new
// configuration, once the new policy is in place. Hooks run one at a time
// on the reload goroutine and must not block for long.
func (rt *runtime) onReload(f func(*config.Config)) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	rt.reloads = append(rt.reloads, f)
}

// readiness runs every readiness check and returns the failures, one
// "name: error" line each, sorted; nil when ready.
func (rt *runtime) readiness() []string {
	rt.mu.Lock()
	checks := slices.Clone(rt.ready)
	loaded := rt.base != nil
	rt.mu.Unlock()
	var failed []string
	if !loaded {
		failed = append(failed, "config: not loaded")
	}
	if !rt.started.Load() {
		failed = append(failed, "startup: in progress")
	}
	for _, c := range checks {
		if err := c.check(); err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", c.name, err))
		}
	}
	sort.Strings(failed)
	return failed
}

// install runs applies (from prepare), makes cfg and its compiled policy
// p current and runs the reload hooks. The applies run first so that the
// policy watchers, signalled by the new policy, see the new settings too.
func (rt *runtime) install(cfg *config.Config, p *policy.Policy, applies ...func()) {
	for _, a := range applies {
		a()
	}
	rt.mu.Lock()
	rt.cfg = cfg
	rt.base = p
	rt.publishLocked()
	hooks := slices.Clone(rt.reloads)
	rt.mu.Unlock()
	for _, h := range hooks {
		h(cfg)
	}
}

// problemText flattens a config error into one line for logs.
func problemText(err error) string {
	var ps config.Problems
	if errors.As(err, &ps) {
		lines := make([]string, 0, len(ps))
		for _, p := range ps {
			lines = append(lines, p.String())
		}
		return strings.Join(lines, "; ")
	}
	return err.Error()
}
