package synth

import (
	"testing"

	"github.com/balise-net/balise/internal/policy"
)

func TestDomains(t *testing.T) {
	d := Domains(20000, 1)
	seen := map[string]bool{}
	total := 0
	for _, name := range d {
		if seen[name] {
			t.Fatalf("Domains: %q twice", name)
		}
		seen[name] = true
		if n, err := policy.NormalizeHost(name); err != nil || n != name {
			t.Fatalf("Domains: %q is not a normalized name (%q, %v)", name, n, err)
		}
		total += len(name)
	}
	if avg := float64(total) / float64(len(d)); avg < 15 || avg > 21 {
		t.Errorf("Domains: average length %.1f, want about 18", avg)
	}
	again := Domains(20000, 1)
	for i := range d {
		if d[i] != again[i] {
			t.Fatalf("Domains is not deterministic: %q then %q", d[i], again[i])
		}
	}
	if _, err := policy.New(Spec(100, d)); err != nil {
		t.Fatalf("New(Spec): %v", err)
	}
}
