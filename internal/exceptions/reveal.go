package exceptions

import (
	"context"
	"errors"
	"strings"
	"time"
)

// EventIdentityReveal records that an officer turned a pseudonym of the
// decision logs back into a user name (`balise identity reveal`). Its
// line carries the actor, the reason, the pseudonym in Subject and the
// number of names found in Count (0: not found); never the name itself.
const EventIdentityReveal = "identity_reveal"

// Reveal is one re-identification, for RecordReveal.
type Reveal struct {
	// By is the officer who asked (required).
	By string
	// Reason says why, for the audit (required).
	Reason string
	// Pseudonym is the token that was looked up (required).
	Pseudonym string
	// Found is the number of names it turned out to stand for (0 or 1;
	// more only if two names ever collided).
	Found int
}

// CheckReveal validates a reveal's officer, reason and pseudonym before
// any name is looked up: a reveal that cannot be recorded is not made.
func CheckReveal(v Reveal) error {
	if err := checkOfficer(v.By); err != nil {
		return err
	}
	if strings.TrimSpace(v.Reason) == "" {
		return errors.New("--reason TEXT is required")
	}
	if err := checkText("reason", v.Reason, 1, MaxJustification, true); err != nil {
		return err
	}
	if strings.TrimSpace(v.Pseudonym) == "" {
		return errors.New("a pseudonym is required")
	}
	return checkText("pseudonym", v.Pseudonym, 1, MaxUser, false)
}

// RecordReveal appends an identity_reveal event to the audit chain; when
// it returns nil the line is fsynced and committed.
func (r *Register) RecordReveal(ctx context.Context, v Reveal) error {
	if err := CheckReveal(v); err != nil {
		return err
	}
	ev := Event{Event: EventIdentityReveal, Actor: v.By, Reason: v.Reason, Subject: v.Pseudonym, Count: intp(max(0, v.Found))}
	return r.update(ctx, func(Tx, time.Time) ([]Event, error) { return []Event{ev}, nil })
}
