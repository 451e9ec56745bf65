package exceptions

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"html/template"
	"net/http"
	"strings"
	"time"
)

// StatusPrefix is the path of the requester's status pages:
// StatusPrefix + token.
const StatusPrefix = "/.balise/status/"

// StatusKeep is how long after a request was denied, revoked or expired
// its status page still answers.
const StatusKeep = 7 * 24 * time.Hour

// metaTx is a transaction of a store with a key-value meta table (SQLite
// and PostgreSQL both have one).
type metaTx interface {
	meta(key string) (string, error)
	setMeta(key, value string) error
}

func statusKey(token string) string {
	sum := sha256.Sum256([]byte(token))
	return "status_token:" + hex.EncodeToString(sum[:])
}

// IssueStatusToken returns a new capability token for request id's status
// page: 256 random bits, of which the store keeps only the SHA-256. The
// token works while the request is pending, while its grant lasts, and
// StatusKeep after it was denied, revoked or expired.
func (r *Register) IssueStatusToken(ctx context.Context, id string) (string, error) {
	var b [32]byte
	rand.Read(b[:])
	token := base64.RawURLEncoding.EncodeToString(b[:])
	err := r.update(ctx, func(tx Tx, _ time.Time) ([]Event, error) {
		mt, ok := tx.(metaTx)
		if !ok {
			return nil, errors.New("exceptions: this store keeps no status tokens")
		}
		if _, err := tx.Request(id); err != nil {
			return nil, err
		}
		return nil, mt.setMeta(statusKey(token), id)
	})
	if err != nil {
		return "", err
	}
	return token, nil
}

// StatusByToken returns the request a status token was issued for, or
// ErrNotFound when the token is unknown or has expired with its request.
func (r *Register) StatusByToken(ctx context.Context, token string) (Request, error) {
	if len(token) < 22 || len(token) > 64 {
		return Request{}, ErrNotFound
	}
	var q Request
	err := r.opt.Store.View(ctx, func(tx ReadTx) error {
		mt, ok := tx.(metaTx)
		if !ok {
			return ErrNotFound
		}
		id, err := mt.meta(statusKey(token))
		if err != nil || id == "" {
			return ErrNotFound
		}
		q, err = tx.Request(id)
		return err
	})
	if err != nil {
		return Request{}, ErrNotFound
	}
	now := r.now()
	var end time.Time
	switch {
	case q.Status == StatusPending:
		return q, nil
	case q.Status == StatusApproved && q.Grant != nil:
		end = q.Grant.NotAfter
	case q.Status == StatusRevoked && q.Grant != nil:
		end = q.Grant.Revoked.Add(StatusKeep)
	case q.Status == StatusExpired && q.Grant != nil:
		end = q.Grant.NotAfter.Add(StatusKeep)
	default:
		end = q.Decided.Add(StatusKeep)
	}
	if !now.Before(end) {
		return Request{}, ErrNotFound
	}
	return q, nil
}

// Register returns the register behind the web side.
func (w *Web) Register() *Register { return w.opt.Register }

type statusPage struct {
	ID, ServiceName        string
	Status                 Status
	DurationFR, DurationEN string
	Created, Decided, End  string
	Note                   string
}

var statusTmpl = template.Must(template.New("status").Parse(`<!DOCTYPE html>
<html lang="fr">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>Demande {{.ID}} / Request {{.ID}}</title>
<style>body{font-family:system-ui,sans-serif;max-width:42rem;margin:2rem auto;padding:0 1rem;line-height:1.5;color:#1a1a1a}
section{margin-bottom:2rem}.st{font-size:1.3rem;font-weight:bold}hr{border:0;border-top:1px solid #ccc}</style>
</head>
<body>
<section lang="fr">
<h1>Demande {{.ID}}</h1>
<p>Accès à {{.ServiceName}} pour {{.DurationFR}}, reçue le {{.Created}}.</p>
<p>État : <span class="st" id="status-fr">{{if eq .Status "pending"}}en attente de décision{{else if eq .Status "approved"}}acceptée{{else if eq .Status "denied"}}refusée{{else if eq .Status "revoked"}}révoquée{{else}}expirée{{end}}</span></p>
{{if eq .Status "approved"}}<p>L'accès est ouvert sur ce poste jusqu'au {{.End}}.</p>{{end}}
{{if .Decided}}<p>Décision rendue le {{.Decided}}.</p>{{end}}
{{if and .Note (ne .Status "approved")}}<p>Motif : {{.Note}}</p>{{end}}
</section>
<hr>
<section lang="en">
<h1>Request {{.ID}}</h1>
<p>Access to {{.ServiceName}} for {{.DurationEN}}, received on {{.Created}}.</p>
<p>Status: <span class="st" id="status-en">{{if eq .Status "pending"}}waiting for a decision{{else if eq .Status "approved"}}approved{{else if eq .Status "denied"}}denied{{else if eq .Status "revoked"}}revoked{{else}}expired{{end}}</span></p>
{{if eq .Status "approved"}}<p>Access is open on this workstation until {{.End}}.</p>{{end}}
{{if .Decided}}<p>Decided on {{.Decided}}.</p>{{end}}
{{if and .Note (ne .Status "approved")}}<p>Reason: {{.Note}}</p>{{end}}
</section>
</body>
</html>
`))

// serveStatus answers GET StatusPrefix + token.
func (w *Web) serveStatus(rw http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		rw.Header().Set("Allow", "GET, HEAD")
		w.fail(rw, http.StatusMethodNotAllowed, "Méthode refusée", "Method not allowed",
			"Cette page se consulte seulement.", "This page can only be read.")
		return
	}
	token := strings.TrimPrefix(r.URL.Path, StatusPrefix)
	q, err := w.opt.Register.StatusByToken(r.Context(), token)
	if err != nil {
		rw.Header().Set("Referrer-Policy", "no-referrer")
		w.fail(rw, http.StatusNotFound, "Page introuvable", "Not found",
			"Ce lien de suivi n'existe pas ou a expiré avec la demande.", "This status link does not exist or has expired with its request.")
		return
	}
	loc := w.opt.Location
	if loc == nil {
		loc = time.Local
	}
	at := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.In(loc).Format("2006-01-02 15:04")
	}
	p := statusPage{ID: q.ID, ServiceName: w.opt.ServiceName(q.Services[0]), Status: q.Status,
		DurationFR: durationLabel(q.Duration, "fr"), DurationEN: durationLabel(q.Duration, "en"),
		Created: at(q.Created), Decided: at(q.Decided), Note: q.Note}
	if q.Grant != nil {
		p.End = at(q.Grant.NotAfter)
		if !q.Grant.Revoked.IsZero() {
			p.Decided = at(q.Grant.Revoked)
		}
	}
	rw.Header().Set("X-Robots-Tag", "noindex")
	writePage(rw, http.StatusOK, statusTmpl, p)
}
