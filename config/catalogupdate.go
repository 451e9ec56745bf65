package config

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"aead.dev/minisign"
)

// maxCatalogBytes bounds a downloaded catalog; maxSignatureBytes its
// signature.
const (
	maxCatalogBytes   = 64 << 20
	maxSignatureBytes = 4 << 10
)

// Reasons an update is not applied, as UpdateError.Reason and the result
// label of balise_catalog_updates_total.
const (
	// UpdateApplied: the update is in force (not an error).
	UpdateApplied = "applied"
	// UpdateCurrent: the publisher still serves the catalog in use (not
	// an error).
	UpdateCurrent = "current"
	// UpdateFetch: the catalog or its signature could not be downloaded.
	UpdateFetch = "fetch"
	// UpdateUnsigned: there is no signature next to the catalog.
	UpdateUnsigned = "unsigned"
	// UpdateKey: the signature is by another key than update_key.
	UpdateKey = "key"
	// UpdateSignature: the signature does not match the bytes (tampered
	// or truncated) or cannot be read.
	UpdateSignature = "signature"
	// UpdateInvalid: the catalog does not pass the catalog checks.
	UpdateInvalid = "invalid"
	// UpdateOlder: its serial is not greater than the one in use (no
	// rollback).
	UpdateOlder = "older"
	// UpdateRejected: the configuration does not load or compile with it
	// (a rule names a service it no longer has...).
	UpdateRejected = "rejected"
)

// UpdateResults lists every result label, so series exist up front.
func UpdateResults() []string {
	return []string{UpdateApplied, UpdateCurrent, UpdateFetch, UpdateUnsigned, UpdateKey, UpdateSignature, UpdateInvalid, UpdateOlder, UpdateRejected}
}

// UpdateError is why a catalog update was not applied.
type UpdateError struct {
	// Reason is one of the Update* reasons.
	Reason string
	Err    error
}

func (e *UpdateError) Error() string { return e.Reason + ": " + e.Err.Error() }
func (e *UpdateError) Unwrap() error { return e.Err }

func updateErr(reason string, format string, args ...any) *UpdateError {
	return &UpdateError{Reason: reason, Err: fmt.Errorf(format, args...)}
}

// ParseUpdateKey reads a minisign public key: its base64 line ("RW..."),
// or the whole .pub file text (comment line and key line).
func ParseUpdateKey(s string) (minisign.PublicKey, error) {
	var k minisign.PublicKey
	if err := k.UnmarshalText([]byte(strings.TrimSpace(s))); err != nil {
		return k, fmt.Errorf("invalid minisign public key: %v", strings.TrimPrefix(err.Error(), "minisign: "))
	}
	return k, nil
}

// VerifyCatalog checks that sig is key's minisign signature of exactly
// data, then parses and checks the catalog (ParseCatalog with source).
// Its error is an *UpdateError.
func VerifyCatalog(key minisign.PublicKey, data, sig []byte, source string) (*ServiceCatalog, error) {
	if len(bytes.TrimSpace(sig)) == 0 {
		return nil, updateErr(UpdateUnsigned, "no signature")
	}
	var s minisign.Signature
	if err := s.UnmarshalText(sig); err != nil {
		return nil, updateErr(UpdateSignature, "unreadable signature: %v", strings.TrimPrefix(err.Error(), "minisign: "))
	}
	if s.KeyID != key.ID() {
		return nil, updateErr(UpdateKey, "signed by key %X, not by update_key (%X)", s.KeyID, key.ID())
	}
	if !minisign.Verify(key, data, sig) {
		return nil, updateErr(UpdateSignature, "the signature does not match the catalog's bytes")
	}
	cat, err := ParseCatalog(data, source)
	if err != nil {
		return nil, &UpdateError{Reason: UpdateInvalid, Err: err}
	}
	return cat, nil
}

// Files of [catalog] update_dir.
const (
	savedCatalogName   = "catalog.toml"
	savedSignatureName = "catalog.toml.minisig"
)

