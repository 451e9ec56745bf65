package exceptions

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// EventExtended records that an officer moved an active grant's end.
const EventExtended = "extended"

// Extension is the officer's extension of an approved request's grant.
type Extension struct {
	// By is the officer's name. Required.
	By string
	// For moves the grant's end that much later; Until sets it. Exactly
	// one; the new end must be after the current one and at most MaxGrant
	// from now.
	For   time.Duration
	Until time.Time
	// Note is an optional note kept with the decision.
	Note string
}

// Extend moves the end of an approved request's active grant. It fails
// with ErrState when the request is not approved or its grant has ended.
func (r *Register) Extend(ctx context.Context, id string, x Extension) (Request, error) {
	if err := checkOfficer(x.By); err != nil {
		return Request{}, err
	}
	if err := checkText("note", x.Note, 0, MaxJustification, true); err != nil {
		return Request{}, err
	}
	if (x.For == 0) == x.Until.IsZero() || x.For < 0 {
		return Request{}, errors.New("give exactly one of --for DURATION and --until TIME")
	}
	var out Request
	err := r.update(ctx, func(tx Tx, now time.Time) ([]Event, error) {
		q, err := tx.Request(id)
		if err != nil {
			return nil, err
		}
		if q.Status != StatusApproved || q.Grant == nil || !now.Before(q.Grant.NotAfter) {
			return nil, fmt.Errorf("%w: request %s is %s; only approved requests whose grant has not ended can be extended", ErrState, id, q.Status)
		}
		end := x.Until.UTC()
		if x.For != 0 {
			end = q.Grant.NotAfter.Add(x.For)
		}
		if !end.After(q.Grant.NotAfter) {
			return nil, fmt.Errorf("the new end %s is not after the current end %s", formatTime(end), formatTime(q.Grant.NotAfter))
		}
		if end.Sub(now) > MaxGrant {
			return nil, fmt.Errorf("a grant lasts at most %s", formatDuration(MaxGrant))
		}
		q.Grant.NotAfter = end
		if x.Note != "" {
			q.Note = x.Note
		}
		if err := tx.PutRequest(q); err != nil {
			return nil, err
		}
		out = q
		return []Event{{
			Event: EventExtended, ID: q.ID, Client: q.Client.String(), Services: q.Services,
			NotBefore: formatTime(q.Grant.NotBefore), NotAfter: formatTime(end), Actor: x.By, Note: x.Note,
		}}, nil
	})
	if err == nil {
		r.hooks.call(EventExtended, out)
	}
	return out, err
}

// History returns the audit events of request id, oldest first (the
// request_received line, decisions, extensions, expiry).
func (r *Register) History(ctx context.Context, id string) ([]Event, error) {
	var out []Event
	err := r.eachEvent(ctx, func(_ int, e Event) error {
		if e.ID == id {
			out = append(out, e)
		}
		return nil
	})
	return out, err
}

// OnChange registers fn, called after this process records a new request
// (EventReceived) or a decision (EventApproved, EventDenied,
// EventRevoked, EventExtended), with the request as stored. fn runs on
// the caller's goroutine: it must not block (queue the work).
func (r *Register) OnChange(fn func(event string, q Request)) {
	r.hooks.mu.Lock()
	r.hooks.fns = append(r.hooks.fns, fn)
	r.hooks.mu.Unlock()
}

// PendingAlertAfter is the age past which a pending request is overdue.
func (r *Register) PendingAlertAfter() time.Duration { return r.opt.PendingAlertAfter }

// Now returns the register's clock.
func (r *Register) Now() time.Time { return r.now() }

// hooks are the OnChange functions.
type hooks struct {
	mu  sync.Mutex
	fns []func(string, Request)
}

func (h *hooks) call(event string, q Request) {
	h.mu.Lock()
	fns := h.fns
	h.mu.Unlock()
	for _, fn := range fns {
		fn(event, q)
	}
}
