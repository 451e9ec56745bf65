package deploy

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// requireTool returns the path of an external program, skipping the test
// when it is missing unless BALISE_E2E=1, which makes it a failure.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("BALISE_E2E") == "1" {
			t.Fatalf("%s is required with BALISE_E2E=1: %v", name, err)
		}
		t.Skipf("%s not installed (set BALISE_E2E=1 to make this a failure)", name)
	}
	return p
}

// run runs a program with a time bound and returns its combined output and
// error.
func run(t *testing.T, dir, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return strings.TrimSpace(out.String()), err
}

// readFile returns a file's content or fails the test.
func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// knownMetrics are the metric families Balise exposes, as documented for
// its operators; alerts and dashboard panels may reference only these
// (and "up", which Prometheus adds to every target).
var knownMetrics = map[string]bool{
	"up":                                   true,
	"balise_build_info":                    true,
	"balise_config_reloads_total":          true,
	"balise_config_last_reload_successful": true,
	"balise_config_last_reload_success_timestamp_seconds": true,
	"balise_catalog_info":                          true,
	"balise_catalog_serial":                        true,
	"balise_catalog_updates_total":                 true,
	"balise_catalog_last_check_timestamp_seconds":  true,
	"balise_policy_domains":                        true,
	"balise_list_domains":                          true,
	"balise_list_last_refresh_timestamp_seconds":   true,
	"balise_list_refresh_failures_total":           true,
	"balise_dns_queries_total":                     true,
	"balise_dns_request_duration_seconds":          true,
	"balise_dns_upstream_request_duration_seconds": true,
	"balise_dns_upstream_errors_total":             true,
	"balise_dns_upstream_up":                       true,
	"balise_dns_cache_hits_total":                  true,
	"balise_dns_cache_misses_total":                true,
	"balise_dns_cache_entries":                     true,
	"balise_dns_stale_answers_total":               true,
	"balise_dns_identity_decisions_total":          true,
	"balise_proxy_authentications_total":           true,
	"balise_directory_lookups_total":               true,
	"balise_directory_authentications_total":       true,
	"balise_directory_request_duration_seconds":    true,
	"balise_directory_cache_entries":               true,
	"balise_identity_bound_addresses":              true,
	"balise_identity_bindings_evicted_total":       true,
	"balise_credit_breaks_started_total":           true,
	"balise_credit_seconds_used_total":             true,
	"balise_identity_shared_published_total":       true,
	"balise_identity_shared_applied_total":         true,
	"balise_identity_shared_dropped_total":         true,
	"balise_identity_shared_queued":                true,
	"balise_dns_malformed_total":                   true,
	"balise_dns_rate_limited_total":                true,
	"balise_dns_refusals_total":                    true,
	"balise_dns_tcp_connections":                   true,
	"balise_proxy_requests_total":                  true,
	"balise_proxy_refusals_total":                  true,
	"balise_proxy_tunnels_active":                  true,
	"balise_proxy_tunnel_bytes_total":              true,
	"balise_proxy_tunnels_closed_total":            true,
	"balise_proxy_dial_duration_seconds":           true,
	"balise_proxy_interceptions_total":             true,
	"balise_proxy_cert_cache_hits_total":           true,
	"balise_proxy_cert_cache_misses_total":         true,
	"balise_proxy_sni_mismatch_total":              true,
	"balise_proxy_listener_failures_total":         true,
	"balise_proxy_accept_errors_total":             true,
	"balise_proxy_connections_redecided_total":     true,
	"balise_decisions_total":                       true,
	"balise_exceptions_requests_total":             true,
	"balise_exceptions_pending":                    true,
	"balise_exceptions_oldest_pending_age_seconds": true,
	"balise_exceptions_grants_active":              true,
	"balise_exceptions_pending_overdue":            true,
	"balise_exceptions_audit_write_errors_total":   true,
	"balise_exceptions_notify_failures_total":      true,
	"balise_exceptions_store_up":                   true,
	"balise_exceptions_store_unavailable_total":    true,
	"balise_exceptions_leader":                     true,
	"balise_directory_up":                          true,
	"balise_directory_contact_age_seconds":         true,
}

// checkMetricNames fails for every metric expr references that is not in
// knownMetrics, and returns the names it references.
func checkMetricNames(t *testing.T, where, expr string) []string {
	t.Helper()
	names := MetricNames(expr)
	for _, n := range names {
		if !knownMetrics[n] {
			t.Errorf("%s: expression references unknown metric %q: %s", where, n, expr)
		}
	}
	return names
}

func TestMetricNames(t *testing.T) {
	tests := []struct {
		expr string
		want string
	}{
		{`up{job="balise"} == 0`, "up"},
		{`rate(balise_dns_queries_total{verdict="block"}[5m])`, "balise_dns_queries_total"},
		{`histogram_quantile(0.9, sum by (le) (rate(balise_dns_request_duration_seconds_bucket[5m])))`, "balise_dns_request_duration_seconds"},
		{`rate(balise_dns_upstream_errors_total[5m]) / rate(balise_dns_upstream_request_duration_seconds_count[5m])`, "balise_dns_upstream_errors_total balise_dns_upstream_request_duration_seconds"},
		{`balise_exceptions_pending{instance="balise_exceptions_fake"}`, "balise_exceptions_pending"},
		{`sum(balise_list_domains) + sum(balise_list_domains)`, "balise_list_domains"},
		{`balise_dns_cache_hits_total_count`, "balise_dns_cache_hits_total_count"},
		{`vector(1)`, ""},
	}
	for _, tt := range tests {
		if got := strings.Join(MetricNames(tt.expr), " "); got != tt.want {
			t.Errorf("MetricNames(%q) = %q, want %q", tt.expr, got, tt.want)
		}
	}
}
