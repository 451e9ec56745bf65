package tests

import (
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/balise-net/balise/deploy"
)

// opsScrapeFamilies parses the instance's /metrics with Prometheus's own
// text parser.
func opsScrapeFamilies(t *testing.T, in *instance) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(in.Metrics()))
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return fams
}

// forbiddenLabels would put a person, a workstation or a visited site in a
// time series (Quebec's Law 25, and unbounded cardinality).
var forbiddenLabels = []string{"client", "ip", "user", "host", "addr", "address", "domain", "name", "qname", "username", "src", "source"}

// otherPrefixes are the families of the standard Go and process
// collectors, which follow Prometheus's conventions already.
var otherPrefixes = []string{"go_", "process_", "promhttp_"}

// wantLabels are the label names of the documented Balise metrics, which
// the shipped alerts and dashboard aggregate by.
var wantLabels = map[string][]string{
	"balise_build_info":                            {"goversion", "version"},
	"balise_config_reloads_total":                  {"result"},
	"balise_catalog_info":                          {"origin", "version"},
	"balise_list_domains":                          {"list"},
	"balise_list_last_refresh_timestamp_seconds":   {"list"},
	"balise_list_refresh_failures_total":           {"list"},
	"balise_dns_queries_total":                     {"proto", "reason", "verdict"},
	"balise_dns_request_duration_seconds":          {"proto"},
	"balise_dns_upstream_request_duration_seconds": {"upstream"},
	"balise_dns_upstream_errors_total":             {"kind", "upstream"},
	"balise_dns_upstream_up":                       {"upstream"},
	"balise_dns_malformed_total":                   {"kind"},
	"balise_proxy_requests_total":                  {"kind", "mode", "reason", "verdict"},
	"balise_proxy_refusals_total":                  {"mode", "reason"},
	"balise_proxy_tunnels_active":                  {"mode"},
	"balise_proxy_tunnel_bytes_total":              {"direction", "mode"},
	"balise_proxy_tunnels_closed_total":            {"cause", "mode"},
	"balise_exceptions_requests_total":             {"result"},
	"balise_decisions_total":                       {"category", "front", "reason", "verdict"},
}

var metricNameSyntax = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

// TestMetricNaming scrapes a running Balise, after traffic, and checks
// every family against Balise's naming rules, and that the operations
// guide documents it.
func TestMetricNaming(t *testing.T) {
	in := opsStartFull(t)
	opsQueryBlocked(t, in) // creates samples whose labels must not name the client
	fams := opsScrapeFamilies(t, in)
	if len(fams) == 0 {
		t.Fatal("/metrics is empty")
	}
	readme, err := os.ReadFile("../deploy/README.md")
	if err != nil {
		t.Fatal(err)
	}
	balise := 0
	for name, f := range fams {
		if strings.HasPrefix(name, "balise_") && !strings.Contains(string(readme), "| `"+name+"` |") {
			t.Errorf("%s is not in the metrics table of deploy/README.md", name)
		}
		if f.GetHelp() == "" {
			t.Errorf("%s has no help text", name)
		}
		if slices.ContainsFunc(otherPrefixes, func(p string) bool { return strings.HasPrefix(name, p) }) {
			continue
		}
		balise++
		for _, p := range familyProblems(name, f) {
			t.Error(p)
		}
	}
	if balise == 0 {
		t.Error("no balise_ metric exposed")
	}
}

// familyProblems applies the naming rules to one Balise family and
// returns what breaks them.
func familyProblems(name string, f *dto.MetricFamily) []string {
	var probs []string
	errorf := func(format string, args ...any) { probs = append(probs, fmt.Sprintf(format, args...)) }
	if !strings.HasPrefix(name, "balise_") || !metricNameSyntax.MatchString(name) {
		errorf("%s: want a balise_ prefix and lower-case snake case", name)
	}
	total := strings.HasSuffix(name, "_total")
	switch f.GetType() {
	case dto.MetricType_COUNTER:
		if !total {
			errorf("%s: counter names end in _total", name)
		}
	case dto.MetricType_HISTOGRAM, dto.MetricType_SUMMARY, dto.MetricType_GAUGE_HISTOGRAM:
		if !strings.HasSuffix(name, "_seconds") && !strings.HasSuffix(name, "_bytes") {
			errorf("%s: %v names end in their unit (_seconds, _bytes)", name, f.GetType())
		}
	default:
		if total {
			errorf("%s: only counters end in _total (this is a %v)", name, f.GetType())
		}
	}
	for _, w := range []string{"duration", "latency", "age", "timestamp"} {
		if strings.Contains(name, "_"+w) && !strings.HasSuffix(name, "_seconds") {
			errorf("%s: a %s is in seconds and its name says so (_seconds)", name, w)
		}
	}
	if strings.HasSuffix(name, "_info") && f.GetType() != dto.MetricType_GAUGE {
		errorf("%s: _info metrics are gauges", name)
	}
	for _, m := range f.GetMetric() {
		var names []string
		for _, l := range m.GetLabel() {
			names = append(names, l.GetName())
			if slices.Contains(forbiddenLabels, l.GetName()) {
				errorf("%s: label %q would identify people or sites", name, l.GetName())
			}
			if _, err := netip.ParseAddr(l.GetValue()); err == nil {
				errorf("%s{%s=%q}: a label value is an IP address", name, l.GetName(), l.GetValue())
			}
		}
		slices.Sort(names)
		if want, ok := wantLabels[name]; ok && !slices.Equal(names, want) {
			errorf("%s: labels %v, want %v (the alerts and dashboard use them)", name, names, want)
		}
		if strings.HasSuffix(name, "_info") && m.GetGauge().GetValue() != 1 {
			errorf("%s: value %v, want 1", name, m.GetGauge().GetValue())
		}
	}
	return probs
}

