package tests

import (
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"aead.dev/minisign"
	"github.com/miekg/dns"

	"github.com/balise-net/balise/config"
)

// catalogUpdate returns the embedded catalog's text with another version
// and serial and one more networking service listing name.
func catalogUpdate(serial int64, name string) []byte {
	text := string(config.EmbeddedCatalogText())
	i := strings.Index(text, "\nversion = ")
	j := strings.Index(text[i+1:], "\n")
	text = text[:i] + fmt.Sprintf("\nversion = \"2026-12-04.%d\"\nserial = %d", serial%100, serial) + text[i+1+j:]
	return []byte(text + fmt.Sprintf("\n[[service]]\nid = \"maj-essai\"\nname = \"Essai de mise à jour\"\ncategory = \"networking\"\ndomains = [%q]\n", name))
}

// catalogServer serves /catalog.toml and /catalog.toml.minisig over
// HTTPS; a nil signature is a 404.
type catalogServer struct {
	mu       sync.Mutex
	cat, sig []byte
	srv      *httptest.Server
}

func (c *catalogServer) serve(cat, sig []byte) {
	c.mu.Lock()
	c.cat, c.sig = cat, sig
	c.mu.Unlock()
}

func newCatalogServer(t *testing.T) *catalogServer {
	c := &catalogServer{}
	c.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		defer c.mu.Unlock()
		switch {
		case r.URL.Path == "/catalog.toml" && c.cat != nil:
			w.Write(c.cat)
		case r.URL.Path == "/catalog.toml.minisig" && c.sig != nil:
			w.Write(c.sig)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(c.srv.Close)
	return c
}

// dnsLoad queries the filter over one UDP socket, sequentially, until
// stopped: names alternate. It counts queries, answers and losses
// (timeouts, errors, SERVFAIL).
type dnsLoad struct {
	sent, answered, lost atomic.Int64
	rcodes               sync.Map // name -> last rcode
	stop                 chan struct{}
	done                 chan struct{}
}

func startDNSLoad(t *testing.T, addr string, names ...string) *dnsLoad {
	t.Helper()
	l := &dnsLoad{stop: make(chan struct{}), done: make(chan struct{})}
	c := &dns.Client{Net: "udp", Timeout: 2 * time.Second}
	conn, err := c.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(l.done)
		defer conn.Close()
		for i := 0; ; i++ {
			select {
			case <-l.stop:
				return
			default:
			}
			name := names[i%len(names)]
			m := new(dns.Msg)
			m.SetQuestion(dns.Fqdn(name), dns.TypeA)
			l.sent.Add(1)
			r, _, err := c.ExchangeWithConn(m, conn)
			if err != nil || r.Rcode == dns.RcodeServerFailure || r.Id != m.Id {
				l.lost.Add(1)
				continue
			}
			l.answered.Add(1)
			l.rcodes.Store(name, r.Rcode)
		}
	}()
	return l
}

func (l *dnsLoad) halt() {
	close(l.stop)
	<-l.done
}

func (l *dnsLoad) rcode(name string) int {
	v, _ := l.rcodes.Load(name)
	rc, _ := v.(int)
	return rc
}

