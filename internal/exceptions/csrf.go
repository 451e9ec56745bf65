package exceptions

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"
)

// tokenWindow is the granularity of CSRF tokens' time binding.
const tokenWindow = 15 * time.Minute

// Tokens issues and checks the form's anti-forgery tokens: an HMAC-SHA256
// over the client's address and a 15-minute time window, with a key kept
// in a file so that a restart keeps issued tokens valid.
type Tokens struct {
	key      []byte
	lifetime time.Duration
}

// LoadKey reads the token key at path, creating it (32 random bytes,
// mode 0600, atomically: concurrent creators agree on one key) when it
// does not exist.
func LoadKey(path string) ([]byte, error) {
	key, err := os.ReadFile(path)
	if err == nil {
		if len(key) < 32 {
			return nil, fmt.Errorf("%s: key too short (%d bytes, want 32)", path, len(key))
		}
		return key, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	key = make([]byte, 32)
	rand.Read(key)
	tmp, err := os.CreateTemp(dir, ".csrf-key-*")
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return nil, err
	}
	if _, err := tmp.Write(key); err != nil {
		tmp.Close()
		return nil, err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return nil, err
	}
	tmp.Close()
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, os.ErrExist) {
			return LoadKey(path)
		}
		return nil, err
	}
	syncDir(dir)
	return key, nil
}

// NewTokens returns a token issuer with key; tokens stay valid for
// lifetime (zero: 2 hours), rounded up to whole 15-minute windows.
func NewTokens(key []byte, lifetime time.Duration) *Tokens {
	if lifetime <= 0 {
		lifetime = 2 * time.Hour
	}
	return &Tokens{key: key, lifetime: lifetime}
}

func (t *Tokens) mac(client netip.Addr, window uint64) []byte {
	m := hmac.New(sha256.New, t.key)
	m.Write([]byte("balise exception form v1\x00"))
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], window)
	m.Write(b[:])
	a := client.Unmap().As16()
	m.Write(a[:])
	return m.Sum(nil)[:20]
}

// Issue returns a token for client at now.
func (t *Tokens) Issue(client netip.Addr, now time.Time) string {
	w := uint64(now.Unix()) / uint64(tokenWindow/time.Second)
	var buf [28]byte
	binary.BigEndian.PutUint64(buf[:8], w)
	copy(buf[8:], t.mac(client, w))
	return base64.RawURLEncoding.EncodeToString(buf[:])
}

// Check reports whether token was issued for client within the lifetime.
func (t *Tokens) Check(token string, client netip.Addr, now time.Time) error {
	raw, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil || len(raw) != 28 {
		return errors.New("malformed token")
	}
	w := binary.BigEndian.Uint64(raw[:8])
	cur := uint64(now.Unix()) / uint64(tokenWindow/time.Second)
	if !hmac.Equal(raw[8:], t.mac(client, w)) {
		return errors.New("token not issued for this workstation")
	}
	n := uint64((t.lifetime + tokenWindow - 1) / tokenWindow)
	if w > cur || cur-w > n {
		return errors.New("token expired")
	}
	return nil
}
