package exceptions

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Approval is the officer's approval of a request.
type Approval struct {
	// By is the officer's name. Required.
	By string
	// For is the grant's length from now; Until its end. Exactly one.
	For   time.Duration
	Until time.Time
	// Note is an optional note kept with the decision.
	Note string
	// Subject is "client" (default: the requester's address) or "user"
	// (the person who made the request, wherever they authenticate; only
	// for a request made over an authenticated connection, else
	// ErrNoDirectory).
	Subject string
}

// MaxGrant bounds a grant's length.
const MaxGrant = 366 * 24 * time.Hour

func checkOfficer(by string) error {
	if strings.TrimSpace(by) == "" {
		return errors.New("--by NAME is required")
	}
	return checkText("by", by, 1, MaxName, false)
}

// Approve approves a pending request and creates its grant.
func (r *Register) Approve(ctx context.Context, id string, a Approval) (Request, error) {
	if err := checkOfficer(a.By); err != nil {
		return Request{}, err
	}
	if err := checkText("note", a.Note, 0, MaxJustification, true); err != nil {
		return Request{}, err
	}
	switch a.Subject {
	case "", "client":
	case "user":
	default:
		return Request{}, fmt.Errorf("unknown subject %q (client or user)", a.Subject)
	}
	if (a.For == 0) == a.Until.IsZero() {
		return Request{}, errors.New("give exactly one of --for DURATION and --until TIME")
	}
	var out Request
	err := r.update(ctx, func(tx Tx, now time.Time) ([]Event, error) {
		q, err := tx.Request(id)
		if err != nil {
			return nil, err
		}
		if q.Status != StatusPending {
			return nil, fmt.Errorf("%w: request %s is %s; only pending requests can be approved", ErrState, id, q.Status)
		}
		end := a.Until
		if a.For != 0 {
			end = now.Add(a.For)
		}
		if !end.After(now) {
			return nil, fmt.Errorf("the grant would end at %s, which is not in the future", formatTime(end))
		}
		if end.Sub(now) > MaxGrant {
			return nil, fmt.Errorf("a grant lasts at most %s", formatDuration(MaxGrant))
		}
		q.Grant = &Grant{
			Services:  q.Services,
			NotBefore: now,
			NotAfter:  end.UTC(),
			GrantedBy: a.By,
			RequestID: q.ID,
		}
		subject := ""
		if a.Subject == "user" {
			if q.User == "" {
				return nil, fmt.Errorf("request %s: %w", id, ErrNoDirectory)
			}
			q.Grant.User, subject = q.User, "user:"+q.User
		} else {
			c := q.Client.Unmap()
			q.Grant.Subject = netip.PrefixFrom(c, c.BitLen())
			subject = q.Grant.Subject.String()
		}
		q.Status, q.DecidedBy, q.Decided, q.Note = StatusApproved, a.By, now, a.Note
		if err := tx.PutRequest(q); err != nil {
			return nil, err
		}
		out = q
		return []Event{{
			Event: EventApproved, ID: q.ID, Client: q.Client.String(), Services: q.Services,
			Subject: subject, NotBefore: formatTime(q.Grant.NotBefore),
			NotAfter: formatTime(q.Grant.NotAfter), Actor: a.By, Note: a.Note,
		}}, nil
	})
	if err == nil {
		r.hooks.call(EventApproved, out)
	}
	return out, err
}

// Deny denies a pending request.
func (r *Register) Deny(ctx context.Context, id, by, reason string) (Request, error) {
	return r.close(ctx, id, by, reason, StatusPending, StatusDenied, EventDenied)
}

// Revoke ends an approved request's grant now.
func (r *Register) Revoke(ctx context.Context, id, by, reason string) (Request, error) {
	return r.close(ctx, id, by, reason, StatusApproved, StatusRevoked, EventRevoked)
}

func (r *Register) close(ctx context.Context, id, by, reason string, from, to Status, event string) (Request, error) {
	if err := checkOfficer(by); err != nil {
		return Request{}, err
	}
	if strings.TrimSpace(reason) == "" {
		return Request{}, errors.New("--reason TEXT is required")
	}
	if err := checkText("reason", reason, 1, MaxJustification, true); err != nil {
		return Request{}, err
	}
	var out Request
	err := r.update(ctx, func(tx Tx, now time.Time) ([]Event, error) {
		q, err := tx.Request(id)
		if err != nil {
			return nil, err
		}
		if q.Status != from {
			verb := map[string]string{EventDenied: "denied", EventRevoked: "revoked"}[event]
			return nil, fmt.Errorf("%w: request %s is %s; only %s requests can be %s", ErrState, id, q.Status, from, verb)
		}
		q.Status = to
		if to == StatusRevoked {
			q.Grant.Revoked, q.Grant.RevokedBy = now, by
		} else {
			q.DecidedBy, q.Decided = by, now
		}
		q.Note = reason
		if err := tx.PutRequest(q); err != nil {
			return nil, err
		}
		out = q
		return []Event{{Event: event, ID: q.ID, Client: q.Client.String(), Services: q.Services, Actor: by, Reason: reason}}, nil
	})
	if err == nil {
		r.hooks.call(event, out)
	}
	return out, err
}

// Stats are the register's gauges.
type Stats struct {
	Pending       int
	OldestPending time.Time // zero when nothing is pending
	// Overdue counts pending requests older than PendingAlertAfter.
	Overdue      int
	ActiveGrants int
}

// Purge deletes decided requests created before now-olderThan (pending
// requests and unexpired grants stay) and records one purged event naming
// by, even when nothing was deleted.
func (r *Register) Purge(ctx context.Context, olderThan time.Duration, by string) ([]string, error) {
	if err := checkOfficer(by); err != nil {
		return nil, err
	}
	return r.purge(ctx, olderThan, by, true)
}

// PurgeExpired is the server's retention task: Purge by "balise
// (retention)", recorded only when it deleted something. On a store shared
// by several nodes only the leader purges; the others return nil, nil.
func (r *Register) PurgeExpired(ctx context.Context, olderThan time.Duration) ([]string, error) {
	if !r.leader(ctx) {
		return nil, nil
	}
	return r.purge(ctx, olderThan, "balise (retention)", false)
}

func (r *Register) purge(ctx context.Context, olderThan time.Duration, by string, always bool) ([]string, error) {
	if olderThan <= 0 {
		return nil, errors.New("--older-than must be positive")
	}
	var ids []string
	err := r.update(ctx, func(tx Tx, now time.Time) ([]Event, error) {
		ids = nil
		before := now.Add(-olderThan)
		old, err := tx.Requests(Filter{Before: before})
		if err != nil {
			return nil, err
		}
		for _, q := range old {
			if q.Status == StatusPending || (q.Status == StatusApproved && q.Grant != nil && now.Before(q.Grant.NotAfter)) {
				continue
			}
			if err := tx.DeleteRequest(q.ID); err != nil {
				return nil, err
			}
			ids = append(ids, q.ID)
		}
		if len(ids) == 0 && !always {
			return nil, nil
		}
		return []Event{{Event: EventPurged, Actor: by, Before: formatTime(before), Count: intp(len(ids)), IDs: ids}}, nil
	})
	return ids, err
}

func intp(n int) *int { return &n }
