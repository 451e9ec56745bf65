package deploy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// ruleFile is the subset of a Prometheus rule file the tests read; decoded
// strictly, so a misspelt key fails.
type ruleFile struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []struct {
			Alert       string            `json:"alert"`
			Record      string            `json:"record"`
			Expr        string            `json:"expr"`
			For         string            `json:"for"`
			Labels      map[string]string `json:"labels"`
			Annotations map[string]string `json:"annotations"`
		} `json:"rules"`
	} `json:"groups"`
}

// ruleTestFile is a promtool unit-test file.
type ruleTestFile struct {
	RuleFiles          []string `json:"rule_files"`
	EvaluationInterval string   `json:"evaluation_interval"`
	Tests              []struct {
		Name        string `json:"name"`
		Interval    string `json:"interval"`
		InputSeries []struct {
			Series string `json:"series"`
			Values string `json:"values"`
		} `json:"input_series"`
		AlertRuleTest []struct {
			EvalTime  string `json:"eval_time"`
			AlertName string `json:"alertname"`
			ExpAlerts []struct {
				ExpLabels      map[string]string `json:"exp_labels"`
				ExpAnnotations map[string]string `json:"exp_annotations"`
			} `json:"exp_alerts"`
		} `json:"alert_rule_test"`
	} `json:"tests"`
}

func loadRules(t *testing.T) ruleFile {
	t.Helper()
	var rf ruleFile
	if err := yaml.UnmarshalStrict(readFile(t, "prometheus/alerts.yml"), &rf); err != nil {
		t.Fatalf("prometheus/alerts.yml: %v", err)
	}
	return rf
}

func TestPromtoolCheck(t *testing.T) {
	promtool := requireTool(t, "promtool")
	for _, args := range [][]string{
		{"check", "rules", "alerts.yml"},
		{"check", "config", "prometheus.yml"},
		{"test", "rules", "alerts_test.yml"},
	} {
		out, err := run(t, "prometheus", promtool, args...)
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// TestAlertsRequired checks that the alerts operators were promised exist,
// with a severity and text, and that they use only Balise's metrics.
func TestAlertsRequired(t *testing.T) {
	rf := loadRules(t)
	alerts := map[string]bool{}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			if alerts[r.Alert] {
				t.Errorf("alert %s defined twice", r.Alert)
			}
			alerts[r.Alert] = true
			if s := r.Labels["severity"]; s != "critical" && s != "warning" {
				t.Errorf("alert %s: severity %q, want critical or warning", r.Alert, s)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("alert %s: needs summary and description annotations", r.Alert)
			}
			if !strings.Contains(r.Expr, `job="balise"`) {
				t.Errorf("alert %s: expression does not select job=\"balise\": %s", r.Alert, r.Expr)
			}
			checkMetricNames(t, "alert "+r.Alert, r.Expr)
		}
	}
	// What operators must be told about, and the alert that tells them.
	for _, want := range []string{
		"BaliseDown",                     // process down
		"BaliseDNSUpstreamDown",          // upstream DNS failing
		"BaliseDNSAllUpstreamsDown",      // upstream DNS failing, all of them
		"BaliseDNSServingStale",          // serving stale answers
		"BaliseProxyRefusalsSpiking",     // proxy refusals spiking
		"BaliseConfigReloadFailed",       // config reload failing
		"BaliseAuditLogWriteErrors",      // audit-log write errors
		"BaliseExceptionRequestsWaiting", // requests pending too long
	} {
		if !alerts[want] {
			t.Errorf("alerts.yml has no alert %s", want)
		}
	}
	readme := string(readFile(t, "README.md"))
	for a := range alerts {
		if !strings.Contains(readme, "### "+a) {
			t.Errorf("README.md does not explain alert %s (no \"### %s\" heading)", a, a)
		}
	}
}

// TestAlertUnitTestsCoverEveryAlert checks that alerts_test.yml has, for
// every alert, a case where it fires and one where it stays quiet.
func TestAlertUnitTestsCoverEveryAlert(t *testing.T) {
	rf := loadRules(t)
	var tf ruleTestFile
	if err := yaml.UnmarshalStrict(readFile(t, "prometheus/alerts_test.yml"), &tf); err != nil {
		t.Fatalf("prometheus/alerts_test.yml: %v", err)
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range tf.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.AlertName] = true
			} else {
				quiet[a.AlertName] = true
			}
		}
	}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			if !fires[r.Alert] {
				t.Errorf("alerts_test.yml: no case where %s fires", r.Alert)
			}
			if !quiet[r.Alert] {
				t.Errorf("alerts_test.yml: no case where %s stays quiet", r.Alert)
			}
		}
	}
}

