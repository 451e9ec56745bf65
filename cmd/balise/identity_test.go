package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/balise-net/balise/config"
)

// The key serve creates is the one reveal reads: a pseudonym made by
// loadPseudonyms is revealed by `balise identity reveal`.
func TestLoadPseudonymsAndReveal(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "balise.toml")
	src := "[exceptions]\nstate_dir = \"data\"\nstore = \"data/balise.db\"\naudit_log = \"data/exceptions.jsonl\"\n[identity]\nlog = \"name\"\n"
	os.WriteFile(path, []byte(src), 0o600)
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	ps, err := loadPseudonyms(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if ps.Name("Zoé") != "Zoé" {
		t.Errorf(`Name under log = "name" = %q`, ps.Name("Zoé"))
	}
	fi, err := os.Stat(filepath.Join(dir, "data", "identity.key"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("identity.key: %v, %v", fi, err)
	}
	var out, errb bytes.Buffer
	code := run([]string{"identity", "reveal", "--config", path, "--by", "RSI", "--reason", "test", "--candidate", "zoé", ps.Pseudonym("Zoé")}, &out, &errb)
	if code != 0 || !strings.HasSuffix(out.String(), "\tzoé\n") {
		t.Errorf("reveal = %d, %q\n%s", code, out.String(), errb.String())
	}
	for _, args := range [][]string{{"identity"}, {"identity", "frob"}, {"identity", "reveal", "--by", "x", "--reason", "y", "u-aaaaaaaaaaaaaaaa"}} {
		if code := run(args, &out, &errb); code != exitUsage {
			t.Errorf("%q = %d, want %d", args, code, exitUsage)
		}
	}
}
