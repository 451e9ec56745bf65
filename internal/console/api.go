package console

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/balise-net/balise/internal/exceptions"
)

// requestJSON is a request as `balise exceptions list --json` shows it
// (exceptions.RequestJSON), marked when overdue, with its history on GET
// /api/v1/requests/{id}.
type requestJSON struct {
	exceptions.RequestJSON
	Overdue bool        `json:"overdue,omitempty"`
	History []eventJSON `json:"history,omitempty"`
}

type eventJSON struct {
	Seq      int64  `json:"seq"`
	Time     string `json:"time"`
	Event    string `json:"event"`
	Actor    string `json:"actor,omitempty"`
	Subject  string `json:"subject,omitempty"`
	NotAfter string `json:"not_after,omitempty"`
	Reason   string `json:"reason,omitempty"`
	Note     string `json:"note,omitempty"`
}

func (c *Console) toJSON(q exceptions.Request) requestJSON {
	return requestJSON{RequestJSON: q.JSON(), Overdue: c.overdue(q)}
}

func (c *Console) overdue(q exceptions.Request) bool {
	return q.Status == exceptions.StatusPending && c.now().Sub(q.Created) > c.reg.PendingAlertAfter()
}

// query is a search of the register.
type query struct {
	Status, Service, Text, Requester, Client string
	Since, Until                             string // YYYY-MM-DD (or RFC 3339)
	since, until                             time.Time
}

func (c *Console) parseQuery(r *http.Request) (query, error) {
	v := r.URL.Query()
	q := query{Status: v.Get("status"), Service: strings.TrimSpace(v.Get("service")), Text: strings.TrimSpace(v.Get("q")),
		Requester: strings.TrimSpace(v.Get("requester")), Client: strings.TrimSpace(v.Get("client")),
		Since: strings.TrimSpace(v.Get("since")), Until: strings.TrimSpace(v.Get("until"))}
	if _, err := exceptions.ParseStatus(q.Status); err != nil {
		return q, err
	}
	var err error
	if q.since, err = c.parseDate(q.Since, false); err != nil {
		return q, fmt.Errorf("since: %v", err)
	}
	if q.until, err = c.parseDate(q.Until, true); err != nil {
		return q, fmt.Errorf("until: %v", err)
	}
	return q, nil
}

// parseDate reads YYYY-MM-DD in the console's zone (the end of that day
// when end) or RFC 3339.
func (c *Console) parseDate(s string, end bool) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.ParseInLocation("2006-01-02", s, c.opt.Location); err == nil {
		if end {
			t = t.AddDate(0, 0, 1)
		}
		return t, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("%q is not a date (YYYY-MM-DD)", s)
}

func containsFold(s, sub string) bool {
	return strings.Contains(strings.ToLower(s), strings.ToLower(sub))
}

// search returns the requests matching q, oldest first.
func (c *Console) search(ctx context.Context, q query) ([]exceptions.Request, error) {
	st, _ := exceptions.ParseStatus(q.Status)
	all, err := c.reg.List(ctx, st)
	if err != nil {
		return nil, err
	}
	out := all[:0]
	for _, r := range all {
		switch {
		case !q.since.IsZero() && r.Created.Before(q.since):
		case !q.until.IsZero() && !r.Created.Before(q.until):
		case q.Service != "" && !containsService(r.Services, q.Service):
		case q.Requester != "" && !containsFold(r.Name, q.Requester) && !containsFold(r.User, q.Requester):
		case q.Client != "" && !strings.HasPrefix(r.Client.String(), q.Client):
		case q.Text != "" && !containsFold(strings.Join([]string{r.ID, r.Name, r.Contact, r.User, r.Host, r.Justification,
			r.Note, r.Client.String(), strings.Join(r.Services, " "), r.DecidedBy}, "\n"), q.Text):
		default:
			out = append(out, r)
		}
	}
	return out, nil
}

