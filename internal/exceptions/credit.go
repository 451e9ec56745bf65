package exceptions

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/balise-net/balise/internal/policy"
)

// CreditPlan is one [[credit]] as the register needs it.
type CreditPlan struct {
	// Name is the credit's name (the key of its spent minutes).
	Name string
	// Services are the service ids a break opens (resolved from the
	// credit's services and categories).
	Services []string
	// Minutes is the time that may be spent per window Per.
	Minutes, Per time.Duration
}

// CreditState is what a subject has of a credit at an instant.
type CreditState struct {
	// Subject is the key the credit is counted under (CreditSubject).
	Subject string
	// Person is true when Subject is a user, false for a workstation.
	Person bool
	// Left is the time not yet spent nor committed to a break.
	Left time.Duration
	// Active is set while a break runs; Ends is its end.
	Active bool
	Ends   time.Time
	// Refill is when spent minutes start coming back (zero when none is
	// spent); Full when the whole credit is back.
	Refill, Full time.Time
}

// ErrCreditSpent is StartBreak's answer when no minute is left.
var ErrCreditSpent = errors.New("exceptions: break credit spent")

// ErrNoCredit is returned when the store keeps no credit.
var ErrNoCredit = errors.New("exceptions: the store keeps no break credit")

// credits is the register's break-credit state.
type credits struct {
	kick chan struct{} // wakes Follow after a local start or end

	mu       sync.Mutex
	plans    func() []CreditPlan
	last     []span // breaks in progress as last read (fail static)
	counted  int64  // breaks ending up to this instant are counted
	purged   int64  // instant of the last purge
	started  *prometheus.CounterVec
	used     *prometheus.CounterVec
	metricOK bool
}

// CreditSubject is the key a credit is counted under: the user when one
// is known ("user:" and the name in lower case), else the workstation's
// address (an IPv6 address by its /64, so that privacy addresses give no
// fresh minutes).
func CreditSubject(client netip.Addr, user string) string {
	if user != "" {
		return "user:" + strings.ToLower(user)
	}
	client = client.Unmap().WithZone("")
	bits := 32
	if client.Is6() {
		bits = 64
	}
	p, _ := client.Prefix(bits)
	return p.String()
}

// SetCredits turns break credit on: plans returns the configured credits
// (read at every refresh, so a reload applies), reg receives
// balise_credit_breaks_started_total{credit} and
// balise_credit_seconds_used_total{credit} (no subject in any label).
func (r *Register) SetCredits(plans func() []CreditPlan, reg prometheus.Registerer) error {
	c := &r.credit
	c.mu.Lock()
	defer c.mu.Unlock()
	c.plans = plans
	if c.metricOK {
		return nil
	}
	c.started = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "balise_credit_breaks_started_total",
		Help: "Breaks started on a break credit, by credit."}, []string{"credit"})
	c.used = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "balise_credit_seconds_used_total",
		Help: "Seconds of break credit used (counted when a break ends), by credit."}, []string{"credit"})
	if reg != nil {
		for _, m := range []prometheus.Collector{c.started, c.used} {
			if err := reg.Register(m); err != nil {
				return err
			}
		}
	}
	c.metricOK = true
	if plans != nil {
		for _, p := range plans() {
			c.started.WithLabelValues(p.Name)
			c.used.WithLabelValues(p.Name)
		}
	}
	return nil
}

func (r *Register) creditStore() (creditStore, error) {
	cs, ok := r.opt.Store.(creditStore)
	if !ok {
		return nil, ErrNoCredit
	}
	return cs, nil
}

func ns(t time.Time) int64 { return t.UnixNano() }

// state computes a subject's state from its spans of the plan's credit
// (those ending after now - Per).
func state(subject string, plan CreditPlan, spans []span, now time.Time) CreditState {
	st := CreditState{Subject: subject, Person: strings.HasPrefix(subject, "user:")}
	u, from := ns(now), ns(now.Add(-plan.Per))
	var committed int64
	var first, last int64
	for _, s := range spans {
		if s.end <= from {
			continue
		}
		committed += s.end - max(s.start, from)
		if s.start <= u && u < s.end {
			st.Active, st.Ends = true, time.Unix(0, s.end)
		}
		if first == 0 || s.start < first {
			first = s.start
		}
		last = max(last, s.end)
	}
	st.Left = max(plan.Minutes-time.Duration(committed), 0)
	if committed > 0 {
		st.Refill = time.Unix(0, max(first, from)).Add(plan.Per)
		st.Full = time.Unix(0, last).Add(plan.Per)
	}
	return st
}

