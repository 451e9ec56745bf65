package policy

import (
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
)

func TestNormalizeHost(t *testing.T) {
	long63 := strings.Repeat("a", 63)
	name253 := strings.Repeat(long63+".", 3) + strings.Repeat("b", 61) // 253
	good := []struct{ in, want string }{
		{"WWW.FaceBook.COM.", "www.facebook.com"},
		{"facebook.com", "facebook.com"},
		{"_dns.resolver.arpa", "_dns.resolver.arpa"},
		{"_msdcs.corp.example", "_msdcs.corp.example"},
		{"a-b.c-d.example", "a-b.c-d.example"},
		{"localhost", "localhost"},
		{"xn--bcher-kva.example", "xn--bcher-kva.example"},
		{"bücher.example", "xn--bcher-kva.example"},
		{"BÜCHER.Example.", "xn--bcher-kva.example"},
		{"bücher。example", "xn--bcher-kva.example"},
		{"ＦＡＣＥＢＯＯＫ.com", "facebook.com"},
		{"québec.ca", "xn--qubec-csa.ca"},
		{"straße.de", "xn--strae-oqa.de"},
		{"10.0.0.1", "10.0.0.1"},
		{"2001:DB8::1", "2001:db8::1"},
		{"[2001:db8::1]", "2001:db8::1"},
		{"[::ffff:10.0.0.1]", "::ffff:10.0.0.1"},
		{"fe80::1%eth0", "fe80::1%eth0"},
		{"1.2.3.example", "1.2.3.example"},
		{long63 + ".com", long63 + ".com"},
		{name253, name253},
		{name253 + ".", name253},
	}
	for _, tc := range good {
		got, err := NormalizeHost(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("NormalizeHost(%q) = %q, %v, want %q", tc.in, got, err, tc.want)
		}
	}
	bad := []string{
		"", ".", "..", "a..b", ".a.b", "a.b..", "a b.com", "a/b.com", "a*.com", "*.facebook.com",
		"a@b.com", "face\x00book.com", long63 + "a.com", name253 + "b", "1.2.3.999", "1.2.3.4.5",
		"01.2.3.4", "[10.0.0.1]", "[2001:db8::1", "2001:db8::1]", "[]", "[x]", "http://x.com",
		"x.com:443", "1.2.3.4.", "fe80::1%", "10.0.0.1%eth0", "bü cher.example", "ab\u200d.example",
		"\xff.example", "١٢٣.٤",
	}
	for _, in := range bad {
		if got, err := NormalizeHost(in); err == nil {
			t.Errorf("NormalizeHost(%q) = %q, want an error", in, got)
		}
	}
}

func TestDecideNoAllocs(t *testing.T) {
	p := mustNew(t, testSpec(t))
	p = p.WithGrants([]Grant{{ID: "g", Subject: pfx("10.1.0.0/16"), Services: []string{"*"}, NotAfter: at(t, "2030-01-01 00:00:00")}})
	now := at(t, "2026-11-17 12:30:00")
	for _, q := range []Query{
		{Host: "WWW.FaceBook.COM.", Client: staff, Time: now},
		{Host: "www.facebook.com", Client: night, Time: at(t, "2026-11-17 23:00:00"), User: "bob", Groups: []string{"a", "b"}},
		{Host: "x.com", Client: netip.MustParseAddr("10.1.9.9"), Time: now},
		{Host: "example.org", Client: staff, Time: now},
		{Host: "a.very.long.unlisted.name.with.many.labels.example.org", Client: staff, Time: now},
		{Host: "platform.linkedin.com", Client: staff, Time: now},
		{Host: "use-application-dns.net", Client: staff, Time: now},
		{Host: "10.0.0.1", Client: staff, Time: now},
		{Host: "[2001:db8::1]", Client: staff, Time: now},
		{Host: "fe80::1%eth0", Client: staff, Time: now},
		{Host: "bad..name", Client: staff, Time: now},
	} {
		var d Decision
		if n := testing.AllocsPerRun(100, func() { d = p.Decide(q) }); n != 0 {
			t.Errorf("Decide(%+v) = %v: %v allocations, want 0", q, d, n)
		}
	}
}

func TestDecideConcurrent(t *testing.T) {
	p := mustNew(t, testSpec(t))
	now := at(t, "2026-11-17 12:30:00")
	want := p.Decide(Query{Host: "www.facebook.com", Client: staff, Time: now})
	done := make(chan bool)
	for i := 0; i < 4; i++ {
		go func() {
			ok := true
			for j := 0; j < 2000; j++ {
				if d := p.Decide(Query{Host: "www.facebook.com", Client: staff, Time: now}); !same(d, want) {
					ok = false
				}
				p.Decide(Query{Host: "bücher.example", Client: night, Time: now})
			}
			done <- ok
		}()
	}
	for i := 0; i < 4; i++ {
		if !<-done {
			t.Errorf("concurrent Decide gave a different answer than %v", want)
		}
	}
}

