package policy

import (
	"fmt"
	"strings"
	"testing"
)

func TestMatcherManyNames(t *testing.T) {
	const n = 30000
	spec := Spec{}
	for s := 0; s < 3; s++ {
		svc := Service{ID: fmt.Sprintf("s%d", s), Category: "networking"}
		for i := s; i < n; i += 3 {
			name := fmt.Sprintf("w%x-%d.example%d.com", i*7919, i, i%5)
			if i%10 == 0 {
				name = "cdn." + name
			}
			svc.Domains = append(svc.Domains, name)
		}
		spec.Services = append(spec.Services, svc)
	}
	p := mustNew(t, spec)
	if got := p.DomainCount(); got != n {
		t.Fatalf("DomainCount() = %d, want %d", got, n)
	}
	for s, svc := range spec.Services {
		for i, name := range svc.Domains {
			want := fmt.Sprintf("s%d", s)
			for _, host := range []string{name, "a.b." + name} {
				if d := p.Decide(Query{Host: host}); d.Service != want || d.Reason != ReasonDefault {
					t.Fatalf("Decide(%q) = %v, want service %s", host, d, want)
				}
			}
			if i%20 == 0 {
				for _, host := range []string{"x" + name, name + ".org", strings.Replace(name, "-", "--", 1)} {
					if d := p.Decide(Query{Host: host}); d.Listed() {
						t.Fatalf("Decide(%q) = %v, want unlisted", host, d)
					}
				}
				if strings.HasPrefix(name, "cdn.") {
					if d := p.Decide(Query{Host: name[4:]}); d.Listed() {
						t.Fatalf("Decide(%q) = %v: the parent of a listed name is not listed", name[4:], d)
					}
				}
			}
		}
	}
}

func TestMatcherLongNames(t *testing.T) {
	l60 := strings.Repeat("abcdefghij", 6)
	long := l60 + "1." + l60 + "2." + l60 + "3.example" // labels crossing 64-bit words
	p := mustNew(t, Spec{Services: []Service{
		{ID: "long", Category: "c", Domains: []string{long}},
		{ID: "short", Category: "c", Domains: []string{"a.b.c.d.e.f.g.h.example"}},
	}})
	cases := []struct{ host, want string }{
		{long, "long"},
		{"x." + long, "long"},
		{strings.ToUpper(long) + ".", "long"},
		{l60 + "2." + l60 + "3.example", ""},
		{l60 + "0." + l60 + "2." + l60 + "3.example", ""},
		{"a.b.c.d.e.f.g.h.example", "short"},
		{"z.a.b.c.d.e.f.g.h.example", "short"},
		{"b.c.d.e.f.g.h.example", ""},
	}
	for _, tc := range cases {
		if d := p.Decide(Query{Host: tc.host}); d.Service != tc.want {
			t.Errorf("Decide(%q) = %v, want service %q", tc.host, d, tc.want)
		}
	}
}

func TestPrevDot(t *testing.T) {
	for _, name := range []string{"a", "a.b", strings.Repeat("ab.", 80) + "c", strings.Repeat("x", 63) + "." + strings.Repeat("y", 63) + ".z"} {
		var h hostBuf
		n, kind, err := normalizeASCII(&h, name)
		if kind != hostName || err != nil {
			t.Fatalf("normalizeASCII(%q) = %v, %v", name, kind, err)
		}
		for e := 0; e <= n; e++ {
			want := strings.LastIndexByte(name[:e], '.')
			if got := h.prevDot(e); got != want {
				t.Fatalf("prevDot(%q, %d) = %d, want %d", name, e, got, want)
			}
		}
	}
}

func TestPlaceCollisions(t *testing.T) {
	// Two fingerprints with the same home slot and low 40 bits cannot
	// be told apart: they share one entry holding the union.
	fvs := []fpVal{{0x8000000000000001, 1}, {0x8000010000000001, 2}, {0x9000000000000005, 3}}
	var unions [][2]uint16
	m, ok, err := place(fvs, 85, func(a, b uint16) (uint16, error) {
		unions = append(unions, [2]uint16{a, b})
		return 9, nil
	})
	if err != nil || !ok {
		t.Fatalf("place() = %v, %v", ok, err)
	}
	if len(unions) != 1 || unions[0] != [2]uint16{1, 2} {
		t.Fatalf("place() unions = %v, want [[1 2]]", unions)
	}
	for _, tc := range []struct {
		fp   uint64
		want uint16
		ok   bool
	}{{0x8000000000000001, 9, true}, {0x8000010000000001, 9, true}, {0x9000000000000005, 3, true}, {0x9000000000000006, 0, false}, {0x1, 0, false}} {
		if v, ok := m.lookup(tc.fp); v != tc.want || ok != tc.ok {
			t.Errorf("lookup(%#x) = %d, %v, want %d, %v", tc.fp, v, ok, tc.want, tc.ok)
		}
	}
	// A cluster longer than the slot can say fails at that load.
	var big []fpVal
	for i := 0; i < 300; i++ {
		big = append(big, fpVal{0x4000000000000000 + uint64(i), 1})
	}
	if _, ok, err := place(big, 85, nil); ok || err != nil {
		t.Errorf("place(300 names at one home) = %v, %v, want a failure", ok, err)
	}
}