// Credit returns subject's state of plan at now.
func (r *Register) Credit(ctx context.Context, subject string, plan CreditPlan, now time.Time) (CreditState, error) {
	cs, err := r.creditStore()
	if err != nil {
		return CreditState{}, err
	}
	var spans []span
	err = cs.creditTx(ctx, false, func(c *creditRunner) error {
		var err error
		spans, err = c.spans("subject = ? AND credit = ? AND end_ns > ?", subject, plan.Name, ns(now.Add(-plan.Per)))
		return err
	})
	if err != nil {
		return CreditState{}, err
	}
	return state(subject, plan, spans, now), nil
}

// StartBreak starts a break of subject on plan at now, lasting the
// minutes left; a break in progress is returned as it is. It fails with
// ErrCreditSpent when less than a second is left. The break reaches the
// policy at the next refresh, which it triggers.
func (r *Register) StartBreak(ctx context.Context, subject string, plan CreditPlan, now time.Time) (CreditState, error) {
	cs, err := r.creditStore()
	if err != nil {
		return CreditState{}, err
	}
	var st CreditState
	started := false
	err = cs.creditTx(ctx, true, func(c *creditRunner) error {
		spans, err := c.spans("subject = ? AND credit = ? AND end_ns > ?", subject, plan.Name, ns(now.Add(-plan.Per)))
		if err != nil {
			return err
		}
		st = state(subject, plan, spans, now)
		if st.Active {
			return nil
		}
		if st.Left < time.Second {
			return ErrCreditSpent
		}
		s := span{subject: subject, credit: plan.Name, services: plan.Services, start: ns(now), end: ns(now.Add(st.Left))}
		if err := c.insert(s); err != nil {
			return err
		}
		started, c.notify = true, true
		st = state(subject, plan, append(spans, s), now)
		return nil
	})
	if err != nil {
		return st, err
	}
	if started {
		r.credit.mu.Lock()
		if r.credit.started != nil {
			r.credit.started.WithLabelValues(plan.Name).Inc()
		}
		r.credit.mu.Unlock()
		r.kickFollow()
	}
	return st, nil
}

// EndBreak ends subject's break on credit at now (unused minutes stay).
// It reports whether a break was in progress.
func (r *Register) EndBreak(ctx context.Context, subject, credit string, now time.Time) (bool, error) {
	cs, err := r.creditStore()
	if err != nil {
		return false, err
	}
	var n int64
	err = cs.creditTx(ctx, true, func(c *creditRunner) error {
		var err error
		n, err = c.exec("UPDATE credit_spent SET end_ns = ? WHERE subject = ? AND credit = ? AND start_ns <= ? AND end_ns > ?",
			ns(now), subject, credit, ns(now), ns(now))
		c.notify = n > 0
		return err
	})
	if n > 0 {
		r.kickFollow()
	}
	return n > 0, err
}

func (r *Register) kickFollow() {
	select {
	case r.credit.kick <- struct{}{}:
	default:
	}
}

// refreshBreaks reads the breaks in progress and appends them to grants
// as policy grants with Credit set; while the store cannot be read the
// last ones known stay (those not ended). The leader also counts the
// breaks that ended since the last refresh and deletes the spans older
// than their credit's window.
func (r *Register) refreshBreaks(ctx context.Context, grants []policy.Grant, now time.Time) []policy.Grant {
	c := &r.credit
	c.mu.Lock()
	plans := c.plans
	c.mu.Unlock()
	cs, err := r.creditStore()
	if plans == nil || err != nil {
		return grants
	}
	u := ns(now)
	var active []span
	err = cs.creditTx(ctx, false, func(t *creditRunner) error {
		var err error
		active, err = t.spans("end_ns > ? AND start_ns <= ?", u, u)
		return err
	})
	if err == nil {
		c.mu.Lock()
		c.last = active
		c.mu.Unlock()
	} else {
		r.opt.Logger.Error("break credit not read: the last breaks known stay in force", "error", err)
	}
	if r.leader(ctx) {
		r.creditHousekeeping(ctx, cs, plans(), now)
	}
	return r.withBreaks(grants, now)
}

