package directory

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Results of balise_directory_lookups_total.
const (
	resultHit = iota
	resultMiss
	resultNegative
	resultStale
	resultError
	numResults
)

var resultNames = [numResults]string{"hit", "miss", "unknown_user", "stale", "error"}

// Results of balise_directory_authentications_total.
const (
	authOK = iota
	authInvalid
	authError
	numAuth
)

var authNames = [numAuth]string{"ok", "invalid", "error"}

// metrics are the directory's Prometheus series, created up front. No
// series carries a user.
type metrics struct {
	lookups  [numResults]prometheus.Counter
	auths    [numAuth]prometheus.Counter
	duration prometheus.Observer
}

func newMetrics(d *Directory, reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{}
	lookups := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "balise_directory_lookups_total",
		Help: "Group lookups, by result: hit (fresh cache), miss (asked the directory), unknown_user, stale (last known memberships served while the directory could not be asked), error (nothing known, directory unavailable).",
	}, []string{"result"})
	for i, r := range resultNames {
		m.lookups[i] = lookups.WithLabelValues(r)
	}
	auths := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "balise_directory_authentications_total",
		Help: "Password checks against the directory, by result: ok, invalid (wrong or empty password, unknown user), error (directory unavailable).",
	}, []string{"result"})
	for i, r := range authNames {
		m.auths[i] = auths.WithLabelValues(r)
	}
	duration := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "balise_directory_request_duration_seconds",
		Help:    "Duration of one successful exchange with the directory (connection, search, nested groups).",
		Buckets: []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5},
	})
	m.duration = duration
	up := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "balise_directory_up",
		Help: "1 when the last exchange with the directory succeeded, 0 otherwise.",
	}, func() float64 {
		if d.up.Load() {
			return 1
		}
		return 0
	})
	age := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "balise_directory_contact_age_seconds",
		Help: "Seconds since the directory last answered (since start when it never has): how old stale memberships can be.",
	}, func() float64 { return d.contactAge().Seconds() })
	entries := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "balise_directory_cache_entries",
		Help: "Users whose memberships (or absence) are cached.",
	}, func() float64 { return float64(d.entries()) })
	if reg != nil {
		for _, c := range []prometheus.Collector{lookups, auths, duration, up, age, entries} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("directory: %w", err)
			}
		}
	}
	return m, nil
}

func (d *Directory) count(r int) {
	d.counts[r].Add(1)
	d.m.lookups[r].Inc()
}

func (m *metrics) auth(r int) { m.auths[r].Inc() }

func (m *metrics) observe(d time.Duration) { m.duration.Observe(d.Seconds()) }
