package config

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// DirectorySection is [directory]: the institution's directory (Active
// Directory or OpenLDAP), asked for a user's groups. Absent (nil in
// Config): no directory, users match only groups' `users`.
type DirectorySection struct {
	// URL is "ldaps://host[:port]" or, with StartTLS, "ldap://host[:port]"
	// (required). Plain LDAP without StartTLS is refused.
	URL string
	// StartTLS upgrades an ldap:// connection with StartTLS (default
	// false; required for ldap://, refused for ldaps://).
	StartTLS bool
	// CAFile is a PEM file of the CA that signed the directory's
	// certificate, resolved from the configuration's directory ("" = the
	// system's roots).
	CAFile string
	// BindDN is the service account Balise binds as ("svc-balise@chus.local"
	// or a DN). Required with kind "ad"; with "openldap", leaving out both
	// BindDN and BindPasswordFile binds anonymously.
	BindDN string
	// BindPasswordFile is the file holding the service account's password
	// (one line; a final newline is ignored), resolved from the
	// configuration's directory. Parse reads it into BindPassword.
	BindPasswordFile string
	// BindPassword is the content of BindPasswordFile. It never prints.
	BindPassword Secret
	// BaseDN is where users and groups are searched ("DC=chus,DC=local";
	// required).
	BaseDN string
	// Kind is "ad" (default: nested groups through
	// LDAP_MATCHING_RULE_IN_CHAIN) or "openldap" (memberOf).
	Kind string
	// UserAttribute is the attribute a user name is looked up by (default
	// "sAMAccountName" for kind "ad", "uid" for "openldap").
	UserAttribute string
	// CacheTTL is how long a user's memberships are kept (default 10m);
	// the last known memberships are kept while the directory is down.
	CacheTTL time.Duration
	// Timeout bounds one lookup (default 2s): a slower lookup decides on
	// network groups alone.
	Timeout time.Duration
}

// ProxyAuth is [proxy.auth]: who the explicit proxy asks to authenticate.
type ProxyAuth struct {
	// Mode is "off" (default: nobody is asked) or "negotiate" (Kerberos
	// single sign-on, 407 with Proxy-Authenticate: Negotiate).
	Mode string
	// Keytab is the service's keytab file, resolved from the
	// configuration's directory (required with "negotiate").
	Keytab string
	// ServicePrincipal is the proxy's principal, "HTTP/proxy.chus.local"
	// (required with "negotiate").
	ServicePrincipal string
	// Challenge is "listed" (default: a 407 only for a listed host whose
	// verdict could change with who asks) or "always" (every request
	// from Clients).
	Challenge string
	// Clients are the client networks that may be challenged (default
	// Proxy.AllowedClients). Each must lie inside Proxy.AllowedClients.
	Clients []netip.Prefix
}

// IdentitySection is [identity]: how an authenticated user follows an
// address and shows in logs.
type IdentitySection struct {
	// BindingTTL is how long an address stays tied to the user last
	// authenticated from it (default 30m).
	BindingTTL time.Duration
	// SharedAfter is the number of distinct users authenticated from one
	// address within BindingTTL that make it shared: the DNS filter then
	// uses no user for it (default 2; 1 means never).
	SharedAfter int
	// Log is how proxy decision lines carry the user: "none",
	// "pseudonym" (default: a keyed hash) or "name".
	Log string
	// KeyFile holds the key of pseudonyms (default
	// "<exceptions.state_dir>/identity.key", or "balise-data/identity.key"
	// next to the configuration file without [exceptions]). Config never
	// reads nor writes it: `serve` creates it (0600, 32 random bytes) when
	// it is missing.
	KeyFile string
}

// Secret is a configuration value that must never appear in output: it
// prints, logs and marshals as "[redacted]". Value returns it.
type Secret struct{ s string }

// NewSecret returns a Secret holding s.
func NewSecret(s string) Secret { return Secret{s} }

// Value returns the secret itself.
func (s Secret) Value() string { return s.s }

// IsZero reports whether the secret is empty.
func (s Secret) IsZero() bool { return s.s == "" }

// String returns "[redacted]" ("" for an empty secret).
func (s Secret) String() string {
	if s.s == "" {
		return ""
	}
	return "[redacted]"
}

// GoString is String, so that %#v does not print the secret either.
func (s Secret) GoString() string { return s.String() }

