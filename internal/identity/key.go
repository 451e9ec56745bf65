package identity

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// KeySize is the size of a pseudonym key in bytes.
const KeySize = 32

// ReadKey reads the pseudonym key at path: at least KeySize bytes. It
// never creates it (`balise identity reveal` reads only).
func ReadKey(path string) ([]byte, error) {
	key, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(key) < KeySize {
		return nil, fmt.Errorf("%s: %d bytes, want at least %d (a key made by balise serve)", path, len(key), KeySize)
	}
	return key, nil
}

// LoadOrCreateKey reads the pseudonym key at path, or, when the file does
// not exist, creates it (its directory too, 0750) with KeySize random
// bytes, mode 0600, synced to disk. Two processes starting together agree
// on one key: the file is created exclusively and the loser reads it.
func LoadOrCreateKey(path string) ([]byte, error) {
	key, err := ReadKey(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, err
	}
	key = make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".identity-key-*")
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(key); err != nil {
		tmp.Close()
		return nil, err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return nil, err
	}
	if err := tmp.Close(); err != nil {
		return nil, err
	}
	// A hard link publishes the whole key at once and fails if another
	// process got there first.
	if err := os.Link(tmp.Name(), path); errors.Is(err, fs.ErrExist) {
		return ReadKey(path)
	} else if err != nil {
		return nil, err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return key, nil
}
