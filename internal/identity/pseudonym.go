package identity

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"hash"
	"iter"
	"strings"
	"sync"
)

// Log modes: how decision lines carry a user ([identity] log).
const (
	LogNone      = "none"
	LogPseudonym = "pseudonym"
	LogName      = "name"
)

// PseudonymPrefix starts every pseudonym.
const PseudonymPrefix = "u-"

// pseudonymBytes of the HMAC are kept: 80 bits, 16 base32 characters.
const pseudonymBytes = 10

// pseudonymDomain separates pseudonyms from any other use of the key.
const pseudonymDomain = "balise identity pseudonym v1\x00"

var b32 = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// Pseudonyms turns user names into stable tokens with a secret key, and
// names into what decision lines carry. It is safe for concurrent use.
type Pseudonyms struct {
	mode string
	pool sync.Pool // of hash.Hash: HMAC-SHA256 with the key
}

// NewPseudonyms returns Pseudonyms with key (at least KeySize bytes) for
// log mode mode (LogNone, LogPseudonym or LogName). The key is copied.
func NewPseudonyms(key []byte, mode string) (*Pseudonyms, error) {
	switch mode {
	case LogNone, LogPseudonym, LogName:
	default:
		return nil, fmt.Errorf("identity: unknown log mode %q (none, pseudonym or name)", mode)
	}
	if len(key) < KeySize {
		return nil, fmt.Errorf("identity: the pseudonym key has %d bytes, want at least %d", len(key), KeySize)
	}
	k := append([]byte(nil), key...)
	p := &Pseudonyms{mode: mode}
	p.pool.New = func() any { return hmac.New(sha256.New, k) }
	return p, nil
}

// Canonical is the form of a user name pseudonyms are computed on: no
// surrounding spaces, lower case (users compare case-insensitively).
func Canonical(user string) string { return strings.ToLower(strings.TrimSpace(user)) }

// Pseudonym returns the token of user: "u-" and 16 base32 characters of
// HMAC-SHA256(key, user in canonical form). The same name and key always
// give the same token; another key gives an unrelated one. "" for "".
func (p *Pseudonyms) Pseudonym(user string) string {
	user = Canonical(user)
	if user == "" {
		return ""
	}
	h := p.pool.Get().(hash.Hash)
	h.Reset()
	h.Write([]byte(pseudonymDomain))
	h.Write([]byte(user))
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	p.pool.Put(h)
	var out [len(PseudonymPrefix) + 16]byte
	copy(out[:], PseudonymPrefix)
	b32.Encode(out[len(PseudonymPrefix):], sum[:pseudonymBytes])
	return string(out[:])
}

// Name returns what a decision line carries for user under the log mode:
// "" (none), the pseudonym (pseudonym) or the name itself (name). "" for
// no user.
func (p *Pseudonyms) Name(user string) string {
	switch {
	case user == "":
		return ""
	case p.mode == LogName:
		return user
	case p.mode == LogPseudonym:
		return p.Pseudonym(user)
	}
	return ""
}

// Mode returns the log mode.
func (p *Pseudonyms) Mode() string { return p.mode }

// ErrNotPseudonym is returned by CheckPseudonym for text that is not a
// pseudonym.
var ErrNotPseudonym = errors.New("not a pseudonym (u- and 16 letters or digits, as decision lines carry it)")

// CheckPseudonym reports whether s has the form of a pseudonym.
func CheckPseudonym(s string) error {
	rest, ok := strings.CutPrefix(s, PseudonymPrefix)
	if !ok || len(rest) != 16 {
		return ErrNotPseudonym
	}
	if _, err := b32.DecodeString(rest); err != nil {
		return ErrNotPseudonym
	}
	return nil
}

// Match returns, in canonical form and without repeats, the candidate
// names whose pseudonym is pseudonym: normally none or one.
func (p *Pseudonyms) Match(pseudonym string, candidates iter.Seq[string]) []string {
	var out []string
	seen := map[string]bool{}
	for name := range candidates {
		c := Canonical(name)
		if c == "" || seen[c] {
			continue
		}
		seen[c] = true
		if hmac.Equal([]byte(p.Pseudonym(c)), []byte(pseudonym)) {
			out = append(out, c)
		}
	}
	return out
}
