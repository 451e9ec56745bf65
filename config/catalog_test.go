package config

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"testing"

	"github.com/balise-net/balise/internal/policy"
)

func TestCatalog(t *testing.T) {
	info := Catalog()
	if !regexp.MustCompile(`^\d{4}-\d{2}-\d{2}\.\d+$`).MatchString(info.Version) {
		t.Errorf("Version = %q, want DATE.COUNT", info.Version)
	}
	want := []string{"networking", "media-sharing", "messaging", "microblogging", "forums", "wikis", "podcasts", "comments", "blogs", "doh"}
	if !slices.Equal(info.Categories, want) {
		t.Errorf("Categories = %v, want %v", info.Categories, want)
	}
	total := 0
	for _, s := range info.Services {
		if !s.Optional {
			total += s.Domains
		}
		if !slices.Contains(info.Categories, s.Category) {
			t.Errorf("service %s has category %q, not a catalog category", s.ID, s.Category)
		}
	}
	if v := fmt.Sprintf(".%d", total); !bytes.HasSuffix([]byte(info.Version), []byte(v)) {
		t.Errorf("Version = %q, want it to end with the default domain count %s", info.Version, v)
	}
	for _, id := range []string{"facebook", "instagram", "twitter", "linkedin", "youtube", "tiktok", "wikipedia", "doh"} {
		if !slices.ContainsFunc(info.Services, func(s CatalogService) bool { return s.ID == id }) {
			t.Errorf("catalog has no %s", id)
		}
	}
}

// TestCatalogData checks every entry of the embedded catalog: canonical
// names, no duplicate within a service, ids and aliases unique.
func TestCatalogData(t *testing.T) {
	cat := embeddedCatalog()
	names := map[string]string{}
	for _, s := range cat.Services {
		for _, n := range append([]string{s.ID}, s.Aliases...) {
			if prev, dup := names[n]; dup {
				t.Errorf("id or alias %q used by %s and %s", n, prev, s.ID)
			}
			names[n] = s.ID
		}
		for field, list := range map[string][]string{
			"domains": s.Domains, "exceptions": s.Exceptions, "cname_targets": s.CNAMETargets,
			"shared": s.Shared, "extra": s.Extra, "copyleft": s.Copyleft,
		} {
			seen := map[string]bool{}
			for _, d := range list {
				n, err := policy.NormalizeHost(d)
				if err != nil || n != d {
					t.Errorf("%s.%s: %q normalizes to %q, %v", s.ID, field, d, n, err)
				}
				if seen[d] {
					t.Errorf("%s.%s: %q twice", s.ID, field, d)
				}
				seen[d] = true
			}
		}
	}
	for _, c := range cat.Canaries {
		if n, err := policy.NormalizeHost(c); err != nil || n != c {
			t.Errorf("canary %q normalizes to %q, %v", c, n, err)
		}
	}
}

// TestCatalogGenerated regenerates the catalog from the reference data
// named by BALISE_CATALOG_SRC and compares it with the embedded file.
func TestCatalogGenerated(t *testing.T) {
	src := os.Getenv("BALISE_CATALOG_SRC")
	if src == "" {
		t.Skip("BALISE_CATALOG_SRC is not set: the reference catalog is not available")
	}
	out := filepath.Join(t.TempDir(), "catalog.toml")
	cmd := exec.Command("go", "run", "./catalog/gen", "-src", src, "-out", out)
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gen: %v\n%s", err, msg)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, catalogTOML) {
		t.Errorf("catalog/catalog.toml is not what gen produces from %s: run go generate ./config", src)
	}
}