// TestAlertUnitTestsCatchBrokenRules disables one alert at a time (its
// expression replaced by one that never fires) and requires promtool's
// unit tests to fail: every alert's tests can catch a broken rule.
func TestAlertUnitTestsCatchBrokenRules(t *testing.T) {
	promtool := requireTool(t, "promtool")
	tests := readFile(t, "prometheus/alerts_test.yml")
	var doc map[string]any
	if err := yaml.Unmarshal(readFile(t, "prometheus/alerts.yml"), &doc); err != nil {
		t.Fatal(err)
	}
	for _, name := range alertNames(doc) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var mutated map[string]any
			if err := yaml.Unmarshal(readFile(t, "prometheus/alerts.yml"), &mutated); err != nil {
				t.Fatal(err)
			}
			setAlertExpr(mutated, name, "vector(1) == 2")
			b, err := yaml.Marshal(mutated)
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "alerts.yml"), b, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "alerts_test.yml"), tests, 0o644); err != nil {
				t.Fatal(err)
			}
			if out, err := run(t, dir, promtool, "test", "rules", "alerts_test.yml"); err == nil {
				t.Errorf("promtool test rules passed with alert %s disabled; its tests cannot catch a broken rule\n%s", name, out)
			}
		})
	}
}

// alertNames lists the alerts of a rule file decoded generically.
func alertNames(doc map[string]any) []string {
	var names []string
	for _, g := range doc["groups"].([]any) {
		for _, r := range g.(map[string]any)["rules"].([]any) {
			if a, ok := r.(map[string]any)["alert"].(string); ok {
				names = append(names, a)
			}
		}
	}
	return names
}

// setAlertExpr replaces the expression of the named alert.
func setAlertExpr(doc map[string]any, alert, expr string) {
	for _, g := range doc["groups"].([]any) {
		for _, r := range g.(map[string]any)["rules"].([]any) {
			if m := r.(map[string]any); m["alert"] == alert {
				m["expr"] = expr
			}
		}
	}
}

// TestScrapeConfig checks that prometheus.yml scrapes Balise's /metrics
// under the job name the alerts expect, and loads the alerts.
func TestScrapeConfig(t *testing.T) {
	var cfg struct {
		Global        map[string]any `json:"global"`
		RuleFiles     []string       `json:"rule_files"`
		ScrapeConfigs []struct {
			JobName        string `json:"job_name"`
			MetricsPath    string `json:"metrics_path"`
			Scheme         string `json:"scheme"`
			ScrapeInterval string `json:"scrape_interval"`
			ScrapeTimeout  string `json:"scrape_timeout"`
			StaticConfigs  []struct {
				Targets []string          `json:"targets"`
				Labels  map[string]string `json:"labels"`
			} `json:"static_configs"`
		} `json:"scrape_configs"`
	}
	if err := yaml.UnmarshalStrict(readFile(t, "prometheus/prometheus.yml"), &cfg); err != nil {
		t.Fatalf("prometheus/prometheus.yml: %v", err)
	}
	if len(cfg.RuleFiles) != 1 || cfg.RuleFiles[0] != "alerts.yml" {
		t.Errorf("rule_files = %v, want [alerts.yml]", cfg.RuleFiles)
	}
	if len(cfg.ScrapeConfigs) != 1 {
		t.Fatalf("%d scrape configs, want 1", len(cfg.ScrapeConfigs))
	}
	sc := cfg.ScrapeConfigs[0]
	if sc.JobName != "balise" || sc.MetricsPath != "/metrics" {
		t.Errorf("job %q path %q, want job balise path /metrics", sc.JobName, sc.MetricsPath)
	}
	n := 0
	for _, s := range sc.StaticConfigs {
		for _, target := range s.Targets {
			n++
			if !strings.HasSuffix(target, ":9464") {
				t.Errorf("target %q is not on the metrics port 9464", target)
			}
		}
	}
	if n < 2 {
		t.Errorf("%d targets, want at least two (two resolvers)", n)
	}
}