func TestFamilyProblems(t *testing.T) {
	tests := []struct {
		name, exposition, want string // want: a substring of a problem, "" for none
	}{
		{"good counter", "# HELP balise_x_total x\n# TYPE balise_x_total counter\nbalise_x_total{kind=\"a\"} 1\n", ""},
		{"counter without _total", "# HELP balise_x x\n# TYPE balise_x counter\nbalise_x 1\n", "end in _total"},
		{"gauge with _total", "# HELP balise_x_total x\n# TYPE balise_x_total gauge\nbalise_x_total 1\n", "only counters"},
		{"histogram without unit", "# HELP balise_dns_latency x\n# TYPE balise_dns_latency histogram\nbalise_dns_latency_bucket{le=\"+Inf\"} 1\nbalise_dns_latency_sum 1\nbalise_dns_latency_count 1\n", "end in their unit"},
		{"other prefix", "# HELP dns_up x\n# TYPE dns_up gauge\ndns_up 1\n", "balise_ prefix"},
		{"client label", "# HELP balise_y_total x\n# TYPE balise_y_total counter\nbalise_y_total{client=\"c1\"} 1\n", "label \"client\""},
		{"address value", "# HELP balise_y_total x\n# TYPE balise_y_total counter\nbalise_y_total{who=\"10.1.2.3\"} 1\n", "IP address"},
		{"age in minutes", "# HELP balise_oldest_age_minutes x\n# TYPE balise_oldest_age_minutes gauge\nbalise_oldest_age_minutes 1\n", "in seconds"},
		{"contract labels", "# HELP balise_dns_queries_total x\n# TYPE balise_dns_queries_total counter\nbalise_dns_queries_total{proto=\"udp\",verdict=\"block\"} 1\n", "want [proto reason verdict]"},
		{"info not 1", "# HELP balise_build_info x\n# TYPE balise_build_info gauge\nbalise_build_info{goversion=\"g\",version=\"v\"} 2\n", "want 1"},
	}
	for _, tt := range tests {
		p := expfmt.NewTextParser(model.LegacyValidation)
		fams, err := p.TextToMetricFamilies(strings.NewReader(tt.exposition))
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		var probs []string
		for n, f := range fams {
			probs = append(probs, familyProblems(n, f)...)
		}
		got := strings.Join(probs, "; ")
		if tt.want == "" && got != "" || tt.want != "" && !strings.Contains(got, tt.want) {
			t.Errorf("%s: familyProblems = %q, want %q", tt.name, got, tt.want)
		}
	}
}

// TestDeployFilesUseExposedMetrics checks that every metric the shipped
// alerts and dashboard query is one a running Balise exposes, with every
// front-end and the exception register on: an alert on a name Balise does
// not export would never fire.
func TestDeployFilesUseExposedMetrics(t *testing.T) {
	in := opsStartFull(t)
	opsQueryBlocked(t, in) // per-category decision series exist once a listed name is decided
	fams := opsScrapeFamilies(t, in)
	used := map[string][]string{} // metric -> where
	for where, expr := range opsDeployExprs(t) {
		for _, n := range deploy.MetricNames(expr) {
			used[n] = append(used[n], where)
		}
	}
	if len(used) < 10 {
		t.Fatalf("found %d metrics in the deployment files, want the alerts' and dashboard's", len(used))
	}
	for name, where := range used {
		if name == "up" {
			continue // added by Prometheus
		}
		if _, ok := fams[name]; !ok {
			slices.Sort(where)
			t.Errorf("%s is not exposed by balise, but %s use it", name, strings.Join(where, ", "))
		}
	}
}
