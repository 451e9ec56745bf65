package config

import (
	"github.com/balise-net/balise/internal/policy"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the configuration's Prometheus series:
//
//	balise_catalog_info{version,origin}               1, for the catalog in use (origin embedded or update)
//	balise_catalog_serial                             serial of the catalog in use
//	balise_catalog_updates_total{result}              update checks by result (applied, current, or why refused)
//	balise_catalog_last_check_timestamp_seconds       last check of [catalog] update_url
//	balise_policy_domains                             domain entries of the running policy
//	balise_list_domains{list}                         entries of each [[list]]
//	balise_list_last_refresh_timestamp_seconds{list}  last successful download of a URL list
//	balise_list_refresh_failures_total{list}          failed downloads of a URL list
//
// Create them once per process (NewMetrics); reloads call SetConfig and
// SetPolicy, and each new Fetcher is given the same Metrics.
type Metrics struct {
	catalogInfo      *prometheus.GaugeVec
	catalogSerial    prometheus.Gauge
	catalogUpdates   *prometheus.CounterVec
	catalogLastCheck prometheus.Gauge
	policyDomains    prometheus.Gauge
	listDomains      *prometheus.GaugeVec
	listLastRefresh  *prometheus.GaugeVec
	listFailures     *prometheus.CounterVec
}

// NewMetrics creates the series on reg (nil: they are created but not
// registered) and sets balise_catalog_info.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		catalogInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "balise_catalog_info",
			Help: "Version and origin (embedded or update) of the service catalog in use (value 1).",
		}, []string{"version", "origin"}),
		catalogSerial: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "balise_catalog_serial",
			Help: "Serial of the service catalog in use (only grows).",
		}),
		catalogUpdates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "balise_catalog_updates_total",
			Help: "Checks of [catalog] update_url by result: applied, current, or why the update was refused (fetch, unsigned, key, signature, invalid, older, rejected).",
		}, []string{"result"}),
		catalogLastCheck: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "balise_catalog_last_check_timestamp_seconds",
			Help: "Time of the last check of [catalog] update_url.",
		}),
		policyDomains: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "balise_policy_domains",
			Help: "Number of listed domain entries in the running policy.",
		}),
		listDomains: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "balise_list_domains",
			Help: "Number of domain entries of each configured list.",
		}, []string{"list"}),
		listLastRefresh: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "balise_list_last_refresh_timestamp_seconds",
			Help: "Time of the last successful refresh of each URL list.",
		}, []string{"list"}),
		listFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "balise_list_refresh_failures_total",
			Help: "Failed refreshes of URL lists (the last good copy stays in use).",
		}, []string{"list"}),
	}
	m.SetCatalog(EmbeddedCatalog())
	if reg != nil {
		reg.MustRegister(m.catalogInfo, m.catalogSerial, m.catalogUpdates, m.catalogLastCheck, m.policyDomains, m.listDomains, m.listLastRefresh, m.listFailures)
	}
	return m
}

// SetCatalog records the catalog in use.
func (m *Metrics) SetCatalog(c *ServiceCatalog) {
	m.catalogInfo.Reset()
	m.catalogInfo.WithLabelValues(c.Version(), c.Source()).Set(1)
	m.catalogSerial.Set(float64(c.Serial()))
}

// SetConfig creates the list series of c (and drops those of lists that
// no longer exist). A Fetcher then keeps them current.
func (m *Metrics) SetConfig(c *Config) {
	m.SetCatalog(c.CatalogInUse())
	m.listDomains.Reset()
	m.listLastRefresh.Reset()
	for _, l := range c.Lists {
		n := len(l.Domains) + len(l.fileDomains)
		for _, u := range l.URLs {
			meta, err := readMeta(c.ListCache.CacheDir, l.Name, u)
			if err == nil {
				n += meta.Domains
				m.listLastRefresh.WithLabelValues(l.Name).Set(float64(meta.Fetched.UnixNano()) / 1e9)
			}
		}
		m.listDomains.WithLabelValues(l.Name).Set(float64(n))
		m.listFailures.WithLabelValues(l.Name)
	}
}

// SetPolicy records the running policy's size.
func (m *Metrics) SetPolicy(p *policy.Policy) {
	m.policyDomains.Set(float64(p.DomainCount()))
}
