package exceptions

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/balise-net/balise/internal/policy"
)

// Options configures a Register.
type Options struct {
	// Store holds the requests. Required; the Register does not close it
	// unless CloseStore is set.
	Store Store
	// CloseStore makes Close close Store too.
	CloseStore bool
	// AuditLog is the audit log's path. Required, except with a store that
	// keeps the audit chain itself (PostgreSQL), where it is ignored.
	AuditLog string
	// Durations are the durations a requester may choose. Empty: 1h, 4h,
	// 1 day, 7 days.
	Durations []time.Duration
	// MaxPendingPerClient bounds one workstation's pending requests.
	// Zero: 3. Negative: no limit.
	MaxPendingPerClient int
	// MaxPerDayPerClient bounds one workstation's requests in 24 hours.
	// Zero: 10. Negative: no limit.
	MaxPerDayPerClient int
	// DuplicateWindow is how long an identical submission (same client,
	// service and justification) returns the earlier request. Zero: 10 min.
	DuplicateWindow time.Duration
	// ValidService reports whether a service id may be requested. Nil:
	// any well-formed id.
	ValidService func(id string) bool
	// Notify, when set, is called (asynchronously by the caller's
	// choice) after a new request was durably recorded. See Notifier.
	Notify func(Request)
	// Registerer receives the register's metrics. Nil: a private registry.
	Registerer prometheus.Registerer
	// Clock returns the time. Nil: time.Now.
	Clock func() time.Time
	// LockWait bounds the wait for the audit log's lock. Zero: 10 s.
	LockWait time.Duration
	// PendingAlertAfter is the age past which a pending request counts as
	// overdue (balise_exceptions_pending_overdue). Zero: 24 hours.
	PendingAlertAfter time.Duration
	// Logger receives Follow's messages (store lost and back, the chain
	// head). Nil: discarded.
	Logger *slog.Logger
	// ChainLogInterval is how often Follow logs the audit chain's head, so
	// that a rewrite of the register shows against what a log collector
	// kept. Zero: 10 minutes. Negative: never.
	ChainLogInterval time.Duration
}

// DefaultDurations are the durations offered when none are configured.
var DefaultDurations = []time.Duration{time.Hour, 4 * time.Hour, 24 * time.Hour, 7 * 24 * time.Hour}

// Register is the exception register. It is safe for concurrent use and
// for use by several processes on the same store and audit log.
type Register struct {
	opt     Options
	metrics *Metrics
	now     func() time.Time
	mu      sync.Mutex // serializes this process's appenders before the store lock
	cache   cache      // open requests, for grants that survive a store outage
	hooks   hooks      // functions told of new requests and decisions (OnChange)
	credit  credits    // break credit (credit.go)
}

// Open returns a Register on opt.Store. It does not touch the audit log:
// call Repair next.
func Open(ctx context.Context, opt Options) (*Register, error) {
	if opt.Store == nil || (opt.AuditLog == "" && !keepsChain(opt.Store)) {
		return nil, errors.New("exceptions: Store and AuditLog are required")
	}
	if len(opt.Durations) == 0 {
		opt.Durations = DefaultDurations
	}
	if opt.MaxPendingPerClient == 0 {
		opt.MaxPendingPerClient = 3
	}
	if opt.MaxPerDayPerClient == 0 {
		opt.MaxPerDayPerClient = 10
	}
	if opt.DuplicateWindow == 0 {
		opt.DuplicateWindow = 10 * time.Minute
	}
	if opt.LockWait == 0 {
		opt.LockWait = 10 * time.Second
	}
	if opt.PendingAlertAfter == 0 {
		opt.PendingAlertAfter = 24 * time.Hour
	}
	if opt.Registerer == nil {
		opt.Registerer = prometheus.NewRegistry()
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.ChainLogInterval == 0 {
		opt.ChainLogInterval = 10 * time.Minute
	}
	r := &Register{opt: opt, now: opt.Clock}
	r.credit.kick = make(chan struct{}, 1)
	if r.now == nil {
		r.now = time.Now
	}
	m, err := NewMetrics(opt.Registerer)
	if err != nil {
		return nil, err
	}
	r.metrics = m
	return r, nil
}

// Close closes the store when Options.CloseStore was set.
func (r *Register) Close() error {
	if r.opt.CloseStore {
		return r.opt.Store.Close()
	}
	return nil
}

// Durations returns the durations a requester may choose.
func (r *Register) Durations() []time.Duration { return r.opt.Durations }

// Metrics returns the register's metrics.
func (r *Register) Metrics() *Metrics { return r.metrics }

// Repair brings the audit log in line with the store after a crash (see
// the package documentation: a torn or uncommitted last line is moved to
// "<audit_log>.orphaned"). An error wrapping ErrAudit means the log does
// not match the store (edited, truncated or replaced): reads still work,
// every write fails until the officer restores the log; Verify names the
// first bad line. Every write repairs too, so calling Repair is only
// needed to learn early about a damaged log.
func (r *Register) Repair(ctx context.Context) error {
	if keepsChain(r.opt.Store) {
		return r.checkStoredHead(ctx)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.opt.Store.Update(ctx, func(tx Tx) error {
		h, err := tx.Head()
		if err != nil {
			return err
		}
		a, err := lockAudit(r.opt.AuditLog, r.opt.LockWait)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrAudit, err)
		}
		defer a.unlock()
		_, err = a.reconcile(h)
		return err
	})
}

