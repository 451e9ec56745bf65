package config

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// listServer serves one list whose content, ETag and status a test sets.
type listServer struct {
	mu          sync.Mutex
	body        string
	etag        string
	status      int
	requests    int
	ifNoneMatch []string
}

func (s *listServer) set(status int, body, etag string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status, s.body, s.etag = status, body, etag
}

func (s *listServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests++
	s.ifNoneMatch = append(s.ifNoneMatch, r.Header.Get("If-None-Match"))
	if s.status != http.StatusOK {
		w.WriteHeader(s.status)
		return
	}
	if s.etag != "" && r.Header.Get("If-None-Match") == s.etag {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	w.Header().Set("ETag", s.etag)
	w.Write([]byte(s.body))
}

func fetcherSetup(t *testing.T, extra string) (*listServer, *httptest.Server, *Config, string) {
	t.Helper()
	ls := &listServer{}
	ls.set(http.StatusOK, "0.0.0.0 one.example\n||two.example^\n", `"v1"`)
	srv := httptest.NewTLSServer(ls)
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	c := mustParse(t, filepath.Join(dir, "b.toml"), `[[list]]
name = "remote"
category = "networking"
domains = ["inline.example"]
urls = ["`+srv.URL+`/list.txt"]
`+extra)
	return ls, srv, c, dir
}

func listDomains(t *testing.T, c *Config) []string {
	t.Helper()
	spec, err := c.Spec()
	if err != nil {
		t.Fatal(err)
	}
	s, _ := findService(spec, "remote")
	return s.Domains
}

func TestFetcherRefresh(t *testing.T) {
	ls, srv, c, dir := fetcherSetup(t, "")
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	f := NewFetcher(c, srv.Client(), nil, m)
	ctx := context.Background()
	clock := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	f.now = func() time.Time { return clock }

	if got := listDomains(t, c); !slices.Equal(got, []string{"inline.example"}) {
		t.Fatalf("before any download: domains = %v", got)
	}
	steps := []struct {
		name        string
		status      int
		body, etag  string
		wantChanged bool
		wantDomains []string
		wantFails   float64
	}{
		{"first download", 200, "0.0.0.0 one.example\n||two.example^\n", `"v1"`, true, []string{"inline.example", "one.example", "two.example"}, 0},
		{"not modified", 200, "0.0.0.0 one.example\n||two.example^\n", `"v1"`, false, []string{"inline.example", "one.example", "two.example"}, 0},
		{"server error keeps the copy", 500, "", "", false, []string{"inline.example", "one.example", "two.example"}, 1},
		{"garbage keeps the copy", 200, "<html>not a list</html>\n", `"v2"`, false, []string{"inline.example", "one.example", "two.example"}, 2},
		{"mostly malformed keeps the copy", 200, "<html>\n<body>\nok.example\n</body>\n", `"v2b"`, false, []string{"inline.example", "one.example", "two.example"}, 3},
		{"empty keeps the copy", 200, "", `"v3"`, false, []string{"inline.example", "one.example", "two.example"}, 4},
		{"public suffixes and top-level domains are dropped", 200, "0.0.0.0 com\n0.0.0.0 qc.ca\nfour.example\n", `"v3b"`, true, []string{"four.example", "inline.example"}, 4},
		{"new content", 200, "three.example\n", `"v4"`, true, []string{"inline.example", "three.example"}, 4},
	}
	for _, st := range steps {
		ls.set(st.status, st.body, st.etag)
		clock = clock.Add(time.Hour)
		if got := f.Refresh(ctx, "remote"); got != st.wantChanged {
			t.Errorf("%s: Refresh = %v, want %v", st.name, got, st.wantChanged)
		}
		if got := listDomains(t, c); !slices.Equal(got, st.wantDomains) {
			t.Errorf("%s: domains = %v, want %v", st.name, got, st.wantDomains)
		}
		if got := metricValue(t, m.listFailures.WithLabelValues("remote")); got != st.wantFails {
			t.Errorf("%s: balise_list_refresh_failures_total = %v, want %v", st.name, got, st.wantFails)
		}
		if got := metricValue(t, m.listDomains.WithLabelValues("remote")); got != float64(len(st.wantDomains)) {
			t.Errorf("%s: balise_list_domains = %v, want %d", st.name, got, len(st.wantDomains))
		}
	}
	if ls.ifNoneMatch[1] != `"v1"` {
		t.Errorf("second request If-None-Match = %q, want \"v1\"", ls.ifNoneMatch[1])
	}
	st := f.Status()
	if len(st) != 1 || st[0].Domains != 2 || !st[0].LastRefresh.Equal(clock) {
		t.Errorf("Status = %+v, want 2 domains refreshed at %v", st, clock)
	}
	if got := metricValue(t, m.listLastRefresh.WithLabelValues("remote")); got != float64(clock.Unix()) {
		t.Errorf("balise_list_last_refresh_timestamp_seconds = %v, want %v", got, clock.Unix())
	}
	// The copy survives a restart: a new Fetcher and a new Config see it.
	if entries, _ := os.ReadDir(filepath.Join(dir, "balise-data", "lists")); len(entries) != 2 {
		t.Errorf("cache holds %d files, want the list and its metadata", len(entries))
	}
	f2 := NewFetcher(c, srv.Client(), nil, nil)
	if st := f2.Status(); st[0].Domains != 2 || !st[0].LastRefresh.Equal(clock) {
		t.Errorf("after restart Status = %+v", st)
	}
}

func TestFetcherPin(t *testing.T) {
	body := "pinned.example\n"
	sum := sha256.Sum256([]byte(body))
	ls, srv, c, _ := fetcherSetup(t, `sha256 = "`+hex.EncodeToString(sum[:])+`"`)
	f := NewFetcher(c, srv.Client(), nil, nil)
	ls.set(200, "other.example\n", `"x"`)
	if f.Refresh(context.Background(), "remote") {
		t.Errorf("Refresh with a content that does not match the pin changed the list")
	}
	ls.set(200, body, `"y"`)
	if !f.Refresh(context.Background(), "remote") {
		t.Errorf("Refresh with the pinned content did not change the list")
	}
	if got := listDomains(t, c); !slices.Equal(got, []string{"inline.example", "pinned.example"}) {
		t.Errorf("domains = %v", got)
	}
}

func TestFetcherRun(t *testing.T) {
	_, srv, c, _ := fetcherSetup(t, "")
	f := NewFetcher(c, srv.Client(), nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	changed := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		f.Run(ctx, func() { changed <- struct{}{} })
		close(done)
	}()
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("onChange not called after the first download")
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if got := listDomains(t, c); len(got) != 3 {
		t.Errorf("domains after Run = %v, want 3", got)
	}
}

func TestMetricsSetConfig(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	c := mustParse(t, "", `[[list]]
name = "a"
category = "forums"
domains = ["a.example", "b.example"]`)
	m.SetConfig(c)
	if got := metricValue(t, m.listDomains.WithLabelValues("a")); got != 2 {
		t.Errorf("balise_list_domains{list=a} = %v, want 2", got)
	}
	if got := metricValue(t, m.catalogInfo.WithLabelValues(Catalog().Version, CatalogEmbedded)); got != 1 {
		t.Errorf("balise_catalog_info = %v, want 1", got)
	}
	p, err := c.Compile()
	if err != nil {
		t.Fatal(err)
	}
	m.SetPolicy(p)
	if got := metricValue(t, m.policyDomains); got != float64(p.DomainCount()) || got == 0 {
		t.Errorf("balise_policy_domains = %v, want %d", got, p.DomainCount())
	}
	mfs, err := reg.Gather()
	if err != nil || len(mfs) != 6 {
		t.Errorf("gather: %d families, %v; want 6 (catalog info, serial and last check, policy domains, list domains and failures; no refresh series without URL lists)", len(mfs), err)
	}
}

// metricValue reads a gauge or counter.
func metricValue(t *testing.T, m prometheus.Metric) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		t.Fatal(err)
	}
	switch {
	case d.Gauge != nil:
		return d.Gauge.GetValue()
	case d.Counter != nil:
		return d.Counter.GetValue()
	}
	t.Fatalf("metric %v is neither a gauge nor a counter", m.Desc())
	return 0
}

func TestFetcherRefusesHTTPRedirect(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://127.0.0.1:1/list.txt", http.StatusFound)
	}))
	defer srv.Close()
	c := mustParse(t, filepath.Join(t.TempDir(), "b.toml"), `[[list]]
name = "remote"
category = "networking"
urls = ["`+srv.URL+`/list.txt"]`)
	m := NewMetrics(nil)
	f := NewFetcher(c, srv.Client(), nil, m)
	if f.Refresh(context.Background(), "remote") {
		t.Errorf("Refresh followed a redirect to http")
	}
	if got := metricValue(t, m.listFailures.WithLabelValues("remote")); got != 1 {
		t.Errorf("failures = %v, want 1", got)
	}
}
