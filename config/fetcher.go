package config

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// maxListBytes bounds one downloaded list.
const maxListBytes = 64 << 20

// ListStatus is the state of one [[list]].
type ListStatus struct {
	Name string
	// Domains is the number of entries the list holds now (inline, files
	// and cached downloads).
	Domains int
	// LastRefresh is the last successful refresh of its URLs (zero when
	// none happened yet, or when the list has no URLs).
	LastRefresh time.Time
}

// Fetcher downloads the URL lists of a configuration over HTTPS, keeps
// the last good copy of each in the list cache directory ([lists]
// cache_dir) and refreshes them at their interval. A failed or rejected
// download never changes a list: the last good copy stays. Each URL's
// copy is <cache_dir>/<list>-<hash of the URL>.list, with a .meta file
// holding its ETag, Last-Modified and fetch time.
type Fetcher struct {
	cfg     *Config
	client  *http.Client
	log     *slog.Logger
	metrics *Metrics
	now     func() time.Time

	mu     sync.Mutex
	status map[string]*ListStatus
}

// NewFetcher returns a Fetcher for c's URL lists. A nil client uses one
// with a 60 s timeout; a client without CheckRedirect gets one that
// refuses redirects away from https. A nil log discards; nil metrics
// records none.
func NewFetcher(c *Config, client *http.Client, log *slog.Logger, m *Metrics) *Fetcher {
	client, log = downloadDefaults(client, log)
	f := &Fetcher{cfg: c, client: client, log: log, metrics: m, now: time.Now, status: map[string]*ListStatus{}}
	for _, l := range c.Lists {
		st := &ListStatus{Name: l.Name, Domains: len(l.Domains) + len(l.fileDomains)}
		for _, u := range l.URLs {
			meta, _ := readMeta(c.ListCache.CacheDir, l.Name, u)
			st.Domains += meta.Domains
			if meta.Fetched.After(st.LastRefresh) {
				st.LastRefresh = meta.Fetched
			}
		}
		f.status[l.Name] = st
	}
	return f
}

// httpsRedirectsOnly refuses a redirect away from https.
func httpsRedirectsOnly(req *http.Request, via []*http.Request) error {
	if req.URL.Scheme != "https" {
		return fmt.Errorf("redirect to %s refused: lists are fetched over https only", req.URL.Redacted())
	}
	if len(via) >= 10 {
		return errors.New("stopped after 10 redirects")
	}
	return nil
}

// Status returns the state of every list, in configuration order.
func (f *Fetcher) Status() []ListStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]ListStatus, 0, len(f.cfg.Lists))
	for _, l := range f.cfg.Lists {
		out = append(out, *f.status[l.Name])
	}
	return out
}

// Run refreshes the URL lists until ctx is done: each list when its last
// good copy is older than its refresh interval (at once on a first run),
// then at that interval. After a download changed a list's content it
// calls onChange (never concurrently); the caller recompiles the policy
// (Config.Compile reads the new copies). Run returns when ctx is done,
// also when the configuration has no URL list.
func (f *Fetcher) Run(ctx context.Context, onChange func()) {
	f.publish()
	defer func() { <-ctx.Done() }()
	var changeMu sync.Mutex
	var wg sync.WaitGroup
	for _, l := range f.cfg.Lists {
		if len(l.URLs) == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.loop(ctx, l, func() {
				changeMu.Lock()
				defer changeMu.Unlock()
				if onChange != nil && ctx.Err() == nil {
					onChange()
				}
			})
		}()
	}
	wg.Wait()
}

func (f *Fetcher) loop(ctx context.Context, l List, changed func()) {
	f.mu.Lock()
	last := f.status[l.Name].LastRefresh
	f.mu.Unlock()
	wait := time.Duration(0)
	if !last.IsZero() {
		wait = max(0, last.Add(l.Refresh).Sub(f.now()))
	}
	for {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if f.Refresh(ctx, l.Name) {
			changed()
		}
		wait = l.Refresh
	}
}

// Refresh downloads the URLs of the named list once and reports whether
// its content changed.
func (f *Fetcher) Refresh(ctx context.Context, name string) (changed bool) {
	var l *List
	for i := range f.cfg.Lists {
		if f.cfg.Lists[i].Name == name {
			l = &f.cfg.Lists[i]
		}
	}
	if l == nil {
		return false
	}
	ok := true
	for _, u := range l.URLs {
		c, err := f.fetch(ctx, l, u)
		if err != nil {
			ok = false
			if ctx.Err() != nil {
				return changed
			}
			f.log.Warn("list refresh failed", "list", l.Name, "url", u, "err", err)
			if f.metrics != nil {
				f.metrics.listFailures.WithLabelValues(l.Name).Inc()
			}
			continue
		}
		changed = changed || c
	}
	total := len(l.Domains) + len(l.fileDomains)
	for _, u := range l.URLs {
		meta, _ := readMeta(f.cfg.ListCache.CacheDir, l.Name, u)
		total += meta.Domains
	}
	f.mu.Lock()
	st := f.status[l.Name]
	st.Domains = total
	if ok {
		st.LastRefresh = f.now()
	}
	f.mu.Unlock()
	f.publish()
	return changed
}

// cacheMeta is the .meta file next to a cached list copy.
type cacheMeta struct {
	URL          string    `json:"url"`
	ETag         string    `json:"etag,omitempty"`
	LastModified string    `json:"last_modified,omitempty"`
	Fetched      time.Time `json:"fetched"`
	SHA256       string    `json:"sha256"`
	Domains      int       `json:"domains"`
}

