package config

import "time"

// ExceptionsSection is [exceptions]. Its presence turns the exception
// register on: block pages show the request form.
type ExceptionsSection struct {
	// Store is the database file (default "balise-data/balise.db").
	Store string
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
	// NotifyTimeout bounds the webhook call (default 5s).
	NotifyTimeout time.Duration
	// PendingAlertAfter: requests pending longer count as overdue (default 24h).
	PendingAlertAfter time.Duration
	// Retention is how long decided requests are kept (default 365d).
	Retention time.Duration
}
