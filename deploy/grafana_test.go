package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// dashboard is the part of a Grafana dashboard model the tests read.
type dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name string `json:"name"`
			Type string `json:"type"`
		} `json:"list"`
	} `json:"templating"`
	Annotations struct {
		List []struct {
			Name string `json:"name"`
			Expr string `json:"expr"`
		} `json:"list"`
	} `json:"annotations"`
}

type panel struct {
	ID          int    `json:"id"`
	Type        string `json:"type"`
	Title       string `json:"title"`
	Description string `json:"description"`
	GridPos     struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's panels
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	var d dashboard
	if err := json.Unmarshal(readFile(t, "grafana/balise.json"), &d); err != nil {
		t.Fatalf("grafana/balise.json is not valid JSON: %v", err)
	}
	return d
}

// allPanels flattens rows.
func allPanels(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, allPanels(p.Panels)...)
	}
	return out
}

// dashboardExprs returns every PromQL expression of the dashboard, keyed by
// where it is.
func dashboardExprs(d dashboard) map[string]string {
	exprs := map[string]string{}
	for _, p := range allPanels(d.Panels) {
		for _, tg := range p.Targets {
			exprs[fmt.Sprintf("panel %d %q target %s", p.ID, p.Title, tg.RefID)] = tg.Expr
		}
	}
	for _, a := range d.Annotations.List {
		exprs[fmt.Sprintf("annotation %q", a.Name)] = a.Expr
	}
	return exprs
}

func TestDashboard(t *testing.T) {
	d := loadDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Errorf("dashboard uid %q title %q: both are required", d.UID, d.Title)
	}
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
	}
	for _, v := range []string{"datasource", "job", "instance"} {
		if !vars[v] {
			t.Errorf("dashboard has no $%s variable", v)
		}
	}
	ids := map[int]bool{}
	used := map[string]bool{}
	for _, p := range allPanels(d.Panels) {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Title == "" {
			t.Errorf("panel %d has no title", p.ID)
		}
		g := p.GridPos
		if g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("panel %d %q: gridPos %+v outside the 24-column grid", p.ID, p.Title, g)
		}
		if p.Type == "row" {
			continue
		}
		if p.Description == "" {
			t.Errorf("panel %d %q has no description", p.ID, p.Title)
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %d %q does not use the $datasource variable", p.ID, p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %d %q has no query", p.ID, p.Title)
		}
	}
	for where, expr := range dashboardExprs(d) {
		if expr == "" {
			t.Errorf("%s: empty expression", where)
			continue
		}
		for _, n := range checkMetricNames(t, where, expr) {
			used[n] = true
		}
		if !filtersEverySelector(expr) {
			t.Errorf("%s: every selector must filter on $job and $instance: %s", where, expr)
		}
	}
	// The views operators asked for: decisions, DNS rate and latency,
	// cache, upstreams, tunnels, exception requests.
	for _, want := range []string{
		"balise_dns_queries_total", "balise_proxy_requests_total",
		"balise_dns_request_duration_seconds", "balise_dns_cache_hits_total",
		"balise_dns_cache_misses_total", "balise_dns_upstream_up",
		"balise_dns_upstream_errors_total", "balise_dns_stale_answers_total",
		"balise_proxy_tunnels_active", "balise_proxy_tunnels_closed_total",
		"balise_proxy_refusals_total", "balise_exceptions_pending",
		"balise_exceptions_oldest_pending_age_seconds", "balise_config_reloads_total",
	} {
		if !used[want] {
			t.Errorf("no dashboard panel shows %s", want)
		}
	}
}

// TestDashboardPromQL has promtool parse every dashboard expression, with
// Grafana's variables replaced by values, as recording rules.
func TestDashboardPromQL(t *testing.T) {
	promtool := requireTool(t, "promtool")
	d := loadDashboard(t)
	r := strings.NewReplacer("$__rate_interval", "5m", "$job", ".+", "$instance", ".+")
	var b strings.Builder
	b.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	i := 0
	for where, expr := range dashboardExprs(d) {
		q, err := json.Marshal(r.Replace(expr)) // a JSON string is a YAML string
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "      # %s\n      - record: dashboard:expr%d\n        expr: %s\n", where, i, q)
		i++
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "dashboard_rules.yml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := run(t, dir, promtool, "check", "rules", path); err != nil {
		t.Errorf("promtool rejects dashboard expressions: %v\n%s", err, out)
	}
}

// filtersEverySelector reports whether every metric name in expr is
// followed by the $job and $instance matchers, so the dashboard's
// variables apply to every series.
func filtersEverySelector(expr string) bool {
	const filter = `{job=~"$job", instance=~"$instance"`
	for _, m := range metricNameRE.FindAllStringIndex(stripQuoted(expr), -1) {
		if !strings.HasPrefix(expr[m[1]:], filter) {
			return false
		}
	}
	return true
}

func TestFiltersEverySelector(t *testing.T) {
	tests := []struct {
		expr string
		want bool
	}{
		{`sum(rate(balise_dns_queries_total{job=~"$job", instance=~"$instance"}[5m]))`, true},
		{`sum(rate(balise_dns_queries_total{job=~"$job", instance=~"$instance", verdict="block"}[5m]))`, true},
		{`sum(rate(balise_dns_queries_total[5m]))`, false},
		{`a{job=~"$job", instance=~"$instance"} / balise_dns_cache_hits_total{job=~"$job", instance=~"$instance"} + balise_dns_cache_misses_total`, false},
		{`up{job="balise"}`, false},
	}
	for _, tt := range tests {
		if got := filtersEverySelector(tt.expr); got != tt.want {
			t.Errorf("filtersEverySelector(%q) = %v, want %v", tt.expr, got, tt.want)
		}
	}
}