// update runs fn in a store transaction; the events fn returns are
// appended to the audit log, fsynced, before the transaction commits.
func (r *Register) update(ctx context.Context, fn func(tx Tx, now time.Time) ([]Event, error)) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var auditErr bool
	err := r.opt.Store.Update(ctx, func(tx Tx) error {
		now := r.now().UTC()
		events, err := fn(tx, now)
		if err != nil || len(events) == 0 {
			return err
		}
		h, err := tx.Head()
		if err != nil {
			return err
		}
		if ct, ok := tx.(chainTx); ok {
			err := appendStored(ct, h, events, now)
			auditErr = errors.Is(err, ErrAudit)
			return err
		}
		a, err := lockAudit(r.opt.AuditLog, r.opt.LockWait)
		if err != nil {
			auditErr = true
			return fmt.Errorf("%w: %v", ErrAudit, err)
		}
		// Released after the commit: Update returns only then.
		defer a.unlock()
		if _, err := a.reconcile(h); err != nil {
			auditErr = true
			return err
		}
		for _, e := range events {
			e.Time = formatTime(now)
			if h, err = a.append(h, e); err != nil {
				auditErr = true
				return fmt.Errorf("%w: write %s: %v", ErrAudit, r.opt.AuditLog, err)
			}
		}
		return tx.SetHead(h)
	})
	if auditErr {
		r.metrics.auditErrors.Inc()
	}
	if errors.Is(err, ErrUnavailable) {
		r.metrics.unavailable.Inc()
		r.metrics.storeUp.Set(0)
	}
	return err
}

// Submission is what the form sends.
type Submission struct {
	Client        netip.Addr
	User          string
	Name          string
	Contact       string
	Service       string
	Host          string
	Justification string
	Duration      time.Duration
	Lang          string
}

// Receipt is the answer to a Submission.
type Receipt struct {
	// ID is the request id to give the requester.
	ID string
	// Duplicate is true when an identical recent submission was found:
	// ID is that request's.
	Duplicate bool
	Request   Request
}

// Submit validates s and records it as a pending request: when Submit
// returns nil, the request is committed to the store and its
// request_received line is fsynced to the audit log. Errors: a
// *FieldError for invalid input, a *LimitError (ErrRateLimited) when a
// per-client limit is reached, ErrUnavailable when the store cannot be
// reached (nothing was recorded), other errors when it could not be stored.
func (r *Register) Submit(ctx context.Context, s Submission) (Receipt, error) {
	if err := r.validate(&s); err != nil {
		r.metrics.requests[resultRejected].Inc()
		return Receipt{}, err
	}
	var rc Receipt
	err := r.update(ctx, func(tx Tx, now time.Time) ([]Event, error) {
		rc = Receipt{}
		recent, err := tx.Requests(Filter{Client: s.Client, Since: now.Add(-24 * time.Hour)})
		if err != nil {
			return nil, err
		}
		pending := 0
		for _, q := range recent {
			if q.Status == StatusPending {
				pending++
			}
			if now.Sub(q.Created) < r.opt.DuplicateWindow && q.User == s.User &&
				slices.Equal(q.Services, []string{s.Service}) && q.Justification == s.Justification {
				rc = Receipt{ID: q.ID, Duplicate: true, Request: q}
			}
		}
		if rc.Duplicate {
			return nil, nil
		}
		if max := r.opt.MaxPendingPerClient; max > 0 && pending >= max {
			return nil, &LimitError{Kind: "pending", Limit: max}
		}
		if max := r.opt.MaxPerDayPerClient; max > 0 && len(recent) >= max {
			return nil, &LimitError{Kind: "day", Limit: max}
		}
		id, err := tx.NextID()
		if err != nil {
			return nil, err
		}
		q := Request{
			ID: id, Created: now, Client: s.Client, User: s.User, Name: s.Name, Contact: s.Contact,
			Services: []string{s.Service}, Host: s.Host, Justification: s.Justification,
			Duration: s.Duration, Lang: s.Lang, Status: StatusPending,
		}
		if err := tx.PutRequest(q); err != nil {
			return nil, err
		}
		rc = Receipt{ID: id, Request: q}
		return []Event{{
			Event: EventReceived, ID: id, Client: q.Client.String(), User: q.User,
			Services: q.Services, Host: q.Host, Duration: formatDuration(q.Duration), Digest: q.Digest(),
		}}, nil
	})
	switch {
	case errors.Is(err, ErrRateLimited):
		r.metrics.requests[resultRateLimited].Inc()
		return Receipt{}, err
	case err != nil:
		return Receipt{}, err
	case rc.Duplicate:
		r.metrics.requests[resultDuplicate].Inc()
	default:
		r.metrics.requests[resultAccepted].Inc()
		if r.opt.Notify != nil {
			r.opt.Notify(rc.Request)
		}
		r.hooks.call(EventReceived, rc.Request)
	}
	return rc, nil
}