// LoadSavedCatalog returns the last good update kept in the update
// directory, verified again against update_key (nil, nil when updates are
// off or none was saved yet).
func LoadSavedCatalog(c *Config) (*ServiceCatalog, error) {
	if c.Catalog.UpdateURL == "" || c.Catalog.UpdateKey == "" {
		return nil, nil
	}
	data, err := os.ReadFile(filepath.Join(c.Catalog.UpdateDir, savedCatalogName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	sig, err := os.ReadFile(filepath.Join(c.Catalog.UpdateDir, savedSignatureName))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	key, err := ParseUpdateKey(c.Catalog.UpdateKey)
	if err != nil {
		return nil, err
	}
	return VerifyCatalog(key, data, sig, CatalogUpdate)
}

// SaveCatalog keeps cat (an update) and its signature in the update
// directory, each file replaced atomically.
func SaveCatalog(c *Config, cat *ServiceCatalog, sig []byte) error {
	dir := c.Catalog.UpdateDir
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	if err := writeAtomic(filepath.Join(dir, savedSignatureName), sig); err != nil {
		return err
	}
	return writeAtomic(filepath.Join(dir, savedCatalogName), cat.raw)
}

// CatalogUpdater fetches signed catalog updates from [catalog] update_url.
type CatalogUpdater struct {
	cfg     *Config
	key     minisign.PublicKey
	client  *http.Client
	log     *slog.Logger
	metrics *Metrics
}

// NewCatalogUpdater returns an updater for c's [catalog] update settings
// (nil when c has no update_url). A nil client uses one with a 60 s
// timeout that refuses redirects away from https; nil log discards; nil
// metrics records none.
func NewCatalogUpdater(c *Config, client *http.Client, log *slog.Logger, m *Metrics) *CatalogUpdater {
	if c.Catalog.UpdateURL == "" {
		return nil
	}
	key, err := ParseUpdateKey(c.Catalog.UpdateKey)
	if err != nil {
		return nil // Parse refused it already
	}
	client, log = downloadDefaults(client, log)
	return &CatalogUpdater{cfg: c, key: key, client: client, log: log, metrics: m}
}

// Check downloads the catalog and its signature once and returns the
// verified catalog and signature when it may replace cur. When the
// publisher still serves cur it returns an *UpdateError with reason
// UpdateCurrent; every other error is an *UpdateError too.
func (u *CatalogUpdater) Check(ctx context.Context, cur *ServiceCatalog) (*ServiceCatalog, []byte, error) {
	data, err := u.get(ctx, u.cfg.Catalog.UpdateURL, maxCatalogBytes)
	if err != nil {
		return nil, nil, updateErr(UpdateFetch, "%v", err)
	}
	sig, err := u.get(ctx, u.cfg.Catalog.UpdateURL+".minisig", maxSignatureBytes)
	var nf notFound
	switch {
	case errors.As(err, &nf):
		return nil, nil, updateErr(UpdateUnsigned, "no signature at %s.minisig", u.cfg.Catalog.UpdateURL)
	case err != nil:
		return nil, nil, updateErr(UpdateFetch, "signature: %v", err)
	}
	cat, err := VerifyCatalog(u.key, data, sig, CatalogUpdate)
	if err != nil {
		return nil, nil, err
	}
	if cur != nil && cur.raw != nil && bytes.Equal(cur.raw, data) {
		return nil, nil, updateErr(UpdateCurrent, "serial %d is in use", cat.Serial())
	}
	if cur != nil {
		if err := cat.NewerThan(cur); err != nil {
			return nil, nil, &UpdateError{Reason: UpdateOlder, Err: err}
		}
	}
	return cat, sig, nil
}

type notFound struct{ url string }

func (e notFound) Error() string { return e.url + ": 404 Not Found" }

func (u *CatalogUpdater) get(ctx context.Context, url string, limit int64) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", "balise-catalog-updater")
	resp, err := u.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return nil, notFound{url}
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("HTTP status %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(body)) > limit {
		return nil, fmt.Errorf("larger than %d bytes", limit)
	}
	return body, nil
}

// Run checks for an update at once, then every update_interval, until
// ctx is done. A catalog that may replace current() is passed to apply,
// which puts it in force (reloading the configuration with it) or
// returns why it cannot (the result is then UpdateRejected); once applied
// it is saved in the update directory. Every outcome is counted in
// balise_catalog_updates_total{result}; refusals are logged with their
// reason, and the catalog in use stays.
func (u *CatalogUpdater) Run(ctx context.Context, current func() *ServiceCatalog, apply func(*ServiceCatalog) error) {
	for {
		u.Once(ctx, current, apply)
		t := time.NewTimer(u.cfg.Catalog.UpdateInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// Once is one round of Run; it returns the result label.
func (u *CatalogUpdater) Once(ctx context.Context, current func() *ServiceCatalog, apply func(*ServiceCatalog) error) string {
	cur := current()
	cat, sig, err := u.Check(ctx, cur)
	if err == nil {
		if aerr := apply(cat); aerr != nil {
			err = &UpdateError{Reason: UpdateRejected, Err: aerr}
		} else if serr := SaveCatalog(u.cfg, cat, sig); serr != nil {
			u.log.Warn("catalog update applied but not saved: a restart will use the previous one", "error", serr)
		}
	}
	if ctx.Err() != nil {
		return ""
	}
	result := UpdateApplied
	var ue *UpdateError
	switch {
	case err == nil:
		u.log.Info("catalog update applied", "version", cat.Version(), "serial", cat.Serial(), "previous_version", cur.Version(), "previous_serial", cur.Serial())
	case errors.As(err, &ue) && ue.Reason == UpdateCurrent:
		result = UpdateCurrent
	case errors.As(err, &ue):
		result = ue.Reason
		u.log.Warn("catalog update refused; keeping the catalog in use", "reason", ue.Reason, "error", ue.Err.Error(),
			"url", u.cfg.Catalog.UpdateURL, "version", cur.Version(), "serial", cur.Serial())
	default:
		result = UpdateFetch
		u.log.Warn("catalog update failed; keeping the catalog in use", "error", err.Error(), "url", u.cfg.Catalog.UpdateURL)
	}
	if u.metrics != nil {
		u.metrics.catalogUpdates.WithLabelValues(result).Inc()
		u.metrics.catalogLastCheck.Set(float64(time.Now().UnixNano()) / 1e9)
	}
	return result
}
