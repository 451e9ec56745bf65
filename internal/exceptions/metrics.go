package exceptions

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Request results, the values of the result label.
const (
	resultAccepted = iota
	resultRejected
	resultRateLimited
	resultDuplicate
	numResults
)

var resultNames = [numResults]string{"accepted", "rejected", "rate_limited", "duplicate"}

// Metrics are the register's Prometheus metrics, created up front.
type Metrics struct {
	requests      [numResults]prometheus.Counter
	pending       prometheus.Gauge
	oldestPending prometheus.Gauge
	overdue       prometheus.Gauge
	grantsActive  prometheus.Gauge
	auditErrors   prometheus.Counter
	notifyErrors  prometheus.Counter
	storeUp       prometheus.Gauge
	unavailable   prometheus.Counter
	leader        prometheus.Gauge
}

// NewMetrics creates the register's metrics on reg:
// balise_exceptions_requests_total{result}, balise_exceptions_pending,
// balise_exceptions_oldest_pending_age_seconds,
// balise_exceptions_pending_overdue, balise_exceptions_grants_active,
// balise_exceptions_audit_write_errors_total,
// balise_exceptions_notify_failures_total, balise_exceptions_store_up,
// balise_exceptions_store_unavailable_total and balise_exceptions_leader.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{}
	reqs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "balise_exceptions_requests_total",
		Help: "Exception requests submitted from the block page, by result (accepted, rejected as invalid, rate_limited, duplicate of a recent request).",
	}, []string{"result"})
	for i := range m.requests {
		m.requests[i] = reqs.WithLabelValues(resultNames[i])
	}
	m.pending = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "balise_exceptions_pending",
		Help: "Exception requests waiting for the officer's decision.",
	})
	m.oldestPending = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "balise_exceptions_oldest_pending_age_seconds",
		Help: "Age of the oldest pending exception request (0 when none is pending).",
	})
	m.overdue = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "balise_exceptions_pending_overdue",
		Help: "Pending exception requests older than [exceptions] pending_alert_after.",
	})
	m.grantsActive = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "balise_exceptions_grants_active",
		Help: "Exception grants in force now.",
	})
	m.auditErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "balise_exceptions_audit_write_errors_total",
		Help: "Failed appends to the exceptions audit log (the change they belonged to was not made).",
	})
	m.notifyErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "balise_exceptions_notify_failures_total",
		Help: "New-request notifications that failed after every retry, or were dropped because the queue was full.",
	})
	m.storeUp = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "balise_exceptions_store_up",
		Help: "1 when the last read of the exception register's store succeeded, 0 while it is unreachable (the last grants known stay in force).",
	})
	m.unavailable = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "balise_exceptions_store_unavailable_total",
		Help: "Register writes (requests, decisions, expiries) refused because the store could not be reached.",
	})
	m.leader = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "balise_exceptions_leader",
		Help: "1 when this node writes the register's expiry and retention events (always with an embedded store; one node at a time with PostgreSQL).",
	})
	for _, c := range []prometheus.Collector{reqs, m.pending, m.oldestPending, m.overdue, m.grantsActive, m.auditErrors,
		m.notifyErrors, m.storeUp, m.unavailable, m.leader} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *Metrics) observe(st Stats, now time.Time) {
	m.pending.Set(float64(st.Pending))
	age := 0.0
	if !st.OldestPending.IsZero() {
		age = now.Sub(st.OldestPending).Seconds()
	}
	m.oldestPending.Set(age)
	m.overdue.Set(float64(st.Overdue))
	m.grantsActive.Set(float64(st.ActiveGrants))
}
