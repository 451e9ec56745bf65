package directory

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Kinds of directory.
const (
	KindAD       = "ad"
	KindOpenLDAP = "openldap"
)

// Config says how to reach the directory. Its zero values are the safe
// defaults documented on each field; URL, BindDN, BindPassword and BaseDN
// are required.
type Config struct {
	// URL is ldaps://host[:port] or, with StartTLS, ldap://host[:port].
	// Plain ldap:// without StartTLS is refused.
	URL string
	// StartTLS upgrades an ldap:// connection with StartTLS before
	// anything is sent. False: the URL must be ldaps://.
	StartTLS bool
	// RootCAs verifies the directory's certificate. Nil: the CAs of
	// CAFile, or the system's when CAFile is empty too.
	RootCAs *x509.CertPool
	// CAFile is a PEM file of the CAs that sign the directory's
	// certificate, read once by New. Used when RootCAs is nil.
	CAFile string
	// ServerName is the name checked in the directory's certificate.
	// Empty: the URL's host.
	ServerName string
	// BindDN is the service account that searches the directory (a DN,
	// or user@domain for AD).
	BindDN string
	// BindPassword is BindDN's password.
	BindPassword string
	// BaseDN is where users and groups are searched (DC=chus,DC=local).
	BaseDN string
	// Kind is KindAD (nested groups through LDAP_MATCHING_RULE_IN_CHAIN,
	// plus the primary group) or KindOpenLDAP (memberOf). Empty: KindAD.
	Kind string
	// UserAttribute holds the login name users are looked up by. Empty:
	// sAMAccountName for AD, uid for OpenLDAP.
	UserAttribute string
	// CacheTTL is how long memberships are trusted before being asked
	// again. Zero: 10 minutes.
	CacheTTL time.Duration
	// NegativeTTL is how long an unknown user stays unknown. Zero: a
	// minute, or CacheTTL when that is shorter.
	NegativeTTL time.Duration
	// MaxStale is how long past its last successful lookup a user's
	// memberships are served while the directory cannot be reached. Zero:
	// 24 hours.
	MaxStale time.Duration
	// RetryAfter is how long, after a failed lookup, a user's last known
	// memberships are served before the directory is tried again. Zero:
	// 15 seconds, or CacheTTL when that is shorter.
	RetryAfter time.Duration
	// Timeout bounds one lookup or one authentication: past it the caller
	// gets the last known memberships or an error. Zero: 2 seconds.
	Timeout time.Duration
	// CacheSize bounds the users kept in the cache; a random one is
	// evicted to make room. Zero: 10000.
	CacheSize int
	// Registerer receives the balise_directory_* metrics. Nil: not
	// registered (Stats still counts).
	Registerer prometheus.Registerer
}

// settings is a Config checked and defaulted.
type settings struct {
	Config
	addr  string // URL without the scheme's default port left implicit
	ldaps bool
	tls   *tls.Config
}

func (c Config) settings() (*settings, error) {
	var errs []error
	s := &settings{Config: c}
	u, err := url.Parse(c.URL)
	switch {
	case c.URL == "":
		errs = append(errs, errors.New("url is required"))
	case err != nil:
		errs = append(errs, fmt.Errorf("url: %v", err))
	case u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil:
		errs = append(errs, fmt.Errorf("url %q: want ldaps://host[:port] or ldap://host[:port]", c.URL))
	case u.Scheme == "ldaps":
		s.ldaps = true
		if c.StartTLS {
			errs = append(errs, errors.New("start_tls applies to ldap:// only; ldaps:// is already TLS"))
		}
		s.addr = hostPort(u, "636")
	case u.Scheme == "ldap":
		if !c.StartTLS {
			errs = append(errs, fmt.Errorf("url %q: plain ldap:// is refused (passwords would cross the network in clear); use ldaps:// or start_tls = true", c.URL))
		}
		s.addr = hostPort(u, "389")
	default:
		errs = append(errs, fmt.Errorf("url %q: scheme must be ldaps or ldap", c.URL))
	}
	if c.BindDN == "" {
		errs = append(errs, errors.New("bind_dn is required"))
	}
	if c.BindPassword == "" {
		errs = append(errs, errors.New("bind password is empty (an empty password is an unauthenticated bind)"))
	}
	if c.BaseDN == "" {
		errs = append(errs, errors.New("base_dn is required"))
	}
	switch c.Kind {
	case "":
		s.Kind = KindAD
	case KindAD, KindOpenLDAP:
	default:
		errs = append(errs, fmt.Errorf("kind %q: want %q or %q", c.Kind, KindAD, KindOpenLDAP))
	}
	if s.UserAttribute == "" {
		s.UserAttribute = "sAMAccountName"
		if s.Kind == KindOpenLDAP {
			s.UserAttribute = "uid"
		}
	} else if strings.ContainsAny(s.UserAttribute, "()=*\\ ,") {
		errs = append(errs, fmt.Errorf("user_attribute %q is not an attribute name", s.UserAttribute))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"cache_ttl", c.CacheTTL}, {"negative ttl", c.NegativeTTL}, {"max stale", c.MaxStale}, {"retry after", c.RetryAfter}, {"timeout", c.Timeout}} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s %v is negative", d.name, d.v))
		}
	}
	if c.CacheSize < 0 {
		errs = append(errs, fmt.Errorf("cache size %d is negative", c.CacheSize))
	}
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&s.CacheTTL, 10*time.Minute)
	def(&s.NegativeTTL, min(time.Minute, s.CacheTTL))
	def(&s.MaxStale, 24*time.Hour)
	def(&s.RetryAfter, min(15*time.Second, s.CacheTTL))
	def(&s.Timeout, 2*time.Second)
	if s.CacheSize <= 0 {
		s.CacheSize = 10000
	}
	pool := c.RootCAs
	if pool == nil && c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("ca_file: %v", err))
		} else {
			pool = x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				errs = append(errs, fmt.Errorf("ca_file %s: no PEM certificate", c.CAFile))
			}
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("directory: %w", errors.Join(errs...))
	}
	name := c.ServerName
	if name == "" {
		name = u.Hostname()
	}
	s.tls = &tls.Config{RootCAs: pool, ServerName: name, MinVersion: tls.VersionTLS12}
	return s, nil
}

func hostPort(u *url.URL, port string) string {
	if u.Port() != "" {
		return u.Host
	}
	if strings.Contains(u.Hostname(), ":") {
		return "[" + u.Hostname() + "]:" + port
	}
	return u.Hostname() + ":" + port
}
