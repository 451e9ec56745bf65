package proxy

import (
	"container/list"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"
)

// CA is a certificate authority that issues short-lived leaf certificates
// for the block page on blocked HTTPS connections.
type CA struct {
	cert   *x509.Certificate
	signer crypto.Signer
	chain  [][]byte // DER of the CA certificate, sent after each leaf
}

// NewCA generates a self-signed ECDSA P-256 CA for pilots and tests, named
// name (empty: "Balise pilot CA") and valid for validity (zero: 10 years).
// It returns the PEM-encoded certificate and PKCS#8 private key.
func NewCA(name string, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	if name == "" {
		name = "Balise pilot CA"
	}
	if validity <= 0 {
		validity = 10 * 365 * 24 * time.Hour
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name, Organization: []string{"Balise"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), nil
}

// ParseCA parses a PEM CA certificate and its private key (PKCS#8,
// PKCS#1 or SEC 1). The certificate must be a CA allowed to sign
// certificates, and the key must match it.
func ParseCA(certPEM, keyPEM []byte) (*CA, error) {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	if !cert.IsCA || (cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0) {
		return nil, errors.New("ca: certificate is not a CA allowed to sign certificates")
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, errors.New("ca: unsupported private key type")
	}
	return &CA{cert: cert, signer: signer, chain: [][]byte{cert.Raw}}, nil
}

// LoadCA reads a CA certificate and key from PEM files (see ParseCA).
func LoadCA(certFile, keyFile string) (*CA, error) {
	c, err := os.ReadFile(certFile)
	if err != nil {
		return nil, err
	}
	k, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, err
	}
	ca, err := ParseCA(c, k)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certFile, err)
	}
	return ca, nil
}

// Certificate returns the CA certificate.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

func randomSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

// issue signs a leaf for host (a name or an IP literal) with leafKey.
// The leaf names exactly host: never a wildcard, never another name. The
// caller (the interceptor) issues only for the blocked listed host it
// shows the block page for.
func (ca *CA) issue(host string, leafKey *ecdsa.PrivateKey, now time.Time, validity time.Duration) (*tls.Certificate, error) {
	if host == "" || strings.ContainsAny(host, "*/ ") {
		return nil, fmt.Errorf("ca: refusing a certificate for %q", host)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	notAfter := now.Add(validity)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: host},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		tmpl.IPAddresses = append(tmpl.IPAddresses, ip.AsSlice())
	} else {
		tmpl.DNSNames = []string{host}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &leafKey.PublicKey, ca.signer)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{
		Certificate: append([][]byte{der}, ca.chain...),
		PrivateKey:  leafKey,
		Leaf:        leaf,
	}, nil
}

// certCache is a bounded LRU of leaf certificates with single-flight
// issuance: concurrent requests for one host wait for one signature.
type certCache struct {
	ca       *CA
	key      *ecdsa.PrivateKey // one leaf key for every leaf; it never leaves memory
	validity time.Duration
	size     int
	onHit    func()
	onMiss   func()

	mu      sync.Mutex
	gen     int        // incremented by reset: leaves issued before are not cached
	lru     *list.List // of *certEntry, front = most recent
	entries map[string]*list.Element
	flight  map[string]*certCall
}

type certEntry struct {
	host string
	cert *tls.Certificate
}

type certCall struct {
	done chan struct{}
	cert *tls.Certificate
	err  error
}

func newCertCache(ca *CA, validity time.Duration, size int, onHit, onMiss func()) (*certCache, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	return &certCache{
		ca: ca, key: key, validity: validity, size: size, onHit: onHit, onMiss: onMiss,
		lru: list.New(), entries: make(map[string]*list.Element), flight: make(map[string]*certCall),
	}, nil
}

// get returns a valid leaf for host, issuing one if needed. A cached
// leaf is reused until a tenth of its validity remains.
func (c *certCache) get(host string, now time.Time) (*tls.Certificate, error) {
	c.mu.Lock()
	if el, ok := c.entries[host]; ok {
		e := el.Value.(*certEntry)
		if now.Add(c.validity / 10).Before(e.cert.Leaf.NotAfter) {
			c.lru.MoveToFront(el)
			c.mu.Unlock()
			c.onHit()
			return e.cert, nil
		}
		c.lru.Remove(el)
		delete(c.entries, host)
	}
	if call, ok := c.flight[host]; ok {
		c.mu.Unlock()
		<-call.done
		c.onHit()
		return call.cert, call.err
	}
	call := &certCall{done: make(chan struct{})}
	c.flight[host] = call
	ca, validity, gen := c.ca, c.validity, c.gen
	c.mu.Unlock()
	c.onMiss()

	call.cert, call.err = ca.issue(host, c.key, now, validity)

	c.mu.Lock()
	if c.flight[host] == call {
		delete(c.flight, host)
	}
	if call.err == nil && gen == c.gen {
		c.entries[host] = c.lru.PushFront(&certEntry{host: host, cert: call.cert})
		for c.lru.Len() > c.size {
			old := c.lru.Back()
			c.lru.Remove(old)
			delete(c.entries, old.Value.(*certEntry).host)
		}
	}
	c.mu.Unlock()
	close(call.done)
	return call.cert, call.err
}

// reset makes ca sign the next leaves (valid for validity, at most size
// kept) and drops every cached leaf: a reload changed the CA.
func (c *certCache) reset(ca *CA, validity time.Duration, size int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ca, c.validity, c.size = ca, validity, size
	c.gen++
	c.lru.Init()
	clear(c.entries)
	clear(c.flight) // callers waiting on a flight still get its leaf
}

func (c *certCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}
