package config

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"aead.dev/minisign"
)

// testCatalog returns a catalog update with this serial: the embedded
// catalog's data with serial and version replaced and one more service.
func testCatalog(t testing.TB, serial int64) []byte {
	t.Helper()
	text := string(catalogTOML)
	i := strings.Index(text, "\nversion = ")
	j := strings.Index(text[i+1:], "\n")
	head := fmt.Sprintf("\nversion = \"2026-12-04.%d\"\nserial = %d", serial%1000, serial)
	text = text[:i] + head + text[i+1+j:]
	return []byte(text + fmt.Sprintf("\n[[service]]\nid = \"essai-%d\"\nname = \"Essai\"\ncategory = \"forums\"\ndomains = [\"essai-%d.example\"]\n", serial, serial))
}

// updateServer serves a catalog and its signature over HTTPS; the
// handler's content can be replaced.
type updateServer struct {
	mu       sync.Mutex
	cat, sig []byte // nil sig: 404
	srv      *httptest.Server
}

func newUpdateServer(t *testing.T) *updateServer {
	u := &updateServer{}
	u.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		defer u.mu.Unlock()
		switch r.URL.Path {
		case "/catalog.toml":
			w.Write(u.cat)
		case "/catalog.toml.minisig":
			if u.sig == nil {
				http.NotFound(w, r)
				return
			}
			w.Write(u.sig)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *updateServer) serve(cat, sig []byte) {
	u.mu.Lock()
	u.cat, u.sig = cat, sig
	u.mu.Unlock()
}

func TestCatalogUpdates(t *testing.T) {
	pub, priv, err := minisign.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, other, err := minisign.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srv := newUpdateServer(t)
	dir := t.TempDir()
	src := fmt.Sprintf("[catalog]\nupdate_url = %q\nupdate_key = %q\nupdate_interval = \"1m\"\n\n[[rule]]\nname = \"forums\"\ngroups = [\"*\"]\ncategories = [\"forums\"]\naction = \"block\"\n",
		srv.srv.URL+"/catalog.toml", pub.String())
	cfgPath := filepath.Join(dir, "balise.toml")
	if err := os.WriteFile(cfgPath, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Catalog.UpdateDir != filepath.Join(dir, "balise-data", "catalog") || cfg.Catalog.UpdateInterval.Minutes() != 1 {
		t.Fatalf("UpdateDir %q, interval %v", cfg.Catalog.UpdateDir, cfg.Catalog.UpdateInterval)
	}
	m := NewMetrics(nil)
	u := NewCatalogUpdater(cfg, srv.srv.Client(), nil, m)
	cur := EmbeddedCatalog()
	var applied []*ServiceCatalog
	apply := func(c *ServiceCatalog) error {
		// As serve does: the configuration must load with it.
		if _, err := LoadWith(cfgPath, c); err != nil {
			return err
		}
		applied = append(applied, c)
		cur = c
		return nil
	}
	current := func() *ServiceCatalog { return cur }

	v1 := testCatalog(t, 2099010101)
	v2 := testCatalog(t, 2099010102)
	tampered := bytes.Replace(v2, []byte("essai-2099010102.example"), []byte("essai-2099010102.exampla"), 1)
	noForums := bytes.Replace(v1, []byte(`category = "forums"`), []byte(`category = "wikis"`), -1)
	noForums = bytes.Replace(noForums, []byte(`  "forums",`+"\n"), nil, 1)
	noForums = bytes.Replace(noForums, []byte("2099010101"), []byte("2099010109"), -1)
	for _, step := range []struct {
		name     string
		cat, sig []byte
		want     string
	}{
		{"unsigned", v1, nil, UpdateUnsigned},
		{"signed by another key", v1, minisign.Sign(other, v1), UpdateKey},
		{"good", v1, minisign.Sign(priv, v1), UpdateApplied},
		{"same again", v1, minisign.Sign(priv, v1), UpdateCurrent},
		{"tampered", tampered, minisign.Sign(priv, v2), UpdateSignature},
		{"garbage signature", v2, []byte("untrusted comment: x\nnot base64\n"), UpdateSignature},
		{"invalid", []byte("version = \"x\"\nserial = 2099010103\n"), minisign.Sign(priv, []byte("version = \"x\"\nserial = 2099010103\n")), UpdateInvalid},
		{"rejected by the configuration", noForums, minisign.Sign(priv, noForums), UpdateRejected},
		{"newer", v2, minisign.Sign(priv, v2), UpdateApplied},
		{"rollback", v1, minisign.Sign(priv, v1), UpdateOlder},
	} {
		srv.serve(step.cat, step.sig)
		if got := u.Once(context.Background(), current, apply); got != step.want {
			t.Errorf("%s: result %q, want %q", step.name, got, step.want)
		}
	}
	if len(applied) != 2 || applied[1].Serial() != 2099010102 || cur.Source() != CatalogUpdate {
		t.Fatalf("applied %d catalogs, current serial %d", len(applied), cur.Serial())
	}
	// The last good one is on disk and verifies again.
	saved, err := LoadSavedCatalog(cfg)
	if err != nil || saved == nil || saved.Serial() != 2099010102 {
		t.Fatalf("LoadSavedCatalog = %v, %v", saved, err)
	}
	withSaved, err := LoadWith(cfgPath, saved)
	if err != nil {
		t.Fatal(err)
	}
	p, err := withSaved.Compile()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := p.LookupService("essai-2099010102"); !ok {
		t.Errorf("the saved catalog's new service is not listed")
	}
	// A saved copy edited on disk is refused.
	if err := os.WriteFile(filepath.Join(cfg.Catalog.UpdateDir, "catalog.toml"), tampered, 0o600); err != nil {
		t.Fatal(err)
	}
	var ue *UpdateError
	if _, err := LoadSavedCatalog(cfg); !errors.As(err, &ue) || ue.Reason != UpdateSignature {
		t.Errorf("LoadSavedCatalog(edited) = %v, want a signature error", err)
	}
}

func TestCatalogUpdateKeys(t *testing.T) {
	for _, tc := range []struct{ src, want string }{
		{"[catalog]\nupdate_url = \"https://x.example/c.toml\"\n", "needs catalog.update_key"},
		{"[catalog]\nupdate_url = \"http://x.example/c.toml\"\nupdate_key = \"RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3\"\n", "https only"},
		{"[catalog]\nupdate_url = \"https://x.example/c.toml\"\nupdate_key = \"not a key\"\n", "invalid minisign public key"},
		{"[catalog]\nupdate_url = \"https://x.example/c.toml\"\nupdate_key = \"RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3\"\nupdate_interval = \"10s\"\n", "at least 1m"},
	} {
		_, err := Parse("c.toml", []byte(tc.src))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "c.toml:") {
			t.Errorf("Parse(%q) = %v, want %q", tc.src, err, tc.want)
		}
	}
}
