package config

import (
	"strings"
	"testing"
)

// TestEmbeddedCatalogLints checks that the embedded catalog passes the
// checks every update must pass.
func TestEmbeddedCatalogLints(t *testing.T) {
	c, err := ParseCatalog(catalogTOML, CatalogFile)
	if err != nil {
		t.Fatalf("ParseCatalog(embedded): %v", err)
	}
	if e := EmbeddedCatalog(); c.Serial() != e.Serial() || e.Serial() < 2026000000 || c.Version() != e.Version() {
		t.Errorf("serial %d, embedded %d (version %s)", c.Serial(), e.Serial(), e.Version())
	}
}

// TestCatalogLint checks that bad catalogs are refused with a reason.
func TestCatalogLint(t *testing.T) {
	good := `version = "2026-12-04.3"
serial = 2026120401
categories = ["networking", "doh"]
canaries = ["use-application-dns.net"]

[[service]]
id = "facebook"
name = "Facebook"
category = "networking"
domains = ["facebook.com", "fb.com"]

[[service]]
id = "doh"
name = "DoH"
category = "doh"
domains = ["dns.google"]
`
	if _, err := ParseCatalog([]byte(good), CatalogUpdate); err != nil {
		t.Fatalf("ParseCatalog(good) = %v", err)
	}
	for _, tc := range []struct{ edit, want string }{
		{strings.Replace(good, "serial = 2026120401\n", "", 1), "serial: missing"},
		{strings.Replace(good, `"fb.com"`, `"com"`, 1), `"com" is a top-level domain`},
		{strings.Replace(good, `"fb.com"`, `"qc.ca"`, 1), `"qc.ca" is a public suffix`},
		{strings.Replace(good, `"fb.com"`, `"FB.com"`, 1), `not a canonical host name`},
		{strings.Replace(good, `"fb.com"`, `"facebook.com"`, 1), `"facebook.com" twice`},
		{strings.Replace(good, `category = "networking"`, `category = "jeux"`, 1), `category "jeux" is not one of`},
		{strings.Replace(good, `id = "doh"`, `id = "facebook"`, 1), `already used`},
		{strings.Replace(good, `, "doh"]`, `]`, 1), `"doh" is missing`},
		{"colour = 1\n" + good, "unknown keys colour"},
		{strings.Replace(good, `"fb.com"`, `"facebook"`, 1), ""}, // its brand TLD
		{"version = \n", "catalog: "},
	} {
		_, err := ParseCatalog([]byte(tc.edit), CatalogUpdate)
		if tc.want == "" {
			if err != nil {
				t.Errorf("ParseCatalog(%q) = %v, want no error", tc.edit, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseCatalog(%q...) = %v, want an error containing %q", tc.want, err, tc.want)
		}
	}
}