// Limits of the form's fields, in characters.
const (
	MinJustification = 20
	MaxJustification = 2000
	MaxName          = 100
	MaxContact       = 200
	MaxHost          = 253
	MaxUser          = 256
)

func (r *Register) validate(s *Submission) error {
	s.Name = strings.TrimSpace(s.Name)
	s.Contact = strings.TrimSpace(s.Contact)
	s.Justification = strings.TrimSpace(strings.ReplaceAll(s.Justification, "\r\n", "\n"))
	s.Host = strings.ToLower(strings.TrimSuffix(s.Host, "."))
	if s.Lang != "en" {
		s.Lang = "fr"
	}
	if !s.Client.IsValid() {
		return &FieldError{"client", "unknown client address", "adresse du poste inconnue"}
	}
	s.Client = s.Client.Unmap()
	if err := checkText("name", s.Name, 1, MaxName, false); err != nil {
		return err
	}
	if err := checkText("contact", s.Contact, 0, MaxContact, false); err != nil {
		return err
	}
	if err := checkText("justification", s.Justification, MinJustification, MaxJustification, true); err != nil {
		return err
	}
	if err := checkText("user", s.User, 0, MaxUser, false); err != nil {
		return err
	}
	if !validServiceID(s.Service) || (r.opt.ValidService != nil && !r.opt.ValidService(s.Service)) {
		return &FieldError{"service", "unknown service", "service inconnu"}
	}
	if s.Host != "" && !validHost(s.Host) {
		return &FieldError{"host", "invalid host name", "nom d'hôte invalide"}
	}
	if !slices.Contains(r.opt.Durations, s.Duration) {
		return &FieldError{"duration", "choose one of the offered durations", "choisissez une des durées proposées"}
	}
	return nil
}

// checkText enforces length in characters and rejects invalid UTF-8,
// control characters (newlines and tabs only where multiline) and the
// invisible bidirectional-override characters.
func checkText(field, s string, min, max int, multiline bool) error {
	if !utf8.ValidString(s) {
		return &FieldError{field, "invalid characters", "caractères invalides"}
	}
	n := utf8.RuneCountInString(s)
	if n < min {
		if min == 1 {
			return &FieldError{field, "required", "obligatoire"}
		}
		return &FieldError{field, fmt.Sprintf("at least %d characters", min), fmt.Sprintf("au moins %d caractères", min)}
	}
	if n > max {
		return &FieldError{field, fmt.Sprintf("at most %d characters", max), fmt.Sprintf("au plus %d caractères", max)}
	}
	for _, c := range s {
		switch {
		case multiline && (c == '\n' || c == '\t'):
		case c < 0x20 || (c >= 0x7f && c < 0xa0):
			return &FieldError{field, "control characters are not allowed", "caractères de contrôle refusés"}
		case (c >= 0x202a && c <= 0x202e) || (c >= 0x2066 && c <= 0x2069) || c == 0xfeff || c == 0x200e || c == 0x200f:
			return &FieldError{field, "invisible formatting characters are not allowed", "caractères de mise en forme invisibles refusés"}
		}
	}
	return nil
}

func validServiceID(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

func validHost(s string) bool {
	if len(s) > MaxHost {
		return false
	}
	if _, err := netip.ParseAddr(strings.Trim(s, "[]")); err == nil {
		return true
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// formatDuration writes whole days as "7d" and other durations as Go does.
func formatDuration(d time.Duration) string {
	if d > 0 && d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}
	s := d.String()
	s = strings.TrimSuffix(s, "0s")
	s = strings.TrimSuffix(s, "0m")
	if s == "" {
		return "0s"
	}
	return s
}

// ParseDuration parses a Go duration or a whole number of days ("365d").
func ParseDuration(s string) (time.Duration, error) {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		var d int
		if _, err := fmt.Sscanf(n, "%d", &d); err == nil && fmt.Sprint(d) == n && d > 0 && d < 100000 {
			return time.Duration(d) * 24 * time.Hour, nil
		}
		return 0, fmt.Errorf("invalid duration %q", s)
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q", s)
	}
	return d, nil
}

// Get returns the request with this id.
func (r *Register) Get(ctx context.Context, id string) (Request, error) {
	var q Request
	err := r.opt.Store.View(ctx, func(tx ReadTx) error {
		var err error
		q, err = tx.Request(id)
		return err
	})
	return q, err
}

// List returns the requests with this status ("" = all), oldest first.
func (r *Register) List(ctx context.Context, status Status) ([]Request, error) {
	var out []Request
	err := r.opt.Store.View(ctx, func(tx ReadTx) error {
		var err error
		out, err = tx.Requests(Filter{Status: status})
		return err
	})
	return out, err
}

// ActiveGrants returns the grants of approved requests that have not
// ended at now (including grants that start later), for the policy engine.
func (r *Register) ActiveGrants(ctx context.Context, now time.Time) ([]policy.Grant, error) {
	reqs, err := r.List(ctx, StatusApproved)
	if err != nil {
		return nil, err
	}
	return activeGrants(reqs, now), nil
}