// LogValue keeps the secret out of slog output.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalText keeps the secret out of JSON and other encodings.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// ldapAttrRE is an LDAP attribute description: a name or an OID.
var ldapAttrRE = regexp.MustCompile(`^([A-Za-z][A-Za-z0-9-]{0,63}|[0-9]+(\.[0-9]+)+)$`)

func (p *parser) directorySection(t *tbl) *DirectorySection {
	if t == nil {
		return nil
	}
	defer t.finish()
	c := &DirectorySection{}
	c.URL = t.str("url", "")
	c.StartTLS = t.boolean("start_tls", false)
	switch u, err := url.Parse(c.URL); {
	case !t.has("url") || c.URL == "":
		p.keyErr("directory", "url is required (\"ldaps://dc1.example.local\")")
	case err != nil || u.Host == "" || (u.Path != "" && u.Path != "/") || u.User != nil || u.RawQuery != "":
		p.valueErr("directory.url", "invalid directory URL %q (want ldaps://host[:port])", c.URL)
	case u.Scheme == "ldap" && !c.StartTLS:
		p.valueErr("directory.url", "%q would send the service account's password and users' groups in clear text: use ldaps://, or set directory.start_tls = true", c.URL)
	case u.Scheme == "ldaps" && c.StartTLS:
		p.valueErr("directory.start_tls", "start_tls is for ldap:// URLs; ldaps:// is already TLS")
	case u.Scheme != "ldap" && u.Scheme != "ldaps":
		p.valueErr("directory.url", "invalid directory URL %q (want ldaps://host[:port], or ldap:// with start_tls = true)", c.URL)
	}
	c.CAFile = p.pathKey(t, "ca_file", "")
	c.Kind = t.enum("kind", "ad", "ad", "openldap")
	c.BindDN = t.str("bind_dn", "")
	c.BindPasswordFile = p.pathKey(t, "bind_password_file", "")
	switch {
	case c.BindDN != "" && c.BindPasswordFile == "":
		p.keyErr("directory", "bind_password_file is required with bind_dn")
	case c.BindDN == "" && c.BindPasswordFile != "":
		p.keyErr("directory", "bind_dn is required with bind_password_file")
	case c.BindDN == "" && c.Kind == "ad":
		p.keyErr("directory", "bind_dn and bind_password_file are required: Active Directory answers no anonymous search")
	}
	if c.BindPasswordFile != "" {
		pw, err := ReadSecretFile(c.BindPasswordFile)
		switch {
		case err != nil:
			p.valueErr("directory.bind_password_file", "%v", err)
		case pw.IsZero():
			// An empty password makes an LDAP simple bind anonymous.
			p.valueErr("directory.bind_password_file", "%s is empty", c.BindPasswordFile)
		}
		c.BindPassword = pw
	}
	c.BaseDN = t.str("base_dn", "")
	if strings.TrimSpace(c.BaseDN) == "" {
		if t.has("base_dn") {
			p.valueErr("directory.base_dn", "must not be empty")
		} else {
			p.keyErr("directory", "base_dn is required (\"DC=chus,DC=local\")")
		}
	} else if !strings.Contains(c.BaseDN, "=") {
		p.valueErr("directory.base_dn", "%q is not a DN (\"DC=chus,DC=local\")", c.BaseDN)
	}
	defAttr := "sAMAccountName"
	if c.Kind == "openldap" {
		defAttr = "uid"
	}
	c.UserAttribute = t.str("user_attribute", defAttr)
	if !ldapAttrRE.MatchString(c.UserAttribute) {
		p.valueErr("directory.user_attribute", "invalid attribute name %q", c.UserAttribute)
		c.UserAttribute = defAttr
	}
	c.CacheTTL = p.positive(t, "cache_ttl", 10*time.Minute)
	c.Timeout = p.positive(t, "timeout", 2*time.Second)
	return c
}

// positive reads a duration that must be more than 0s.
func (p *parser) positive(t *tbl, k string, def time.Duration) time.Duration {
	d := t.duration(k, def)
	if d <= 0 {
		p.valueErr(t.key(k), "must be more than 0s")
		return def
	}
	return d
}

// ReadSecretFile reads a secret kept alone on one line of a file (the
// directory's and PostgreSQL's passwords); a final "\n" or "\r\n" is
// ignored. The error never quotes the content.
func ReadSecretFile(path string) (Secret, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Secret{}, fmt.Errorf("%s", errText(err))
	}
	data = bytes.TrimSuffix(data, []byte("\n"))
	data = bytes.TrimSuffix(data, []byte("\r"))
	if bytes.ContainsAny(data, "\r\n") {
		return Secret{}, fmt.Errorf("%s holds more than one line (want the password alone)", path)
	}
	return Secret{string(data)}, nil
}