func cachePath(dir, list, u string) string {
	h := sha256.Sum256([]byte(u))
	return filepath.Join(dir, list+"-"+hex.EncodeToString(h[:8])+".list")
}

func readMeta(dir, list, u string) (cacheMeta, error) {
	var m cacheMeta
	data, err := os.ReadFile(cachePath(dir, list, u) + ".meta")
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(data, &m); err != nil || m.URL != u {
		return cacheMeta{}, fmt.Errorf("invalid cache metadata for %s", u)
	}
	return m, nil
}

// readCachedURL returns the domains of the last good copy of u (none
// before the first successful download).
func readCachedURL(dir, list, u string) ([]string, error) {
	data, err := os.ReadFile(cachePath(dir, list, u))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	doms, _, _, err := parseList(bytes.NewReader(data), 0)
	doms, _ = dropPublicSuffixes(doms)
	return doms, err
}

// dropPublicSuffixes removes the entries of a downloaded list that would
// list a whole namespace (a public suffix or a top-level domain, see
// publicSuffixOf): a typo in a list somebody else maintains must not
// block every .com. It returns the entries kept and those dropped.
func dropPublicSuffixes(doms []string) (kept, dropped []string) {
	kept = doms[:0:0]
	for _, d := range doms {
		if _, bad := publicSuffixOf(d); bad {
			dropped = append(dropped, d)
			continue
		}
		kept = append(kept, d)
	}
	return kept, dropped
}

// fetch downloads one URL of a list and stores it when it is new.
func (f *Fetcher) fetch(ctx context.Context, l *List, u string) (changed bool, err error) {
	dir := f.cfg.ListCache.CacheDir
	meta, _ := readMeta(dir, l.Name, u)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return false, err
	}
	req.Header.Set("User-Agent", "balise-list-fetcher")
	if meta.ETag != "" {
		req.Header.Set("If-None-Match", meta.ETag)
	}
	if meta.LastModified != "" {
		req.Header.Set("If-Modified-Since", meta.LastModified)
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusNotModified:
		if meta.URL == "" {
			return false, errors.New("304 Not Modified without a cached copy")
		}
		meta.Fetched = f.now()
		return false, writeMeta(dir, l.Name, u, meta)
	case http.StatusOK:
	default:
		return false, fmt.Errorf("HTTP status %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxListBytes+1))
	if err != nil {
		return false, err
	}
	if len(body) > maxListBytes {
		return false, fmt.Errorf("list larger than %d bytes", maxListBytes)
	}
	sum := sha256.Sum256(body)
	hexSum := hex.EncodeToString(sum[:])
	if l.SHA256 != "" && hexSum != l.SHA256 {
		return false, fmt.Errorf("content SHA-256 %s does not match the pinned %s", hexSum, l.SHA256)
	}
	if bytes.IndexByte(body, 0) >= 0 {
		return false, errors.New("not a text file")
	}
	doms, probs, bad, err := parseList(bytes.NewReader(body), 1)
	if err != nil {
		return false, err
	}
	if len(doms) == 0 {
		return false, errors.New("no domain in the downloaded list")
	}
	if bad > len(doms) {
		return false, fmt.Errorf("more malformed lines (%d) than domains (%d): not a list (first problem at line %d: %s)", bad, len(doms), probs[0].Line, probs[0].Msg)
	}
	doms, dropped := dropPublicSuffixes(doms)
	if len(dropped) > 0 {
		f.log.Warn("list entries that are public suffixes or top-level domains, skipped", "list", l.Name, "url", u,
			"entries", len(dropped), "first", dropped[0])
	}
	if len(doms) == 0 {
		return false, errors.New("no domain in the downloaded list but public suffixes")
	}
	if bad > 0 {
		f.log.Warn("list has malformed lines, skipped", "list", l.Name, "url", u, "lines", bad,
			"first_line", probs[0].Line, "first_problem", probs[0].Msg)
	}
	changed = hexSum != meta.SHA256
	if changed {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return false, err
		}
		if err := writeAtomic(cachePath(dir, l.Name, u), body); err != nil {
			return false, err
		}
	}
	meta = cacheMeta{
		URL: u, ETag: resp.Header.Get("ETag"), LastModified: resp.Header.Get("Last-Modified"),
		Fetched: f.now(), SHA256: hexSum, Domains: len(doms),
	}
	return changed, writeMeta(dir, l.Name, u, meta)
}

func writeMeta(dir, list, u string, m cacheMeta) error {
	data, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	return writeAtomic(cachePath(dir, list, u)+".meta", data)
}

// writeAtomic replaces path with data: a reader sees the old or the new
// content, never a part.
func writeAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// publish sets the list gauges from the status.
func (f *Fetcher) publish() {
	if f.metrics == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, st := range f.status {
		f.metrics.listDomains.WithLabelValues(st.Name).Set(float64(st.Domains))
		if !st.LastRefresh.IsZero() {
			f.metrics.listLastRefresh.WithLabelValues(st.Name).Set(float64(st.LastRefresh.UnixNano()) / 1e9)
		}
	}
}

// downloadDefaults gives the list fetcher and the catalog updater their
// HTTP client (nil: one with a 60 s timeout; one without CheckRedirect
// gets one that refuses redirects away from https) and logger (nil:
// discard).
func downloadDefaults(client *http.Client, log *slog.Logger) (*http.Client, *slog.Logger) {
	if client == nil {
		client = &http.Client{Timeout: 60 * time.Second}
	}
	if client.CheckRedirect == nil {
		cl := *client
		cl.CheckRedirect = httpsRedirectsOnly
		client = &cl
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return client, log
}
