package proxy

import (
	"github.com/balise-net/balise/internal/policy"
	"github.com/prometheus/client_golang/prometheus"
)

// Modes, kinds, causes and refusal reasons are fixed, small sets so that
// every metric series is created up front and indexed, never looked up by
// label strings on the hot path.
const (
	modeExplicit = iota
	modeTransparent
	numModes
)

var modeNames = [numModes]string{"explicit", "transparent"}

const (
	kindHTTP = iota
	kindConnect
	numKinds
)

var kindNames = [numKinds]string{"http", "connect"}

// Extra decision reasons the proxy adds to the engine's.
var (
	reasonIPLiteral = len(reasonNamesEngine)
	reasonNoSNI     = len(reasonNamesEngine) + 1
)

var reasonNamesEngine = func() []string {
	var out []string
	for _, r := range policy.Reasons() {
		out = append(out, r.String())
	}
	return out
}()

func reasonNames() []string {
	return append(append([]string(nil), reasonNamesEngine...), "ip_literal", "no_sni")
}

const (
	refusalClient = iota
	refusalPort
	refusalLimit
	refusalBadRequest
	refusalLoop        // the destination is Balise itself
	refusalNotTLS      // the first flight on a TLS port is not a ClientHello Balise can read
	refusalSilent      // the client sent nothing before header_timeout on a TLS port
	refusalNoSNI       // a ClientHello without a server name (no_sni = "deny")
	refusalIPLiteral   // a tunnel to an IP literal without a usable server name
	refusalDestination // the destination is always refused or in deny_destinations
	refusalCertScope   // a blocked connection's ClientHello named a host that is not blocked: no certificate
	// A PROXY header missing, malformed or late from a balancer, or sent
	// by anyone else (proxyproto.go).
	refusalProxyProtocol
	numRefusals
)

var refusalNames = [numRefusals]string{"client", "port", "limit", "bad_request", "loop",
	"not_tls", "silent", "no_sni", "ip_literal", "destination", "cert_scope", "proxy_protocol"}

const (
	causeClosed    = iota // both sides finished normally
	causeError            // a read or write failed
	causeIdle             // idle_timeout passed without traffic
	causeLifetime         // max_tunnel_lifetime reached
	causeUntil            // the decision's until passed and it no longer allows
	causeShutdown         // Balise is stopping
	causeRedecided        // a revoke, a denial or a reload changed the verdict
	numCauses
)

var causeNames = [numCauses]string{"closed", "error", "idle", "lifetime", "until", "shutdown", "redecided"}

const (
	dirUpstream = iota // client to origin
	dirDownstream
)

type metrics struct {
	requests      [numModes][numKinds][2][]prometheus.Counter // [mode][kind][verdict][reason]
	refusals      [numModes][numRefusals]prometheus.Counter
	tunnelsActive [numModes]prometheus.Gauge
	tunnelBytes   [numModes][2]prometheus.Counter
	tunnelsClosed [numModes][numCauses]prometheus.Counter
	dialDuration  prometheus.Histogram
	interceptions prometheus.Counter
	certHits      prometheus.Counter
	certMisses    prometheus.Counter
	sniMismatch   [numModes]prometheus.Counter
	auth          [numAuthResults]prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m := &metrics{}
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "balise_proxy_requests_total",
		Help: "Proxy decisions by mode (explicit, transparent), kind (http, connect), verdict and reason.",
	}, []string{"mode", "kind", "verdict", "reason"})
	refusals := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "balise_proxy_refusals_total",
		Help: "Connections and requests refused for what they are rather than for a listed host, by reason: client (not allowed), port, limit (per client), bad_request, loop (Balise itself), not_tls (unreadable first flight on a TLS port), silent (nothing sent on a TLS port), no_sni, ip_literal, destination (always refused or denied), cert_scope (a blocked connection's TLS server name was another host, not blocked: no block-page certificate).",
	}, []string{"mode", "reason"})
	active := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "balise_proxy_tunnels_active",
		Help: "Tunnels currently open.",
	}, []string{"mode"})
	bytes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "balise_proxy_tunnel_bytes_total",
		Help: "Bytes carried by tunnels, by direction (upstream: client to origin; downstream: origin to client).",
	}, []string{"mode", "direction"})
	closed := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "balise_proxy_tunnels_closed_total",
		Help: "Tunnels closed, by cause (closed, error, idle, lifetime, until, shutdown, redecided).",
	}, []string{"mode", "cause"})
	m.dialDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "balise_proxy_dial_duration_seconds",
		Help:    "Time to open a connection to a destination (or through the parent proxy).",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	})
	m.interceptions = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "balise_proxy_interceptions_total",
		Help: "Blocked HTTPS connections terminated with the institution's CA to show the block page.",
	})
	m.certHits = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "balise_proxy_cert_cache_hits_total",
		Help: "Block-page certificates served from the cache.",
	})
	m.certMisses = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "balise_proxy_cert_cache_misses_total",
		Help: "Block-page certificates issued because the cache did not hold a valid one.",
	})
	mismatch := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "balise_proxy_sni_mismatch_total",
		Help: "Connections whose TLS server name was blocked while the CONNECT host or original destination was not.",
	}, []string{"mode"})
	auth := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "balise_proxy_authentications_total",
		Help: "Who-is-asking outcomes for listed hosts whose verdict could change with the person: challenged (407 sent), ok (Kerberos ticket verified), failed (credentials refused), bound (transparent: decided for the address's signed-in user). Never a user in a label.",
	}, []string{"result"})
	for i := range m.auth {
		m.auth[i] = auth.WithLabelValues(authResultNames[i])
	}
	for _, c := range []prometheus.Collector{requests, refusals, active, bytes, closed, m.dialDuration, m.interceptions, m.certHits, m.certMisses, mismatch, auth} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	reasons := reasonNames()
	for mo := range numModes {
		mode := modeNames[mo]
		for k := range numKinds {
			for v, verdict := range []policy.Verdict{policy.Allow, policy.Block} {
				m.requests[mo][k][v] = make([]prometheus.Counter, len(reasons))
				for r, reason := range reasons {
					m.requests[mo][k][v][r] = requests.WithLabelValues(mode, kindNames[k], verdict.String(), reason)
				}
			}
		}
		for r := range numRefusals {
			m.refusals[mo][r] = refusals.WithLabelValues(mode, refusalNames[r])
		}
		m.tunnelsActive[mo] = active.WithLabelValues(mode)
		m.tunnelBytes[mo][dirUpstream] = bytes.WithLabelValues(mode, "upstream")
		m.tunnelBytes[mo][dirDownstream] = bytes.WithLabelValues(mode, "downstream")
		for c := range numCauses {
			m.tunnelsClosed[mo][c] = closed.WithLabelValues(mode, causeNames[c])
		}
		m.sniMismatch[mo] = mismatch.WithLabelValues(mode)
	}
	return m, nil
}

func (m *metrics) request(mode, kind int, d policy.Decision, reason int) {
	v := 0
	if d.Verdict == policy.Block {
		v = 1
	}
	if reason < 0 {
		reason = int(d.Reason)
	}
	rs := m.requests[mode][kind][v]
	if reason < len(rs) {
		rs[reason].Inc()
	}
}
