package tests

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/balise-net/balise/config"
)

// TestReadmeConfigExamples keeps the README true: every TOML example in it
// is a valid configuration (each section is optional, so a snippet of one
// section must pass on its own), and the full example compiles.
func TestReadmeConfigExamples(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := strings.Split(string(b), "```toml\n")[1:]
	if len(blocks) < 4 {
		t.Fatalf("found %d TOML examples in README.md, want at least 4", len(blocks))
	}
	for i, blk := range blocks {
		end := strings.Index(blk, "```")
		if end < 0 {
			t.Fatalf("TOML example %d is not closed", i+1)
		}
		name := fmt.Sprintf("README.md (TOML example %d)", i+1)
		cfg, err := config.Parse(name, []byte(blk[:end]))
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		if _, err := cfg.Compile(); err != nil {
			t.Errorf("%s: compile: %v", name, err)
		}
	}
}
