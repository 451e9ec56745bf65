package config

import (
	"net"
	"net/netip"
	"net/url"
	"strings"
	"time"
)

// ExceptionsSection is [exceptions]. Its presence turns the exception
// register on: block pages show the request form.
type ExceptionsSection struct {
	// Store is the database file (default "balise-data/balise.db"), or
	// the URL of a PostgreSQL database shared by several nodes
	// ("postgres://balise@db.example:5432/balise?sslmode=verify-full"),
	// which holds no password (see StorePasswordFile).
	Store string
	// StorePasswordFile holds the PostgreSQL role's password on one line
	// (a final newline is ignored). Empty: no password (peer or
	// certificate authentication).
	StorePasswordFile string
	// AuditLog is the hash-chained audit log (default
	// "balise-data/exceptions.jsonl").
	AuditLog string
	// StateDir holds the portal's secrets, such as its CSRF key (default
	// "balise-data").
	StateDir string
	// Durations are the durations a requester may choose from (default
	// 1h, 4h, 1d, 7d, 30d).
	Durations []time.Duration
	// MaxPendingPerClient bounds pending requests per client (default 3).
	MaxPendingPerClient int
	// MaxPerDayPerClient bounds requests per client per day (default 10).
	MaxPerDayPerClient int
	// GrantPoll is how often front-ends reload grants (default 1s).
	GrantPoll time.Duration
	// NotifyURL receives a webhook POST for each new request ("" = none).
	NotifyURL string
	// NotifyFormat is the webhook body: "json" (default), "slack" or
	// "teams".
	NotifyFormat string
	// NotifyTimeout bounds the webhook call (default 5s).
	NotifyTimeout time.Duration
	// PendingAlertAfter: requests pending longer count as overdue (default 24h).
	PendingAlertAfter time.Duration
	// Retention is how long decided requests are kept (default 365d).
	Retention time.Duration
}

// Postgres reports whether Store is a PostgreSQL URL.
func (e *ExceptionsSection) Postgres() bool { return IsPostgresURL(e.Store) }

// IsPostgresURL reports whether s is a PostgreSQL URL (postgres:// or
// postgresql://) rather than a file path.
func IsPostgresURL(s string) bool {
	return strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://")
}

// checkStoreURL checks a PostgreSQL store URL: it must hold no password,
// and TLS weaker than verify-full to a host beyond loopback is a warning.
func (p *parser) checkStoreURL(s string) {
	const key = "exceptions.store"
	u, err := url.Parse(s)
	if err != nil {
		p.valueErr(key, "invalid PostgreSQL URL (want postgres://user@host:port/database?sslmode=verify-full)")
		return
	}
	if _, ok := u.User.Password(); ok {
		p.valueErr(key, "the URL must not hold a password: put it in exceptions.store_password_file")
		return
	}
	if u.Query().Has("password") {
		p.valueErr(key, "the URL must not hold a password: put it in exceptions.store_password_file")
		return
	}
	hosts := strings.Split(u.Host, ",")
	if h := u.Query().Get("host"); h != "" {
		hosts = strings.Split(h, ",")
	}
	local := true
	for _, h := range hosts {
		if strings.HasPrefix(h, "/") || h == "" {
			continue // a unix socket (or libpq's default, a socket too)
		}
		if host, _, err := net.SplitHostPort(h); err == nil {
			h = host
		}
		h = strings.Trim(h, "[]")
		if a, err := netip.ParseAddr(h); (err != nil || !a.IsLoopback()) && h != "localhost" {
			local = false
		}
	}
	if mode := u.Query().Get("sslmode"); !local && mode != "verify-full" {
		if mode == "" {
			mode = "prefer (the default)"
		}
		p.warn(key, "sslmode=%s to a host beyond loopback: the register's traffic can be read or altered on the way; use sslmode=verify-full", mode)
	}
}