// TestCatalogUpdateEndToEnd serves signed catalog updates over HTTPS to a
// running Balise under DNS load: unsigned, wrongly signed, tampered and
// older catalogs are refused (the current one stays, the log and
// /metrics say why), a good one is swapped in without losing a query, and
// a restart uses the last good one from disk.
func TestCatalogUpdateEndToEnd(t *testing.T) {
	pub, priv, err := minisign.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, other, err := minisign.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	up := newDNSUpstream(t)
	cs := newCatalogServer(t)
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cs.srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	const newName = "maj-essai.example"
	v1 := catalogUpdate(2099010101, newName)
	v0 := catalogUpdate(2099010100, newName)
	tampered := []byte(strings.Replace(string(v1), "facebook.com", "facebook.org", 1))
	cfg := fmt.Sprintf(`timezone = "UTC"
default_action = "block"

[catalog]
update_url = %q
update_key = %q

[metrics]
listen = "127.0.0.1:0"

[proxy]
listen = []

[dns]
listen = "127.0.0.1:0"
upstreams = [%q]
rate_limit = 0
`, cs.srv.URL+"/catalog.toml", pub.String(), up.addr)

	// At start the publisher serves an unsigned catalog.
	cs.serve(v1, nil)
	in := startBaliseWith(t, startOptions{Dir: dir, Env: []string{"SSL_CERT_FILE=" + ca}, Config: cfg})
	refused := func(from int, reason string) {
		t.Helper()
		l := in.WaitLog(from, 15*time.Second, func(l logLine) bool {
			return strings.HasPrefix(l.Msg(), "catalog update refused") || l.Msg() == "catalog update applied"
		})
		if l.Msg() == "catalog update applied" || l.Str("reason") != reason {
			t.Fatalf("update outcome: %s reason=%q error=%q, want refused with reason %q", l.Msg(), l.Str("reason"), l.Str("error"), reason)
		}
		if v, ok := in.MetricValue("balise_catalog_updates_total", "result="+reason); !ok || v < 1 {
			t.Errorf("balise_catalog_updates_total{result=%q} = %v, %v", reason, v, ok)
		}
		if _, ok := in.MetricValue("balise_catalog_info", "origin=embedded", "version="+config.Catalog().Version); !ok {
			t.Errorf("balise_catalog_info does not show the embedded catalog after a refusal:\n%s", grepLines(in.Metrics(), "balise_catalog"))
		}
	}
	refused(0, config.UpdateUnsigned)

	load := startDNSLoad(t, in.Addr("dns-udp"), "www.facebook.com", newName)
	time.Sleep(300 * time.Millisecond)
	if rc := load.rcode(newName); rc != dns.RcodeSuccess {
		t.Fatalf("%s before the update: rcode %s, want NOERROR (unlisted)", newName, dns.RcodeToString[rc])
	}

	// A reload restarts the updater, which checks at once.
	for _, step := range []struct {
		cat, sig []byte
		reason   string
	}{
		{v1, minisign.Sign(other, v1), config.UpdateKey},
		{tampered, minisign.Sign(priv, v1), config.UpdateSignature},
	} {
		cs.serve(step.cat, step.sig)
		from := len(in.Lines())
		in.Reload()
		refused(from, step.reason)
	}

	// The good one, under load.
	sentBefore := load.sent.Load()
	cs.serve(v1, minisign.Sign(priv, v1))
	from := len(in.Lines())
	in.Reload()
	swapped := in.WaitLog(from, 15*time.Second, func(l logLine) bool { return l.Msg() == "catalog swapped" })
	in.WaitLog(from, 15*time.Second, func(l logLine) bool { return l.Msg() == "catalog update applied" })
	time.Sleep(500 * time.Millisecond)
	if rc := load.rcode(newName); rc != dns.RcodeNameError {
		t.Errorf("%s after the update: rcode %s, want NXDOMAIN (listed by the update)", newName, dns.RcodeToString[rc])
	}
	if _, ok := in.MetricValue("balise_catalog_info", "origin=update", "version=2026-12-04.1"); !ok {
		t.Errorf("balise_catalog_info after the update:\n%s", grepLines(in.Metrics(), "balise_catalog"))
	}
	if v, ok := in.MetricValue("balise_catalog_serial"); !ok || v != 2099010101 {
		t.Errorf("balise_catalog_serial = %v, %v, want 2099010101", v, ok)
	}
	t.Logf("catalog swapped in %v ms; %d queries during the update round", swapped["swap_ms"], load.sent.Load()-sentBefore)

	// Rollback refused; the update stays.
	cs.serve(v0, minisign.Sign(priv, v0))
	from = len(in.Lines())
	in.Reload()
	l := in.WaitLog(from, 15*time.Second, func(l logLine) bool { return strings.HasPrefix(l.Msg(), "catalog update refused") })
	if l.Str("reason") != config.UpdateOlder {
		t.Errorf("older catalog: reason %q (%s), want %q", l.Str("reason"), l.Str("error"), config.UpdateOlder)
	}
	time.Sleep(200 * time.Millisecond)
	if _, ok := in.MetricValue("balise_catalog_info", "origin=update", "version=2026-12-04.1"); !ok {
		t.Errorf("the update did not stay after a rollback attempt:\n%s", grepLines(in.Metrics(), "balise_catalog"))
	}

	load.halt()
	sent, answered, lost := load.sent.Load(), load.answered.Load(), load.lost.Load()
	t.Logf("DNS load: %d queries, %d answered, %d lost", sent, answered, lost)
	if lost != 0 || sent < 20 {
		t.Errorf("DNS load: %d queries, %d lost; want 0 lost", sent, lost)
	}
	if code := in.Stop(); code != 0 {
		t.Errorf("stop: exit %d", code)
	}

	// Restart with the publisher unreachable: the last good one from disk.
	cs.serve(nil, nil)
	in2 := startBaliseWith(t, startOptions{Dir: dir, Env: []string{"SSL_CERT_FILE=" + ca}, Config: cfg})
	in2.WaitLog(0, 5*time.Second, func(l logLine) bool { return l.Msg() == "using the saved catalog update" })
	if _, ok := in2.MetricValue("balise_catalog_info", "origin=update", "version=2026-12-04.1"); !ok {
		t.Errorf("after a restart:\n%s", grepLines(in2.Metrics(), "balise_catalog"))
	}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(newName), dns.TypeA)
	r, err := dns.Exchange(m, in2.Addr("dns-udp"))
	if err != nil || r.Rcode != dns.RcodeNameError {
		t.Errorf("%s after a restart: %v %v, want NXDOMAIN", newName, r, err)
	}
	out, stderr, code := runBalise(t, "check", "--config", in2.ConfigPath)
	if code != 0 || !strings.Contains(out, "catalog    2026-12-04.1, serial 2099010101, mise à jour signée / signed update") {
		t.Errorf("check = %d:\n%s%s", code, out, stderr)
	}
}

// grepLines returns the lines of text that contain s.
func grepLines(text, s string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