// principalRE is a Kerberos service principal: SERVICE/host[@REALM].
var principalRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9-]*/[A-Za-z0-9.-]+(@[A-Za-z0-9._-]+)?$`)

func (p *parser) proxyAuthSection(t *tbl, allowed []netip.Prefix) ProxyAuth {
	t = p.orEmpty(t, "proxy.auth")
	defer t.finish()
	var c ProxyAuth
	c.Mode = t.enum("mode", "off", "off", "negotiate")
	c.Keytab = p.pathKey(t, "keytab", "")
	c.ServicePrincipal = t.str("service_principal", "")
	if c.ServicePrincipal != "" && !principalRE.MatchString(c.ServicePrincipal) {
		p.valueErr("proxy.auth.service_principal", "invalid service principal %q (want \"HTTP/proxy.example.local\")", c.ServicePrincipal)
	}
	if c.Mode == "negotiate" {
		if c.Keytab == "" {
			p.keyErr("proxy.auth", "keytab is required with mode = \"negotiate\"")
		}
		if c.ServicePrincipal == "" {
			p.keyErr("proxy.auth", "service_principal is required with mode = \"negotiate\"")
		}
	}
	c.Challenge = t.enum("challenge", "listed", "listed", "always")
	if c.Mode == "negotiate" && c.Challenge == "always" {
		p.warn("proxy.auth.challenge", `"always" asks every request for a user, tying all browsing from these clients to a person (Quebec's Law 25: collect only what is needed); "listed" (the default) asks only where who asks changes the verdict`)
	}
	var given bool
	if c.Clients, given = p.prefixes(t, "clients"); !given {
		c.Clients = append([]netip.Prefix(nil), allowed...)
	}
	for i, pf := range c.Clients {
		if !insideAny(pf, allowed) {
			p.valueErr(fmt.Sprintf("proxy.auth.clients[%d]", i), "%s is not inside proxy.allowed_clients: only clients that may use the proxy can be asked who they are", pf)
		}
	}
	if c.Mode == "negotiate" && given && len(c.Clients) == 0 {
		p.warn("proxy.auth.clients", "is empty: no client is ever asked who it is")
	}
	return c
}

// insideAny reports whether pf lies inside one of the prefixes.
func insideAny(pf netip.Prefix, in []netip.Prefix) bool {
	pf = unmapped(pf)
	for _, a := range in {
		if a = unmapped(a); a.Bits() <= pf.Bits() && a.Contains(pf.Addr()) {
			return true
		}
	}
	return false
}

// unmapped turns an IPv4-mapped prefix into the IPv4 prefix it covers.
func unmapped(pf netip.Prefix) netip.Prefix {
	if a := pf.Addr(); a.Is4In6() {
		return netip.PrefixFrom(a.Unmap(), max(0, pf.Bits()-96)).Masked()
	}
	return pf
}

func (p *parser) identitySection(t *tbl, ex *ExceptionsSection) IdentitySection {
	t = p.orEmpty(t, "identity")
	defer t.finish()
	var c IdentitySection
	c.BindingTTL = p.positive(t, "binding_ttl", 30*time.Minute)
	c.SharedAfter = t.integer("shared_after", 2, 1, 16)
	c.Log = t.enum("log", "pseudonym", "none", "pseudonym", "name")
	if c.Log == "name" {
		p.warn("identity.log", `"name" writes users' names in proxy decision lines; "pseudonym" (the default) writes a keyed hash that only `+"`balise identity reveal`"+` turns back into a name, and records who did it`)
	}
	def := p.resolve(filepath.Join("balise-data", "identity.key"))
	if ex != nil && ex.StateDir != "" {
		def = filepath.Join(ex.StateDir, "identity.key")
	}
	c.KeyFile = t.str("key_file", "")
	if c.KeyFile == "" {
		c.KeyFile = def
	} else {
		c.KeyFile = p.resolve(c.KeyFile)
	}
	return c
}

// checkIdentity checks what involves several identity sections.
func (p *parser) checkIdentity(c *Config) {
	if c.Proxy.Auth.Mode == "negotiate" && c.Directory == nil {
		p.warn("proxy.auth.mode", "no [directory]: authenticated users match only groups' users, never directory_groups")
	}
}
