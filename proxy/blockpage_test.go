package proxy

import (
	"crypto/x509"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/balise-net/balise/internal/policy"
)

func TestPreferEnglish(t *testing.T) {
	tests := []struct {
		in   string
		want bool
	}{
		{"", false},
		{"fr-CA", false},
		{"en-CA", true},
		{"en-US,en;q=0.9", true},
		{"fr-CA,fr;q=0.9,en;q=0.8", false},
		{"en;q=0.8,fr;q=0.9", false},
		{"en;q=0.9,fr;q=0.8", true},
		{"de-DE,en;q=0.5", true},
		{"de-DE", false},
		{"en;q=0", false},
		{"en;q=abc, fr", false},
		{"*", false},
	}
	for _, tt := range tests {
		if got := preferEnglish(tt.in); got != tt.want {
			t.Errorf("preferEnglish(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestProxyStatus(t *testing.T) {
	tests := []struct {
		errType, details, want string
	}{
		{"http_request_denied", "", "balise; error=http_request_denied"},
		{"http_request_denied", `blocked by Balise: "X" \ Y`, `balise; error=http_request_denied; details="blocked by Balise: \"X\" \\ Y"`},
		{"http_request_denied", "Réseau\r\nX-Injected: 1", `balise; error=http_request_denied; details="R?seau??X-Injected: 1"`},
	}
	for _, tt := range tests {
		if got := proxyStatus(tt.errType, tt.details); got != tt.want {
			t.Errorf("proxyStatus(%q, %q) = %q, want %q", tt.errType, tt.details, got, tt.want)
		}
	}
}

func TestReopenTextZone(t *testing.T) {
	loc, err := time.LoadLocation("America/Toronto")
	if err != nil {
		t.Skip("no tzdata")
	}
	// 17:00 UTC is 12:00 in Toronto in November.
	at := time.Date(2026, 11, 23, 17, 0, 0, 0, time.UTC)
	now := time.Date(2026, 11, 23, 15, 0, 0, 0, time.UTC)
	fr, en := reopenText(at, now, loc)
	if fr != "Accès possible dès 12 h 00" || en != "Access possible from 12:00" {
		t.Errorf("reopenText = %q, %q, want the Toronto wall clock", fr, en)
	}
}

func TestBlockPageEscapesHost(t *testing.T) {
	var pol atomic.Pointer[policy.Policy]
	p, err := New(Options{Policy: &pol, Institution: "<b>CISSS</b>"})
	if err != nil {
		t.Fatal(err)
	}
	body := string(p.blockPage(nil, netip.Addr{}, `x"><script>alert(1)</script>`, policy.Decision{Verdict: policy.Block, ServiceName: "<i>S</i>"}, time.Now(), ""))
	for _, bad := range []string{"<script>", "<b>", "<i>"} {
		if strings.Contains(body, bad) {
			t.Errorf("block page contains unescaped %q", bad)
		}
	}
}

func TestParseCA(t *testing.T) {
	certPEM, keyPEM, err := NewCA("", 0)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := ParseCA(certPEM, keyPEM)
	if err != nil {
		t.Fatalf("ParseCA(NewCA()) = %v", err)
	}
	if !ca.Certificate().IsCA || ca.Certificate().Subject.CommonName != "Balise pilot CA" {
		t.Errorf("NewCA certificate = %+v", ca.Certificate().Subject)
	}
	_, otherKey, _ := NewCA("other", 0)
	if _, err := ParseCA(certPEM, otherKey); err == nil {
		t.Errorf("ParseCA with a key that does not match = nil error")
	}
	if _, err := ParseCA([]byte("junk"), keyPEM); err == nil {
		t.Errorf("ParseCA(junk) = nil error")
	}
	// A leaf (not a CA) is refused.
	leaf, err := ca.issue("leaf.test", mustKey(t), time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseCA(pemCert(leaf.Certificate[0]), pemKey(t, leaf.PrivateKey)); err == nil {
		t.Errorf("ParseCA(leaf) = nil error, want not a CA")
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Certificate())
	if _, err := leaf.Leaf.Verify(x509.VerifyOptions{DNSName: "leaf.test", Roots: pool}); err != nil {
		t.Errorf("leaf does not verify under its CA: %v", err)
	}
	ipLeaf, err := ca.issue("192.0.2.7", mustKey(t), time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ipLeaf.Leaf.Verify(x509.VerifyOptions{DNSName: "192.0.2.7", Roots: pool}); err != nil {
		t.Errorf("IP leaf does not verify: %v", err)
	}
}

func TestCertCache(t *testing.T) {
	certPEM, keyPEM, _ := NewCA("", 0)
	ca, _ := ParseCA(certPEM, keyPEM)
	var hits, misses atomic.Int32
	c, err := newCertCache(ca, time.Hour, 3, func() { hits.Add(1) }, func() { misses.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	// Single flight: 20 concurrent requests for one host sign once.
	var wg sync.WaitGroup
	certs := make([]any, 20)
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cert, err := c.get("one.test", now)
			if err != nil {
				t.Error(err)
			}
			certs[i] = cert
		}()
	}
	wg.Wait()
	if misses.Load() != 1 || hits.Load() != 19 {
		t.Errorf("concurrent gets: misses %d hits %d, want 1 and 19", misses.Load(), hits.Load())
	}
	for i := range certs {
		if certs[i] != certs[0] {
			t.Fatalf("concurrent gets returned different certificates")
		}
	}
	for _, h := range []string{"a.test", "b.test", "c.test", "d.test"} {
		c.get(h, now)
	}
	if n := c.len(); n != 3 {
		t.Errorf("cache size = %d, want bound 3", n)
	}
	misses.Store(0)
	c.get("d.test", now) // most recent: cached
	c.get("a.test", now) // evicted: issued again
	if misses.Load() != 1 {
		t.Errorf("LRU: misses = %d, want 1", misses.Load())
	}
	// Near expiry a leaf is re-issued.
	c.get("d.test", now.Add(59*time.Minute))
	if misses.Load() != 2 {
		t.Errorf("near expiry: misses = %d, want 2", misses.Load())
	}
}

func FuzzPreferEnglish(f *testing.F) {
	for _, s := range []string{"", "fr-CA", "en-US,en;q=0.9", "fr;q=0.5,en;q=0.6", "en;q=abc", "*;q=1", ";;;,,,", "en;q=1e309"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := preferEnglish(s)
		// English never wins without an English tag.
		if got && !strings.Contains(strings.ToLower(s), "en") {
			t.Fatalf("preferEnglish(%q) = true without any English tag", s)
		}
	})
}
