package main

import (
	"crypto/rand"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"aead.dev/minisign"

	"github.com/balise-net/balise/config"
	"github.com/balise-net/balise/internal/policy"
)

// TestServeCatalogUpdateInProcess drives server.run: a signed update is
// swapped in while goroutines decide all along, and a reload keeps it.
func TestServeCatalogUpdateInProcess(t *testing.T) {
	pub, priv, err := minisign.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	text := string(config.EmbeddedCatalogText())
	i := strings.Index(text, "\nversion = ")
	j := strings.Index(text[i+1:], "\n")
	text = text[:i] + "\nversion = \"2026-12-04.1\"\nserial = 2099010101" + text[i+1+j:] +
		"\n[[service]]\nid = \"maj-essai\"\nname = \"Essai\"\ncategory = \"networking\"\ndomains = [\"maj-essai.example\"]\n"
	cat := []byte(text)
	var mu sync.Mutex
	sig := []byte(nil)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case r.URL.Path == "/c.toml":
			w.Write(cat)
		case r.URL.Path == "/c.toml.minisig" && sig != nil:
			w.Write(sig)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()

	path := writeConfig(t, testPolicy+serveListeners+fmt.Sprintf("\n[catalog]\nupdate_url = %q\nupdate_key = %q\n", srv.URL+"/c.toml", pub.String()))
	buf := &syncBuffer{}
	s := &server{path: path, log: slog.New(slog.NewJSONHandler(buf, nil)), getenv: func(string) string { return "" }, updateClient: srv.Client()}
	sigs := make(chan os.Signal, 1)
	result := make(chan int, 1)
	go func() { result <- s.run(t.Context(), sigs) }()
	waitFor(t, buf, "started", 0)
	l := waitFor(t, buf, "catalog update refused; keeping the catalog in use", 0)
	if l["reason"] != config.UpdateUnsigned {
		t.Errorf("unsigned update: reason %v", l["reason"])
	}

	// Decide all along the swap.
	var stop atomic.Bool
	var decided atomic.Int64
	var wg sync.WaitGroup
	at := mustTime(t, "2026-05-12T14:00:00-04:00")
	for range 2 {
		wg.Go(func() {
			for !stop.Load() {
				d := s.rt.policy.Load().Decide(policy.Query{Host: "www.facebook.com", Client: netip.MustParseAddr("10.20.1.5"), Time: at})
				if d.Verdict != policy.Block {
					t.Errorf("during the swap: %v, want block", d)
					return
				}
				decided.Add(1)
			}
		})
	}
	mu.Lock()
	sig = minisign.Sign(priv, cat)
	mu.Unlock()
	n := lineCount(buf)
	sigs <- syscall.SIGHUP
	waitFor(t, buf, "catalog swapped", n)
	time.Sleep(50 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	if decided.Load() == 0 {
		t.Error("no decision during the swap")
	}
	if d := s.rt.policy.Load().Decide(policy.Query{Host: "maj-essai.example", Client: netip.MustParseAddr("10.20.1.5"), Time: at}); d.Service != "maj-essai" {
		t.Errorf("after the update: %v, want service maj-essai", d)
	}
	if v := s.rt.config().CatalogInUse(); v.Source() != config.CatalogUpdate || v.Serial() != 2099010101 {
		t.Errorf("catalog in use %s %d", v.Source(), v.Serial())
	}

	// A reload keeps the update (the publisher now serves nothing).
	mu.Lock()
	cat, sig = nil, nil
	mu.Unlock()
	n = lineCount(buf)
	sigs <- syscall.SIGHUP
	waitFor(t, buf, "configuration reloaded", n)
	if d := s.rt.policy.Load().Decide(policy.Query{Host: "maj-essai.example", Client: netip.MustParseAddr("10.20.1.5"), Time: at}); d.Service != "maj-essai" {
		t.Errorf("after a reload: %v, want service maj-essai", d)
	}
	sigs <- syscall.SIGTERM
	select {
	case <-result:
	case <-time.After(15 * time.Second):
		t.Fatal("run did not return after SIGTERM")
	}
}