// creditHousekeeping counts the seconds of breaks that ended since the
// last call (a read) and, at most once a minute, deletes spans older than
// their credit's window (those of credits no longer configured once
// ended).
func (r *Register) creditHousekeeping(ctx context.Context, cs creditStore, plans []CreditPlan, now time.Time) {
	c := &r.credit
	u := ns(now)
	c.mu.Lock()
	since, purged := c.counted, c.purged
	c.mu.Unlock()
	if since == 0 {
		since = u // nothing before this process is counted
	}
	err := cs.creditTx(ctx, false, func(t *creditRunner) error {
		ended, err := t.spans("end_ns > ? AND end_ns <= ?", since, u)
		if err != nil {
			return err
		}
		c.mu.Lock()
		if c.used != nil {
			for _, s := range ended {
				c.used.WithLabelValues(s.credit).Add(time.Duration(s.end - s.start).Seconds())
			}
		}
		c.counted = u
		c.mu.Unlock()
		return nil
	})
	if err == nil && u-purged >= int64(time.Minute) {
		err = cs.creditTx(ctx, true, func(t *creditRunner) error {
			names := make([]any, 0, len(plans)+1)
			for _, p := range plans {
				if _, err := t.exec("DELETE FROM credit_spent WHERE credit = ? AND end_ns <= ?", p.Name, ns(now.Add(-p.Per))); err != nil {
					return err
				}
				names = append(names, p.Name)
			}
			q := "DELETE FROM credit_spent WHERE end_ns <= ?"
			if len(names) > 0 {
				q += " AND credit NOT IN (" + strings.TrimSuffix(strings.Repeat("?, ", len(names)), ", ") + ")"
			}
			_, err := t.exec(q, append([]any{u}, names...)...)
			return err
		})
		if err == nil {
			c.mu.Lock()
			c.purged = u
			c.mu.Unlock()
		}
	}
	if err != nil {
		r.opt.Logger.Error("break credit housekeeping failed", "error", err)
	}
}

// withBreaks appends the breaks in progress at now (as last read) to
// grants.
func (r *Register) withBreaks(grants []policy.Grant, now time.Time) []policy.Grant {
	c := &r.credit
	c.mu.Lock()
	last := c.last
	c.mu.Unlock()
	u := ns(now)
	for _, s := range last {
		if s.start <= u && u < s.end {
			grants = append(grants, breakGrant(s))
		}
	}
	return grants
}

// breakGrant is the policy grant of a break in progress.
func breakGrant(s span) policy.Grant {
	g := policy.Grant{ID: "credit:" + s.credit, Credit: s.credit, Services: slices.Clone(s.services),
		NotBefore: time.Unix(0, s.start), NotAfter: time.Unix(0, s.end)}
	if u, ok := strings.CutPrefix(s.subject, "user:"); ok {
		g.User = u
	} else if p, err := netip.ParsePrefix(s.subject); err == nil {
		g.Subject = p
	}
	return g
}

// StoreBreaks reads the breaks in progress at now from st (for `balise
// explain`), as policy grants with Credit set; none when st keeps no
// credit.
func StoreBreaks(ctx context.Context, st Store, now time.Time) ([]policy.Grant, error) {
	cs, ok := st.(creditStore)
	if !ok {
		return nil, nil
	}
	var out []policy.Grant
	err := cs.creditTx(ctx, false, func(t *creditRunner) error {
		spans, err := t.spans("end_ns > ? AND start_ns <= ?", ns(now), ns(now))
		for _, s := range spans {
			out = append(out, breakGrant(s))
		}
		return err
	})
	return out, err
}