func containsService(ss []string, s string) bool {
	for _, x := range ss {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}

func (c *Console) apiList(w http.ResponseWriter, r *http.Request, s session) {
	q, err := c.parseQuery(r)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{Error: "bad_request", Message: err.Error()})
		return
	}
	reqs, err := c.search(r.Context(), q)
	if err != nil {
		c.storeError(w, r, err)
		return
	}
	out := make([]requestJSON, 0, len(reqs))
	for _, q := range reqs {
		out = append(out, c.toJSON(q))
	}
	writeJSON(w, http.StatusOK, map[string]any{"requests": out})
}

func (c *Console) withHistory(ctx context.Context, q exceptions.Request) requestJSON {
	out := c.toJSON(q)
	events, err := c.reg.History(ctx, q.ID)
	if err != nil {
		c.log.Warn("console: history unreadable", "id", q.ID, "error", err)
	}
	for _, e := range events {
		out.History = append(out.History, eventJSON{Seq: e.Seq, Time: e.Time, Event: e.Event, Actor: e.Actor,
			Subject: e.Subject, NotAfter: e.NotAfter, Reason: e.Reason, Note: e.Note})
	}
	return out
}

func (c *Console) apiGet(w http.ResponseWriter, r *http.Request, s session) {
	q, err := c.reg.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		c.storeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, c.withHistory(r.Context(), q))
}

// storeError answers a register error.
func (c *Console) storeError(w http.ResponseWriter, r *http.Request, err error) {
	var fe *exceptions.FieldError
	switch {
	case errors.Is(err, exceptions.ErrNotFound):
		c.refuse(w, r, http.StatusNotFound, "not_found", "Aucune demande ne porte ce numéro.", "No request has this number.")
	case errors.Is(err, exceptions.ErrState):
		c.refuse(w, r, http.StatusConflict, "conflict", "L'état de la demande ne permet plus cette opération (elle a peut-être été décidée entre-temps) : "+err.Error(),
			"The request's status no longer allows this (it may have been decided meanwhile): "+err.Error())
	case errors.Is(err, exceptions.ErrUnavailable), errors.Is(err, exceptions.ErrAudit):
		c.log.Error("console: register unavailable", "error", err)
		c.refuse(w, r, http.StatusServiceUnavailable, "unavailable", "Le registre des exceptions est indisponible; rien n'a été enregistré. Réessayez plus tard.",
			"The exception register is unavailable; nothing was recorded. Try again later.")
	case errors.As(err, &fe):
		c.refuse(w, r, http.StatusBadRequest, "bad_request", fe.Field+" : "+fe.MsgFR, fe.Field+": "+fe.Msg)
	case errors.Is(err, exceptions.ErrNoDirectory):
		c.refuse(w, r, http.StatusBadRequest, "bad_request", "Cette demande n'indique pas d'utilisateur : accordez l'exception au poste.",
			"This request records no user: grant the workstation.")
	default:
		c.refuse(w, r, http.StatusBadRequest, "bad_request", err.Error(), err.Error())
	}
}

// decision is the body of approve, deny, revoke and extend.
type decision struct {
	Duration string `json:"duration"`
	Until    string `json:"until"`
	Note     string `json:"note"`
	Subject  string `json:"subject"`
	Reason   string `json:"reason"`
}

func (c *Console) readDecision(w http.ResponseWriter, r *http.Request) (decision, error) {
	var d decision
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
		dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&d); err != nil {
			return d, fmt.Errorf("invalid JSON body: %v", err)
		}
		return d, nil
	}
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		return d, errors.New("invalid form")
	}
	f := r.PostForm
	d = decision{Duration: f.Get("duration"), Until: f.Get("until"), Note: f.Get("note"), Subject: f.Get("subject"), Reason: f.Get("reason")}
	if d.Until != "" {
		d.Duration = "" // the form's end, when typed, wins over its duration menu
	}
	return d, nil
}

