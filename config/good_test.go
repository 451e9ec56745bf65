package config

import (
	"path/filepath"
	"testing"
)

// TestGoodConfigs loads and compiles every testdata/good/*.toml.
func TestGoodConfigs(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "good", "*.toml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no good configs: %v", err)
	}
	for _, file := range files {
		c, err := Load(file)
		if err != nil {
			t.Errorf("Load(%s):\n%v", file, err)
			continue
		}
		if _, err := c.Compile(); err != nil {
			t.Errorf("Compile(%s) = %v", file, err)
		}
	}
}

func TestFullConfigValues(t *testing.T) {
	c, err := Load(filepath.Join("testdata", "good", "full.toml"))
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join("testdata", "good")
	checks := []struct {
		name      string
		got, want any
	}{
		{"Proxy.TLS.CACert", c.Proxy.TLS.CACert, filepath.Join(dir, "ca.pem")},
		{"Proxy.ParentCredentialsFile", c.Proxy.ParentCredentialsFile, filepath.Join(dir, "parent.cred")},
		{"ListCache.CacheDir", c.ListCache.CacheDir, filepath.Join(dir, "state", "lists")},
		{"Exceptions.StateDir", c.Exceptions.StateDir, filepath.Join(dir, "state")},
		{"Proxy.TransparentHTTP", len(c.Proxy.TransparentHTTP), 1},
		{"DNS.Upstreams[1]", c.DNS.Upstreams[1], "tls://9.9.9.9:853#dns.quad9.net"},
		{"DNS.UDPSockets", c.DNS.UDPSockets, 2},
		{"Exceptions.Retention hours", c.Exceptions.Retention.Hours(), 730 * 24.0},
		{"Lists[0].Files", c.Lists[0].Files[0], filepath.Join(dir, "local.txt")},
		{"Lists[0] file domains", len(c.Lists[0].fileDomains), 4},
		{"Catalog.SharedInfrastructure", c.Catalog.SharedInfrastructure[0], "facebook"},
	}
	for _, ck := range checks {
		if ck.got != ck.want {
			t.Errorf("full.toml: %s = %v, want %v", ck.name, ck.got, ck.want)
		}
	}
}
