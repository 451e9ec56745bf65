package config

import (
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
)

func TestScanPositions(t *testing.T) {
	doc := `# comment [not.a.table]
title = """
multi [line] = "string"
"""  # after
"quoted.key" = 'lit # not comment'
a.b = 1
t = { a = "é", b = 1 }

[proxy]   # the proxy
listen = ["x",   # one
  "y",
]
tls = { ca_cert = "c", nested = { k = [1, 2] } }

[[rule]]
name = "é-accent"   # é counts as one column
during = ["a"]

[[rule]]
name = "second"

[[rule.sub]]
k = 1

['dns'.forward]
zone = "z"
`
	ps := scanPositions([]byte(doc))
	tests := []struct {
		path      string
		key       bool // position of the key, else of the value
		line, col int
	}{
		{"title", true, 2, 1},
		{"title", false, 2, 9},
		{"quoted.key", true, 5, 1},
		{"quoted.key", false, 5, 16},
		{"a.b", true, 6, 1},
		{"a.b", false, 6, 7},
		{"t.b", true, 7, 16},
		{"proxy", true, 9, 1},
		{"proxy.listen", false, 10, 10},
		{"proxy.listen[0]", false, 10, 11},
		{"proxy.listen[1]", false, 11, 3},
		{"proxy.tls.ca_cert", true, 13, 9},
		{"proxy.tls.nested.k[1]", false, 13, 43},
		{"rule[0]", true, 15, 1},
		{"rule[0].during[0]", false, 17, 11},
		{"rule[1].name", false, 20, 8},
		{"rule[1].sub[0].k", true, 23, 1},
		{"dns.forward.zone", false, 26, 8},
	}
	for _, tt := range tests {
		m := ps.val
		if tt.key {
			m = ps.key
		}
		got, ok := m[tt.path]
		if !ok || got.line != tt.line || got.col != tt.col {
			t.Errorf("position of %s (key %v) = %v %v, want %d:%d", tt.path, tt.key, got, ok, tt.line, tt.col)
		}
	}
	// Column counting is in characters.
	if got := ps.at(len("# comment")); got != (position{1, 10}) {
		t.Errorf("at(9) = %v, want 1:10", got)
	}
}

// FuzzScanPositions checks the scanner against the TOML library: for a
// document the library accepts, every key it reports has a position.
func FuzzScanPositions(f *testing.F) {
	f.Add([]byte("a = 1\n[t]\nb = [1, {c = 2}]\n[[r]]\nd = 'x'\n[[r]]\n[r.s]\ne = \"\"\"\n]\n\"\"\"\n"))
	f.Add([]byte("\"q\" . 'r' = 1\n[ x . y ]\nz = { w = [ [1], [2] ] }\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var doc map[string]any
		md, err := toml.Decode(string(data), &doc)
		ps := scanPositions(data) // never panics, even on invalid input
		if err != nil {
			return
		}
		have := map[string]bool{}
		for k := range ps.key {
			have[unindexed(k)] = true
		}
		for _, k := range md.Keys() {
			plain := true
			for _, part := range k {
				if part == "" || strings.ContainsAny(part, ".[]\\\"'") {
					plain = false
				}
			}
			if plain && !have[strings.Join(k, ".")] {
				t.Fatalf("key %q has no position in %q", k, data)
			}
		}
	})
}

// unindexed removes the array indexes of a key path.
func unindexed(path string) string {
	var b strings.Builder
	depth := 0
	for _, r := range path {
		switch {
		case r == '[':
			depth++
		case r == ']':
			depth--
		case depth == 0:
			b.WriteRune(r)
		}
	}
	return b.String()
}
