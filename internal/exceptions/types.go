package exceptions

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/netip"
	"strings"
	"time"

	"github.com/balise-net/balise/internal/policy"
)

// Status is where a request stands.
type Status string

// The statuses of a request. A pending request is approved or denied by the
// officer; an approved request's grant is revoked by the officer or expires
// at its end.
const (
	StatusPending  Status = "pending"
	StatusApproved Status = "approved"
	StatusDenied   Status = "denied"
	StatusRevoked  Status = "revoked"
	StatusExpired  Status = "expired"
)

// ParseStatus parses a status name; "all" and "" return "" (every status).
func ParseStatus(s string) (Status, error) {
	switch st := Status(s); st {
	case StatusPending, StatusApproved, StatusDenied, StatusRevoked, StatusExpired:
		return st, nil
	case "all", "":
		return "", nil
	}
	return "", errors.New("unknown status " + quote(s) + " (pending, approved, denied, revoked, expired or all)")
}

// Request is one exception request and, once decided, its decision.
type Request struct {
	// ID is the request id ("EX-0042"), used by every command.
	ID string
	// Created is when the request was received.
	Created time.Time
	// Client is the requester's workstation address.
	Client netip.Addr
	// User is the requester's user name when a directory source knows it.
	User string
	// Name and Contact are what the requester typed in the form.
	Name, Contact string
	// Services are the service ids asked for.
	Services []string
	// Host is the host name the requester was blocked on.
	Host string
	// Justification is the requester's reason.
	Justification string
	// Duration is the requested duration (one of the configured choices).
	Duration time.Duration
	// Lang is the language of the form ("fr" or "en").
	Lang string

	Status Status
	// DecidedBy and Decided record the officer's decision (approve or
	// deny), Note its note or reason.
	DecidedBy string
	Decided   time.Time
	Note      string
	// Grant is set once the request was approved.
	Grant *Grant
}

// Digest is the hex SHA-256 of the request's content as received: the log's
// request_received line carries it so that Verify can tell whether the
// stored request was edited.
func (r *Request) Digest() string {
	h := sha256.New()
	field := func(s string) {
		var n [8]byte
		l := len(s)
		for i := range n {
			n[7-i] = byte(l >> (8 * i))
		}
		h.Write(n[:])
		h.Write([]byte(s))
	}
	field(r.ID)
	field(r.Created.UTC().Format(time.RFC3339Nano))
	field(r.Client.String())
	field(r.User)
	field(r.Name)
	field(r.Contact)
	field(strings.Join(r.Services, ","))
	field(r.Host)
	field(r.Justification)
	field(r.Duration.String())
	return hex.EncodeToString(h.Sum(nil))
}

// Grant is the exception an approval creates.
type Grant struct {
	// Subject is the client address or prefix the grant applies to
	// (invalid when User is set).
	Subject netip.Prefix
	// User is the user the grant applies to ("" for a client grant).
	User string
	// Services are the granted service ids.
	Services []string
	// NotBefore and NotAfter bound the grant: [NotBefore, NotAfter).
	NotBefore, NotAfter time.Time
	// GrantedBy is the officer who approved; RequestID the source request.
	GrantedBy string
	RequestID string
	// Revoked and RevokedBy are set when the officer revoked the grant.
	Revoked   time.Time
	RevokedBy string
}

// Active reports whether the grant applies at now.
func (g *Grant) Active(now time.Time) bool {
	return g.Revoked.IsZero() && !now.Before(g.NotBefore) && now.Before(g.NotAfter)
}

// Policy converts the grant for the policy engine; its ID is the request id.
func (g *Grant) Policy() policy.Grant {
	return policy.Grant{
		ID:        g.RequestID,
		Subject:   g.Subject,
		User:      g.User,
		Services:  append([]string(nil), g.Services...),
		NotBefore: g.NotBefore,
		NotAfter:  g.NotAfter,
	}
}

// Head is the audit log's chain head as recorded in the store: the last
// committed line's sequence number and hash, and where that line sits in
// the file.
type Head struct {
	// Seq is the last line's seq (0: empty log).
	Seq int64
	// Hash is the SHA-256 of the last line (hex; zeros for an empty log).
	Hash string
	// Start and End are the byte offsets of the last line and of the end
	// of the log (End includes the newline).
	Start, End int64
}

// Filter selects requests.
type Filter struct {
	// Status selects one status ("": every status).
	Status Status
	// Client selects one client (invalid: every client).
	Client netip.Addr
	// Since selects requests created at or after it (zero: all).
	Since time.Time
	// Before selects requests created before it (zero: all).
	Before time.Time
}

// Errors the register returns; test them with errors.Is.
var (
	// ErrNotFound: no request has this id.
	ErrNotFound = errors.New("no such request")
	// ErrRateLimited: the requester reached a per-client limit.
	ErrRateLimited = errors.New("too many requests from this workstation")
	// ErrState: the request's status does not allow the operation.
	ErrState = errors.New("request status does not allow this")
	// ErrAudit: the audit log cannot be written safely.
	ErrAudit = errors.New("audit log")
	// ErrNoDirectory: a grant for a user needs a directory source.
	ErrNoDirectory = errors.New("grants for a user need a directory source: this request records no user (it did not come over an authenticated connection); use --subject client")
)

// FieldError reports an invalid form field.
type FieldError struct {
	Field string // form field name
	Msg   string // English message
	MsgFR string // French message
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// LimitError is an ErrRateLimited with the limit that was reached.
type LimitError struct {
	// Kind is "pending" or "day".
	Kind  string
	Limit int
}

func (e *LimitError) Error() string {
	if e.Kind == "pending" {
		return "too many pending requests from this workstation"
	}
	return "too many requests from this workstation today"
}

// Is makes errors.Is(err, ErrRateLimited) true.
func (e *LimitError) Is(target error) bool { return target == ErrRateLimited }

func quote(s string) string { return "\"" + s + "\"" }
