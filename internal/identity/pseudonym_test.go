package identity

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

func key(b byte) []byte { return bytes.Repeat([]byte{b}, KeySize) }

func mustPseudonyms(t *testing.T, k []byte, mode string) *Pseudonyms {
	t.Helper()
	p, err := NewPseudonyms(k, mode)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPseudonymStableAndKeyed(t *testing.T) {
	p := mustPseudonyms(t, key(1), LogPseudonym)
	a := p.Pseudonym("alice")
	if err := CheckPseudonym(a); err != nil || len(a) != 18 || !strings.HasPrefix(a, "u-") {
		t.Fatalf("Pseudonym(alice) = %q (%v)", a, err)
	}
	for _, same := range []string{"alice", "ALICE", " Alice "} {
		if got := p.Pseudonym(same); got != a {
			t.Errorf("Pseudonym(%q) = %q, want %q", same, got, a)
		}
	}
	if got := mustPseudonyms(t, key(1), LogName).Pseudonym("alice"); got != a {
		t.Errorf("same key, another Pseudonyms: %q, want %q", got, a)
	}
	if p.Pseudonym("bob") == a {
		t.Error("bob and alice have the same pseudonym")
	}
	if other := mustPseudonyms(t, key(2), LogPseudonym).Pseudonym("alice"); other == a {
		t.Error("another key gives the same pseudonym")
	}
	if p.Pseudonym("") != "" || p.Name("") != "" {
		t.Error("no user must give no pseudonym")
	}
	// A fixed vector (HMAC-SHA256 over the domain string and the name,
	// first 10 bytes in lower-case base32): pseudonyms in old logs must
	// stay revealable, so a change of the recipe must be deliberate.
	if a != "u-chujut5qjpzko2ft" {
		t.Errorf("Pseudonym(alice) with key 01…01 = %q, want u-chujut5qjpzko2ft", a)
	}
}

func TestPseudonymName(t *testing.T) {
	for _, tc := range []struct{ mode, want string }{
		{LogNone, ""}, {LogName, "Alice"}, {LogPseudonym, mustPseudonyms(t, key(3), LogNone).Pseudonym("alice")},
	} {
		if got := mustPseudonyms(t, key(3), tc.mode).Name("Alice"); got != tc.want {
			t.Errorf("Name(Alice) under %q = %q, want %q", tc.mode, got, tc.want)
		}
	}
	if _, err := NewPseudonyms(key(3), "full"); err == nil {
		t.Error("unknown mode accepted")
	}
	if _, err := NewPseudonyms(key(3)[:16], LogPseudonym); err == nil {
		t.Error("short key accepted")
	}
}

func TestPseudonymMatch(t *testing.T) {
	p := mustPseudonyms(t, key(4), LogPseudonym)
	target := p.Pseudonym("bob")
	names := []string{"alice", "BOB", "bob", "", "carol"}
	got := p.Match(target, slices.Values(names))
	if !slices.Equal(got, []string{"bob"}) {
		t.Errorf("Match = %v, want [bob]", got)
	}
	if got := p.Match(mustPseudonyms(t, key(5), LogPseudonym).Pseudonym("bob"), slices.Values(names)); len(got) != 0 {
		t.Errorf("Match with another key's pseudonym = %v", got)
	}
	for _, bad := range []string{"", "u-", "bob", "u-ABCDEFGHIJKLMNOP", "u-abcdefghijklmno", "x-abcdefghijklmnop"} {
		if CheckPseudonym(bad) == nil {
			t.Errorf("CheckPseudonym(%q) = nil", bad)
		}
	}
}

func TestLoadOrCreateKey(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state", "identity.key")
	if _, err := ReadKey(path); err == nil {
		t.Fatal("ReadKey of a missing file succeeded")
	}
	if _, err := os.Stat(path); err == nil {
		t.Fatal("ReadKey created the key")
	}
	k1, err := LoadOrCreateKey(path)
	if err != nil || len(k1) != KeySize {
		t.Fatalf("LoadOrCreateKey = %d bytes, %v", len(k1), err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode = %v, %v; want 0600", fi.Mode(), err)
	}
	k2, err := LoadOrCreateKey(path)
	if err != nil || !bytes.Equal(k1, k2) {
		t.Fatalf("second load = %x, %v; want the same key", k2, err)
	}
	if bytes.Equal(k1, make([]byte, KeySize)) {
		t.Fatal("the key is all zero")
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("the key's directory holds %d files, want 1", len(entries))
	}
	// Concurrent first starts agree on one key.
	path2 := filepath.Join(dir, "race", "identity.key")
	keys := make([][]byte, 8)
	var wg sync.WaitGroup
	for i := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			keys[i], _ = LoadOrCreateKey(path2)
		}()
	}
	wg.Wait()
	for i := range keys {
		if len(keys[i]) != KeySize || !bytes.Equal(keys[i], keys[0]) {
			t.Errorf("racing starts got different keys: %x vs %x", keys[i], keys[0])
		}
	}
	// A truncated key is an error, not a new key.
	os.WriteFile(path, []byte("short"), 0o600)
	if _, err := LoadOrCreateKey(path); err == nil {
		t.Error("a truncated key was accepted")
	}
}