func FuzzNormalizeHost(f *testing.F) {
	for _, s := range []string{
		"WWW.FaceBook.COM.", "bücher.example", "[2001:db8::1]", "10.0.0.1", "_dns.resolver.arpa",
		"a..b", "xn--bcher-kva.example", "ＦＡＣＥＢＯＯＫ.com", "fe80::1%eth0", "1.2.3.999", "",
		"mask-h2.icloud.com", "québec.ca.",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		got, err := NormalizeHost(in)
		if err != nil {
			return
		}
		if a, perr := netip.ParseAddr(got); perr == nil {
			if a.String() != got {
				t.Fatalf("NormalizeHost(%q) = %q, not canonical IP text %q", in, got, a.String())
			}
			return
		}
		again, err := NormalizeHost(got)
		if err != nil || again != got {
			t.Fatalf("NormalizeHost(%q) = %q, %v, want %q (not idempotent, input %q)", got, again, err, got, in)
		}
		if got == "" || len(got) > maxNameLen || strings.HasSuffix(got, ".") || strings.ToLower(got) != got {
			t.Fatalf("NormalizeHost(%q) = %q: empty, too long, trailing dot or upper case", in, got)
		}
		for i := 0; i < len(got); i++ {
			if got[i] >= 0x80 {
				t.Fatalf("NormalizeHost(%q) = %q: not ASCII", in, got)
			}
		}
		up, err := NormalizeHost(strings.ToUpper(got) + ".")
		if err != nil || up != got {
			t.Fatalf("NormalizeHost(%q) = %q, %v, want %q (round trip)", strings.ToUpper(got)+".", up, err, got)
		}
		// Decide agrees with NormalizeHost on what is valid.
		var p Policy
		p.c = &compiled{}
		p.g = &grantIndex{}
		if d := p.Decide(Query{Host: in}); d.Invalid || d.IP {
			t.Fatalf("Decide(%q) = %v, but NormalizeHost accepted it as %q", in, d, got)
		}
	})
}

// refNormalizeASCII states normalizeASCII's contract the slow way.
func refNormalizeASCII(host string) (string, hostKind) {
	anyHigh := func(s string) bool {
		for i := 0; i < len(s); i++ {
			if s[i] >= 0x80 {
				return true
			}
		}
		return false
	}
	allowed := func(c byte) bool {
		return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.'
	}
	if host == "" {
		return "", hostInvalid
	}
	if host[0] == '[' {
		if anyHigh(host) {
			return "", hostNonASCII
		}
		if a, ok := parseIPLiteral(strings.TrimSuffix(host[1:], "]")); ok && a.Is6() && strings.HasSuffix(host, "]") && len(host) >= 2 {
			return "", hostIP
		}
		return "", hostInvalid
	}
	name := strings.TrimSuffix(host, ".")
	if len(name) > maxNameLen {
		if anyHigh(host) {
			return "", hostNonASCII
		}
		return "", hostInvalid
	}
	if name == "" {
		return "", hostInvalid
	}
	for i := 0; i < len(name); i++ {
		if !allowed(name[i]) {
			if _, ok := parseIPLiteral(host); ok {
				return "", hostIP
			}
			for j := 0; j < len(host); j++ {
				if host[j] >= 0x80 {
					return "", hostNonASCII
				}
				if !allowed(host[j]) {
					return "", hostInvalid
				}
			}
			return "", hostInvalid
		}
	}
	labels := strings.Split(name, ".")
	for _, l := range labels {
		if l == "" || len(l) > maxLabelLen {
			return "", hostInvalid
		}
	}
	last := labels[len(labels)-1]
	if strings.Trim(last, "0123456789") == "" {
		if a, ok := parseIPLiteral(host); ok && a.Is4() {
			return "", hostIP
		}
		return "", hostInvalid
	}
	return strings.ToLower(name), hostName
}

func TestNormalizeASCIIAgainstReference(t *testing.T) {
	// Letters, digits and the bytes next to each allowed range.
	const alphabet = "aAzZmM09-_.......:%[]\xc3\xbc \x00@`{/,^\x7f~"
	r := rand.New(rand.NewPCG(11, 12))
	inputs := []string{strings.Repeat("a.", 126) + "b", strings.Repeat("a", 64) + ".b", "[::1]", "1.2.3.4", "1.2.3.4.", "::1", "[1.2.3.4]"}
	for i := 0; i < 100000; i++ {
		n := r.IntN(20)
		if i%50 == 0 {
			n = 240 + r.IntN(30)
		}
		b := make([]byte, n)
		for j := range b {
			b[j] = alphabet[r.IntN(len(alphabet))]
			if n > 200 && b[j] == '.' && r.IntN(8) != 0 {
				b[j] = 'x'
			}
		}
		inputs = append(inputs, string(b))
	}
	for _, in := range inputs {
		var h hostBuf
		n, kind, _ := normalizeASCII(&h, in)
		want, wantKind := refNormalizeASCII(in)
		got := ""
		if kind == hostName {
			got = string(h.b[:n])
		}
		if kind != wantKind || got != want {
			t.Fatalf("normalizeASCII(%q) = %q, %v, want %q, %v", in, got, kind, want, wantKind)
		}
	}
}