// when reads a decision's duration or until.
func (c *Console) when(d decision) (time.Duration, time.Time, error) {
	switch {
	case d.Until != "" && d.Duration != "":
		return 0, time.Time{}, errors.New("give a duration or an end, not both")
	case d.Until != "":
		if t, err := time.Parse(time.RFC3339, d.Until); err == nil {
			return 0, t, nil
		}
		if t, err := time.ParseInLocation("2006-01-02T15:04", d.Until, c.opt.Location); err == nil {
			return 0, t, nil
		}
		return 0, time.Time{}, fmt.Errorf("until: %q is not a time (2026-11-20T17:00)", d.Until)
	case d.Duration != "":
		du, err := exceptions.ParseDuration(d.Duration)
		if err != nil || du <= 0 {
			return 0, time.Time{}, fmt.Errorf("duration: %q is not a duration (4h, 7d)", d.Duration)
		}
		return du, time.Time{}, nil
	}
	return 0, time.Time{}, errors.New("give a duration or an end")
}

// decide answers POST /api/v1/requests/{id}/{action}, from scripts and
// from the request page's forms.
func (c *Console) decide(w http.ResponseWriter, r *http.Request, s session) {
	id, action := r.PathValue("id"), r.PathValue("action")
	switch action {
	case "approve", "deny", "revoke", "extend":
	default:
		c.refuse(w, r, http.StatusNotFound, "not_found", "Opération inconnue.", "Unknown operation.")
		return
	}
	if s.role != RoleOfficer {
		c.log.Warn("console: decision refused: not an officer", "user", s.user, "role", s.role, "id", id, "action", action)
		c.refuse(w, r, http.StatusForbidden, "forbidden", "Votre rôle (vérification) ne permet pas de décider des demandes.",
			"Your role (auditor) does not allow deciding requests.")
		return
	}
	ctx := r.Context()
	q, err := c.reg.Get(ctx, id)
	if err != nil {
		c.storeError(w, r, err)
		return
	}
	if sameUser(q.User, s.user) {
		c.log.Warn("console: decision refused: own request", "user", s.user, "id", id, "action", action)
		c.refuse(w, r, http.StatusForbidden, "own_request", "Vous ne pouvez pas décider de votre propre demande : un autre responsable doit s'en charger.",
			"You cannot decide your own request: another officer must.")
		return
	}
	d, err := c.readDecision(w, r)
	if err != nil {
		c.refuse(w, r, http.StatusBadRequest, "bad_request", err.Error(), err.Error())
		return
	}
	if (action == "deny" || action == "revoke") && strings.TrimSpace(d.Reason) == "" {
		c.refuse(w, r, http.StatusBadRequest, "bad_request", "Le motif est obligatoire.", "A reason is required.")
		return
	}
	// A decision being recorded finishes even if the browser goes away.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
	defer cancel()
	switch action {
	case "approve":
		var du time.Duration
		var until time.Time
		if du, until, err = c.when(d); err == nil {
			q, err = c.reg.Approve(ctx, id, exceptions.Approval{By: s.user, For: du, Until: until, Note: d.Note, Subject: d.Subject})
		}
	case "extend":
		var du time.Duration
		var until time.Time
		if du, until, err = c.when(d); err == nil {
			q, err = c.reg.Extend(ctx, id, exceptions.Extension{By: s.user, For: du, Until: until, Note: d.Note})
		}
	case "deny":
		q, err = c.reg.Deny(ctx, id, s.user, d.Reason)
	case "revoke":
		q, err = c.reg.Revoke(ctx, id, s.user, d.Reason)
	}
	if err != nil {
		c.storeError(w, r, err)
		return
	}
	c.log.Info("console: decision", "user", s.user, "id", id, "action", action)
	if wantsJSON(r) {
		writeJSON(w, http.StatusOK, c.toJSON(q))
		return
	}
	http.Redirect(w, r, "/requests/"+q.ID+"?done="+action, http.StatusSeeOther)
}
