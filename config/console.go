package config

import (
	"fmt"
	"net"
	"net/mail"
	"net/netip"
	"net/url"
	"time"
)

// ConsoleSection is [console]: the officer's web console, on a listener
// of its own. Absent (nil in Config): no console.
type ConsoleSection struct {
	// Listen are the console's addresses (default "127.0.0.1:9465").
	Listen []string
	// TLSCert and TLSKey are the console's certificate and key (PEM),
	// resolved from the configuration's directory. Required unless every
	// Listen address is loopback.
	TLSCert, TLSKey string
	// Officers are the directory users or groups (a name matches either,
	// case-insensitively; groups by name or DN) who decide requests
	// (default ["RSI"]).
	Officers []string
	// Auditors are the users or groups who read, search, report and
	// export only (default none).
	Auditors []string
	// AccountsFile holds local accounts (argon2id), resolved from the
	// configuration's directory ("" = none). Managed with `balise console
	// passwd`.
	AccountsFile string
	// SessionIdle ends a session unused for that long (default 30m).
	SessionIdle time.Duration
	// SMTPURL is the mail server for notifications: smtp://host:port
	// (STARTTLS when the server offers it) or smtps://host:port ("" = no
	// e-mail).
	SMTPURL string
	// NotifyTo are the addresses told of new requests.
	NotifyTo []string
}

// Loopback reports whether every listen address is on loopback (where
// the console may run without TLS).
func (c *ConsoleSection) Loopback() bool {
	for _, a := range c.Listen {
		host, _, err := net.SplitHostPort(a)
		if err != nil {
			return false
		}
		if host == "localhost" {
			continue
		}
		ip, err := netip.ParseAddr(host)
		if err != nil || !ip.IsLoopback() {
			return false
		}
	}
	return true
}

func (p *parser) consoleSection(t *tbl, c *Config) *ConsoleSection {
	if t == nil {
		return nil
	}
	defer t.finish()
	s := &ConsoleSection{}
	s.Listen = p.listen(t, "listen", []string{"127.0.0.1:9465"})
	if len(s.Listen) == 0 {
		p.valueErr("console.listen", "at least one address is required")
	}
	s.TLSCert = p.pathKey(t, "tls_cert", "")
	s.TLSKey = p.pathKey(t, "tls_key", "")
	switch {
	case (s.TLSCert == "") != (s.TLSKey == ""):
		p.keyErr("console", "tls_cert and tls_key go together")
	case s.TLSCert == "" && !s.Loopback():
		p.valueErr("console.listen", "tls_cert and tls_key are required when console.listen reaches beyond loopback: officers' passwords and sessions must not cross the network in clear text")
	}
	var ok bool
	if s.Officers, ok = t.strs("officers"); !ok {
		s.Officers = []string{"RSI"}
	}
	s.Auditors, _ = t.strs("auditors")
	s.AccountsFile = p.pathKey(t, "accounts_file", "")
	s.SessionIdle = p.positive(t, "session_idle", 30*time.Minute)
	if s.SessionIdle > 24*time.Hour {
		p.valueErr("console.session_idle", "at most 24h")
		s.SessionIdle = 30 * time.Minute
	}
	s.SMTPURL = t.str("smtp_url", "")
	if s.SMTPURL != "" {
		u, err := url.Parse(s.SMTPURL)
		switch {
		case err != nil || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "":
			p.valueErr("console.smtp_url", "invalid URL %q (want smtp://host:port or smtps://host:port)", s.SMTPURL)
		case u.Scheme != "smtp" && u.Scheme != "smtps":
			p.valueErr("console.smtp_url", "invalid URL %q (want smtp://host:port or smtps://host:port)", s.SMTPURL)
		case u.User != nil:
			p.valueErr("console.smtp_url", "the URL must not hold credentials")
		}
	}
	s.NotifyTo, _ = t.strs("notify_to")
	for i, a := range s.NotifyTo {
		if addr, err := mail.ParseAddress(a); err != nil || addr.Name != "" {
			p.valueErr(fmt.Sprintf("console.notify_to[%d]", i), "invalid e-mail address %q", a)
		}
	}
	if len(s.NotifyTo) > 0 && s.SMTPURL == "" {
		p.warn("console.notify_to", "no console.smtp_url: nobody is notified")
	}
	if c.Exceptions == nil {
		p.keyErr("console", "needs an [exceptions] table: the console decides the register's requests")
	}
	if c.Directory == nil && s.AccountsFile == "" {
		p.keyErr("console", "nobody could sign in: configure [directory] or console.accounts_file")
	}
	if len(s.Officers) == 0 && len(s.Auditors) == 0 && s.AccountsFile == "" {
		p.warn("console.officers", "no officers nor auditors: nobody may sign in")
	}
	return s
}
