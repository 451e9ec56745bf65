package dnsfilter

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/balise-net/balise/internal/policy"
)

type proto uint8

const (
	protoUDP proto = iota
	protoTCP
	numProtos
)

var protoNames = [numProtos]string{"udp", "tcp"}

// Verdicts of balise_dns_queries_total beyond the policy's allow/block.
const (
	verdictAllow = iota
	verdictBlock
	verdictRefused
	verdictError
	numVerdicts
)

var verdictNames = [numVerdicts]string{"allow", "block", "refused", "error"}

// Reasons of balise_dns_queries_total: the policy's, then the filter's own.
var (
	numPolicyReasons = len(policy.Reasons())
	reasonForward    = numPolicyReasons     // conditional forwarding zone
	reasonDDR        = numPolicyReasons + 1 // _dns.resolver.arpa
	reasonRateLimit  = numPolicyReasons + 2
	reasonMalformed  = numPolicyReasons + 3
	reasonUpstream   = numPolicyReasons + 4 // every upstream failed, nothing stale
	reasonNoPolicy   = numPolicyReasons + 5
	reasonTransfer   = numPolicyReasons + 6 // AXFR, IXFR
	reasonClient     = numPolicyReasons + 7 // outside AllowedClients
	reasonAny        = numPolicyReasons + 8 // ANY, answered per RFC 8482
	numReasons       = numPolicyReasons + 9
)

func reasonName(r int) string {
	if r < numPolicyReasons {
		return policy.Reason(r).String()
	}
	return [...]string{"forward", "ddr", "ratelimit", "malformed", "upstream", "nopolicy", "transfer", "client", "any"}[r-numPolicyReasons]
}

// Kinds of balise_dns_malformed_total.
const (
	malShort = iota
	malResponse
	malFormat
	malOpcode
	malVersion
	malOversized
	numMalformed
)

var malformedNames = [numMalformed]string{"short", "response", "format", "opcode", "edns_version", "oversized"}

// metrics are the filter's Prometheus series, created up front.
type metrics struct {
	queries     [numProtos][numVerdicts][]prometheus.Counter
	duration    [numProtos]prometheus.Observer
	cacheHits   prometheus.Counter
	cacheMisses prometheus.Counter
	stale       prometheus.Counter
	// identityDecisions counts listed names decided for the user bound
	// to the client's address.
	identityDecisions prometheus.Counter
	malformed         [numMalformed]prometheus.Counter
	rateLimited       prometheus.Counter
	refusals          [numRefusals]prometheus.Counter
	upstreamUp        *prometheus.GaugeVec

	upstreamDuration *prometheus.HistogramVec
	upstreamErrors   *prometheus.CounterVec
	collectors       []prometheus.Collector
}

func newMetrics(cacheLen, tcpConns func() int) *metrics {
	m := &metrics{}
	queries := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "balise_dns_queries_total",
		Help: "DNS queries answered, by protocol, verdict (allow, block, refused, error) and reason.",
	}, []string{"proto", "verdict", "reason"})
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "balise_dns_request_duration_seconds",
		Help:    "Time from reading a DNS query to sending its answer.",
		Buckets: []float64{0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2},
	}, []string{"proto"})
	for p := range numProtos {
		pn := protoNames[p]
		m.duration[p] = duration.WithLabelValues(pn)
		for v := range numVerdicts {
			m.queries[p][v] = make([]prometheus.Counter, numReasons)
		}
		add := func(v, r int) {
			m.queries[p][v][r] = queries.WithLabelValues(pn, verdictNames[v], reasonName(r))
		}
		for r := range numPolicyReasons {
			add(verdictAllow, r)
			if policy.Reason(r) != policy.ReasonUnlisted && policy.Reason(r) != policy.ReasonAllowList && policy.Reason(r) != policy.ReasonGrant && policy.Reason(r) != policy.ReasonCredit {
				add(verdictBlock, r)
			}
		}
		add(verdictAllow, reasonForward)
		add(verdictAllow, reasonDDR)
		add(verdictRefused, reasonRateLimit)
		add(verdictRefused, reasonTransfer)
		add(verdictRefused, reasonClient)
		add(verdictRefused, reasonAny)
		add(verdictError, reasonMalformed)
		add(verdictError, reasonUpstream)
		add(verdictError, reasonNoPolicy)
	}
	m.cacheHits = prometheus.NewCounter(prometheus.CounterOpts{Name: "balise_dns_cache_hits_total", Help: "DNS queries answered from a fresh cache entry."})
	m.cacheMisses = prometheus.NewCounter(prometheus.CounterOpts{Name: "balise_dns_cache_misses_total", Help: "DNS queries that needed an upstream (no fresh cache entry)."})
	entries := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "balise_dns_cache_entries", Help: "Answers held in the DNS cache."}, func() float64 { return float64(cacheLen()) })
	m.stale = prometheus.NewCounter(prometheus.CounterOpts{Name: "balise_dns_stale_answers_total", Help: "Expired answers served because every upstream failed (RFC 8767)."})
	m.identityDecisions = prometheus.NewCounter(prometheus.CounterOpts{Name: "balise_dns_identity_decisions_total", Help: "Listed names decided for the one user bound to the client's address (no user in any label)."})
	malformed := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "balise_dns_malformed_total", Help: "Malformed DNS messages received, by kind."}, []string{"kind"})
	for i, k := range malformedNames {
		m.malformed[i] = malformed.WithLabelValues(k)
	}
	m.rateLimited = prometheus.NewCounter(prometheus.CounterOpts{Name: "balise_dns_rate_limited_total", Help: "DNS queries refused because their client exceeded its rate limit."})
	refusals := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "balise_dns_refusals_total",
		Help: "DNS queries and TCP connections refused for what they are, by reason: client (outside allowed_clients), any (ANY query answered per RFC 8482), tcp_limit (over the per-client or total TCP connection limit), tcp_evicted (idle connection closed to admit another client).",
	}, []string{"reason"})
	for i, r := range refusalNames {
		m.refusals[i] = refusals.WithLabelValues(r)
	}
	tcp := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "balise_dns_tcp_connections", Help: "Open DNS-over-TCP client connections."}, func() float64 { return float64(tcpConns()) })
	m.upstreamUp = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "balise_dns_upstream_up", Help: "1 when the upstream resolver answers, 0 after consecutive failures."}, []string{"upstream"})
	m.upstreamDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "balise_dns_upstream_request_duration_seconds",
		Help:    "Duration of one exchange with an upstream resolver.",
		Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5},
	}, []string{"upstream"})
	m.upstreamErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "balise_dns_upstream_errors_total", Help: "Failed exchanges with an upstream resolver, by kind."}, []string{"upstream", "kind"})
	m.collectors = []prometheus.Collector{queries, duration, m.cacheHits, m.cacheMisses, entries, m.stale, m.identityDecisions, malformed, m.rateLimited, refusals, tcp, m.upstreamUp, m.upstreamDuration, m.upstreamErrors}
	return m
}

func (m *metrics) register(r prometheus.Registerer) error {
	if r == nil {
		return nil
	}
	var errs []error
	for _, c := range m.collectors {
		if err := r.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (m *metrics) count(p proto, verdict, reason int) {
	if c := m.queries[p][verdict][reason]; c != nil {
		c.Inc()
	}
}
