package config

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/balise-net/balise/internal/policy"
)

func TestParseListLine(t *testing.T) {
	tests := []struct {
		line    string
		want    []string
		wantErr string // substring; "" = no error
	}{
		{"", nil, ""},
		{"   ", nil, ""},
		{"# comment", nil, ""},
		{"! adblock comment", nil, ""},
		{"[Adblock Plus 2.0]", nil, ""},
		{"Example.COM.", []string{"example.com"}, ""},
		{"example.com # trailing comment", []string{"example.com"}, ""},
		{"*.example.com", []string{"example.com"}, ""},
		{".example.com", []string{"example.com"}, ""},
		{"bücher.example", []string{"xn--bcher-kva.example"}, ""},
		{"0.0.0.0 a.example b.example", []string{"a.example", "b.example"}, ""},
		{"127.0.0.1\tlocalhost", nil, ""},
		{"::1 localhost ip6-localhost ip6-loopback", nil, ""},
		{"0.0.0.0 0.0.0.0", nil, ""},
		{"0.0.0.0 a.example # comment", []string{"a.example"}, ""},
		{"\ufeff||a.example^", nil, "invalid domain"},
		{"||a.example^", []string{"a.example"}, ""},
		{"||A.Example^|", []string{"a.example"}, ""},
		{"||a.example", []string{"a.example"}, ""},
		{"  ||a.example^  ", []string{"a.example"}, ""},
		{"||a.example^$important", nil, "options"},
		{"@@||a.example^", nil, "exception"},
		{"example.com##.ad", nil, "element hiding"},
		{"||a.example/path^", nil, "only ||domain^"},
		{"||*.example^", nil, "only ||domain^"},
		{"|https://a.example|", nil, "unsupported adblock"},
		{"/ads[0-9]+/", nil, "unsupported adblock"},
		{"10.0.0.1", nil, "IP address"},
		{"0.0.0.0 10.0.0.1", nil, "IP address"},
		{"two words", nil, "unrecognised"},
		{"bad..name", nil, "invalid domain"},
		{"0.0.0.0", nil, "IP address"},
	}
	for _, tt := range tests {
		got, err := parseListLine(tt.line)
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("parseListLine(%q) error %v, want %q", tt.line, err, tt.want)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("parseListLine(%q) = %q, %v; want an error containing %q", tt.line, got, err, tt.wantErr)
		case tt.wantErr == "" && !slices.Equal(got, tt.want):
			t.Errorf("parseListLine(%q) = %q, want %q", tt.line, got, tt.want)
		}
	}
}

func TestParseList(t *testing.T) {
	data := "\ufeffa.example\r\n# c\n0.0.0.0 b.example\n||c.example^\nnot valid line\n10.0.0.1\nd.example"
	doms, probs, bad, err := parseList(strings.NewReader(data), 1)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"a.example", "b.example", "c.example", "d.example"}; !slices.Equal(doms, want) {
		t.Errorf("domains = %q, want %q", doms, want)
	}
	if bad != 2 || len(probs) != 1 || probs[0].Line != 5 {
		t.Errorf("bad = %d, problems = %+v; want 2 bad, first at line 5, one kept", bad, probs)
	}
}

func TestReadListFileLimitsProblems(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "l.txt")
	var b strings.Builder
	for range 50 {
		b.WriteString("not a domain\n")
	}
	os.WriteFile(path, []byte(b.String()), 0o644)
	_, probs, err := readListFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(probs) != maxLineProblems+1 || probs[maxLineProblems].Msg != "30 more malformed lines" {
		t.Errorf("problems = %d, last %+v; want %d and a summary", len(probs), probs[len(probs)-1], maxLineProblems+1)
	}
	os.WriteFile(path, []byte("a\x00b"), 0o644)
	if _, _, err := readListFile(path); err == nil {
		t.Errorf("readListFile(binary) = nil error, want one")
	}
}

// checkDomains is the fuzz oracle: every domain a parser returns is in
// canonical form.
func checkDomains(t *testing.T, in string, doms []string) {
	t.Helper()
	for _, d := range doms {
		n, err := policy.NormalizeHost(d)
		if err != nil || n != d {
			t.Fatalf("parse(%q) returned %q, which normalizes to %q, %v", in, d, n, err)
		}
	}
}

func FuzzHostsLine(f *testing.F) {
	f.Fuzz(func(t *testing.T, line string) {
		doms, err := parseHostsLine(line)
		if err == nil {
			checkDomains(t, line, doms)
		}
	})
}

func FuzzPlainLine(f *testing.F) {
	f.Fuzz(func(t *testing.T, line string) {
		doms, err := parsePlainLine(line)
		if err == nil {
			checkDomains(t, line, doms)
		}
	})
}

func FuzzAdblockLine(f *testing.F) {
	f.Fuzz(func(t *testing.T, line string) {
		doms, err := parseAdblockLine(line)
		if err == nil {
			checkDomains(t, line, doms)
		}
	})
}

func FuzzParseList(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		doms, probs, bad, err := parseList(strings.NewReader(string(data)), 5)
		if err != nil {
			t.Fatalf("parseList error %v (readers of memory never fail)", err)
		}
		checkDomains(t, string(data), doms)
		lines := strings.Count(string(data), "\n") + 1
		if len(probs) > 5 || bad < len(probs) {
			t.Fatalf("problems %d, bad %d", len(probs), bad)
		}
		for _, p := range probs {
			if p.Line < 1 || p.Line > lines {
				t.Fatalf("problem at line %d of %d", p.Line, lines)
			}
		}
	})
}

// FuzzParse feeds arbitrary documents to the configuration parser: it
// must never panic, and a document it accepts must be accepted again.
func FuzzParse(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz.toml", data)
		if err != nil {
			if _, ok := err.(Problems); !ok {
				t.Fatalf("Parse error %T, want Problems", err)
			}
			for _, p := range err.(Problems) {
				if p.Line < 0 || p.Col < 0 || p.Msg == "" {
					t.Fatalf("bad problem %+v", p)
				}
			}
			return
		}
		if _, err := c.Spec(); err != nil {
			t.Fatalf("Spec of an accepted config: %v", err)
		}
	})
}
