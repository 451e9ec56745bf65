package exceptions

import (
	"bytes"
	"context"
	"errors"
	"html/template"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/balise-net/balise/internal/policy"
)

// ReservedPrefix is the path, on any blocked host, that the proxy hands to
// the register; the form posts to RequestPath.
const (
	ReservedPrefix = "/.balise/"
	RequestPath    = "/.balise/request"
	// MaxBody bounds a form submission.
	MaxBody = 16 << 10
)

// WebOptions configures a Web.
type WebOptions struct {
	// Register records the requests. Required.
	Register *Register
	// Tokens issues and checks the form's anti-forgery tokens. Required
	// (see LoadKey and NewTokens).
	Tokens *Tokens
	// ServiceName returns a service's display name. Nil: the id.
	ServiceName func(id string) string
	// Logger receives storage failures. Nil: discarded.
	Logger *slog.Logger
	// Clock returns the time. Nil: time.Now.
	Clock func() time.Time
	// Timeout bounds recording one request. Zero: 15 s.
	Timeout time.Duration
	// StatusBase is the portal's address ("http://balise.cisss.example/"):
	// the answer to a request links to its status page there. Empty: the
	// link is relative to the blocked host the form was posted to.
	StatusBase string
	// Location is the time zone of the status page's times. Nil: local.
	Location *time.Location
	// Credits returns the break credits ([[credit]]) that cover service
	// for this client and user ("" when unknown), resolved against the
	// policy in force. Nil: no break credit (no button on block pages).
	Credits func(client netip.Addr, user, service string) []CreditPlan
	// CreditsOf returns every credit of this client and user, for the
	// portal. Nil: none.
	CreditsOf func(client netip.Addr, user string) []CreditPlan
	// UserOf returns the user bound to a client address ("" when none or
	// when it is shared): the credit of a page shown without an
	// authenticated connection is that person's. Nil: none.
	UserOf func(client netip.Addr) string
	// MaxBreakPostsPerMinute bounds the break posts of one client. Zero: 6.
	MaxBreakPostsPerMinute int
}

// Web is the register's web side: the form embedded in block pages and the
// handler of the reserved path. Its method set is what the proxy expects
// (Form and http.Handler).
type Web struct {
	opt    WebOptions
	limits postLimiter
}

// NewWeb returns the web side of a register.
func NewWeb(opt WebOptions) (*Web, error) {
	if opt.Register == nil || opt.Tokens == nil {
		return nil, errors.New("exceptions: Register and Tokens are required")
	}
	if opt.ServiceName == nil {
		opt.ServiceName = func(id string) string { return id }
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.Clock == nil {
		opt.Clock = time.Now
	}
	if opt.Timeout <= 0 {
		opt.Timeout = 15 * time.Second
	}
	if opt.MaxBreakPostsPerMinute <= 0 {
		opt.MaxBreakPostsPerMinute = 6
	}
	return &Web{opt: opt, limits: postLimiter{max: opt.MaxBreakPostsPerMinute}}, nil
}

type choice struct {
	Value, Label string
}

type formData struct {
	Lang, Service, ServiceName, Host, Token string
	Durations                               []choice
	Min, Max, MaxName, MaxContact           int
}

var pendingTmpl = template.Must(template.New("pending").Parse(`<div class="balise-exception" lang="{{.Lang}}">
{{if eq .Lang "en"}}<h2>Request already pending</h2>
<p>Request {{.ID}} for {{.ServiceName}}, sent from this workstation on {{.Created}}, is waiting for the information-security service. You will find its answer here once it is decided.</p>
{{else}}<h2>Demande déjà en attente</h2>
<p>La demande {{.ID}} pour {{.ServiceName}}, envoyée depuis ce poste le {{.Created}}, attend la décision du service de la sécurité de l'information. Sa réponse s'affichera ici une fois rendue.</p>
{{end}}</div>`))

var formTmpl = template.Must(template.New("form").Parse(`<form class="balise-exception" method="post" action="/.balise/request" lang="{{.Lang}}">
<input type="hidden" name="service" value="{{.Service}}">
<input type="hidden" name="host" value="{{.Host}}">
<input type="hidden" name="token" value="{{.Token}}">
<input type="hidden" name="lang" value="{{.Lang}}">
{{if eq .Lang "en"}}<h2>Ask for an exception</h2>
<p>If your work requires {{.ServiceName}}, ask the information-security service for an exception. It applies to this workstation only.</p>
<p><label>Your name <input name="name" required maxlength="{{.MaxName}}" autocomplete="name"></label></p>
<p><label>How to reach you (email or extension) <input name="contact" maxlength="{{.MaxContact}}" autocomplete="email"></label></p>
<p><label>Why do you need it? ({{.Min}} to {{.Max}} characters)<br><textarea name="justification" required minlength="{{.Min}}" maxlength="{{.Max}}" rows="5" cols="60"></textarea></label></p>
<p><label>For how long? <select name="duration">{{range .Durations}}<option value="{{.Value}}">{{.Label}}</option>{{end}}</select></label></p>
<p><button type="submit">Send the request</button></p>
{{else}}<h2>Demander une exception</h2>
<p>Si votre travail exige {{.ServiceName}}, demandez une exception au service de la sécurité de l'information. Elle vaut pour ce poste seulement.</p>
<p><label>Votre nom <input name="name" required maxlength="{{.MaxName}}" autocomplete="name"></label></p>
<p><label>Pour vous joindre (courriel ou poste) <input name="contact" maxlength="{{.MaxContact}}" autocomplete="email"></label></p>
<p><label>Pourquoi en avez-vous besoin? ({{.Min}} à {{.Max}} caractères)<br><textarea name="justification" required minlength="{{.Min}}" maxlength="{{.Max}}" rows="5" cols="60"></textarea></label></p>
<p><label>Pour combien de temps? <select name="duration">{{range .Durations}}<option value="{{.Value}}">{{.Label}}</option>{{end}}</select></label></p>
<p><button type="submit">Envoyer la demande</button></p>
{{end}}</form>
`))

func durationLabel(d time.Duration, lang string) string {
	unit := func(n int, fr, en string) string {
		if lang == "en" {
			fr = en
		}
		if n != 1 {
			fr += "s"
		}
		return itoa(n) + " " + fr
	}
	switch {
	case d > 0 && d%(24*time.Hour) == 0:
		return unit(int(d/(24*time.Hour)), "jour", "day")
	case d > 0 && d%time.Hour == 0:
		return unit(int(d/time.Hour), "heure", "hour")
	case d > 0 && d%time.Minute == 0:
		return unit(int(d/time.Minute), "minute", "minute")
	}
	return formatDuration(d)
}

func itoa(n int) string { return strconv.Itoa(n) }

// Form returns the request form for a block page shown to client about
// decision d on host, in lang ("fr" or "en"; anything else is French).
// It is empty when d is not a block of a listed service (canaries and
// allowed hosts get no form). Every value in it is escaped.
func (w *Web) Form(client netip.Addr, d policy.Decision, host string, lang string) template.HTML {
	if d.Verdict != policy.Block || !d.Listed() || d.Reason == policy.ReasonCanary || !client.IsValid() {
		return ""
	}
	if lang != "en" {
		lang = "fr"
	}
	name := d.ServiceName
	if name == "" {
		name = w.opt.ServiceName(d.Service)
	}
	brk := w.breakOffer(client, d, name, host, lang)
	if q, ok := w.opt.Register.PendingFor(client, d.Service); ok {
		// A request is already waiting: say so rather than invite
		// another one.
		var b bytes.Buffer
		loc := w.opt.Location
		if loc == nil {
			loc = time.Local
		}
		if err := pendingTmpl.Execute(&b, struct{ Lang, ID, ServiceName, Created string }{
			lang, q.ID, name, q.Created.In(loc).Format("2006-01-02 15:04")}); err != nil {
			return brk
		}
		return brk + template.HTML(b.String())
	}
	fd := formData{
		Lang: lang, Service: d.Service, ServiceName: name, Host: host,
		Token: w.opt.Tokens.Issue(client, w.opt.Clock()),
		Min:   MinJustification, Max: MaxJustification, MaxName: MaxName, MaxContact: MaxContact,
	}
	for _, du := range w.opt.Register.Durations() {
		fd.Durations = append(fd.Durations, choice{formatDuration(du), durationLabel(du, lang)})
	}
	var b bytes.Buffer
	if err := formTmpl.Execute(&b, fd); err != nil {
		return brk
	}
	return brk + template.HTML(b.String())
}

// answer is the data of an answer page.
type answer struct {
	Status                 int
	TitleFR, TitleEN       string
	FR, EN                 []string // paragraphs of a refusal
	FieldFR, FieldEN       string   // the field to correct
	Received, Duplicate    bool
	ID, ServiceName        string
	DurationFR, DurationEN string
	// StatusURL is the link to the request's status page ("" = none).
	StatusURL string
}

var answerTmpl = template.Must(template.New("answer").Parse(`<!DOCTYPE html>
<html lang="fr">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.TitleFR}} / {{.TitleEN}}</title>
<style>body{font-family:system-ui,sans-serif;max-width:42rem;margin:2rem auto;padding:0 1rem;line-height:1.5;color:#1a1a1a}
section{margin-bottom:2rem}.num{font-size:1.4rem;font-weight:bold;letter-spacing:.05em}hr{border:0;border-top:1px solid #ccc}</style>
</head>
<body>
<section lang="fr">
<h1>{{.TitleFR}}</h1>
{{if .Received}}<p>Numéro de demande : <span class="num">{{.ID}}</span></p>
{{if .Duplicate}}<p>Cette demande avait déjà été reçue; elle n'a pas été envoyée une deuxième fois.</p>{{end}}
<p>Votre demande d'accès à {{.ServiceName}} pour {{.DurationFR}} a été enregistrée. Le service de la sécurité de l'information l'examinera et pourra vous joindre aux coordonnées indiquées.</p>
<p>Si elle est acceptée, l'accès s'ouvrira de lui-même sur ce poste, en quelques secondes, pour la durée accordée : rechargez simplement la page. Vous n'avez rien d'autre à faire. Conservez ce numéro pour toute question.</p>
{{if .StatusURL}}<p><a id="status-link" href="{{.StatusURL}}" rel="noreferrer">Suivre ma demande</a> (lien personnel : ne le partagez pas)</p>{{end}}
{{else}}{{range .FR}}<p>{{.}}</p>{{end}}{{if .FieldFR}}<p><strong>{{.FieldFR}}</strong></p>{{end}}{{end}}
<p><a href="/">Revenir à la page</a></p>
</section>
<hr>
<section lang="en">
<h1>{{.TitleEN}}</h1>
{{if .Received}}<p>Request number: <span class="num">{{.ID}}</span></p>
{{if .Duplicate}}<p>This request had already been received; it was not sent a second time.</p>{{end}}
<p>Your request for access to {{.ServiceName}} for {{.DurationEN}} was recorded. The information-security service will review it and may contact you at the address you gave.</p>
<p>If it is approved, access opens by itself on this workstation, within seconds, for the time granted: just reload the page. There is nothing else to do. Keep this number for any question.</p>
{{if .StatusURL}}<p><a href="{{.StatusURL}}" rel="noreferrer">Follow my request</a> (personal link: do not share it)</p>{{end}}
{{else}}{{range .EN}}<p>{{.}}</p>{{end}}{{if .FieldEN}}<p><strong>{{.FieldEN}}</strong></p>{{end}}{{end}}
<p><a href="/">Back to the page</a></p>
</section>
</body>
</html>
`))

func (w *Web) write(rw http.ResponseWriter, a answer) {
	writePage(rw, a.Status, answerTmpl, a)
}

// writePage renders one of the register's own pages (answers, break and
// status pages): no caching, no sniffing, no referrer, nothing loaded
// but inline styles, forms posted only to Balise itself.
func writePage(rw http.ResponseWriter, status int, tmpl *template.Template, data any) {
	var b bytes.Buffer
	if err := tmpl.Execute(&b, data); err != nil {
		http.Error(rw, "internal error", http.StatusInternalServerError)
		return
	}
	h := rw.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'")
	rw.WriteHeader(status)
	rw.Write(b.Bytes())
}

func (w *Web) fail(rw http.ResponseWriter, status int, titleFR, titleEN, fr, en string) {
	if status != http.StatusNotFound && status != http.StatusServiceUnavailable {
		w.opt.Register.metrics.requests[resultRejected].Inc()
	}
	w.write(rw, answer{Status: status, TitleFR: titleFR, TitleEN: titleEN, FR: []string{fr}, EN: []string{en}})
}

// userKey is the context key of the authenticated user (WithUser).
type userKey struct{}

// WithUser returns ctx carrying the user the proxy authenticated on the
// connection a request came over; Web records it with the request, so
// that the officer may grant the person rather than the workstation.
// The form never lets the employee type it.
func WithUser(ctx context.Context, user string) context.Context {
	return context.WithValue(ctx, userKey{}, user)
}

// UserFrom returns the user WithUser put in ctx ("" when none).
func UserFrom(ctx context.Context) string {
	u, _ := ctx.Value(userKey{}).(string)
	return u
}

// formFields are the fields the form sends; anything else is refused.
var formFields = map[string]bool{"service": true, "host": true, "token": true, "lang": true,
	"name": true, "contact": true, "justification": true, "duration": true}

// ServeHTTP answers the reserved path: POST /.balise/request records a
// request; anything else under /.balise/ is 404 (405 for other methods on
// the request path). r.RemoteAddr must be the client's address ("ip" or
// "ip:port"), as the proxy sets it.
func (w *Web) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	if r.URL.Path == BreakStartPath || r.URL.Path == BreakEndPath {
		w.serveBreak(rw, r)
		return
	}
	if len(r.URL.Path) > len(StatusPrefix) && r.URL.Path[:len(StatusPrefix)] == StatusPrefix {
		w.serveStatus(rw, r)
		return
	}
	if r.URL.Path != RequestPath {
		w.fail(rw, http.StatusNotFound, "Page introuvable", "Not found",
			"Cette adresse n'existe pas.", "This address does not exist.")
		return
	}
	if r.Method != http.MethodPost {
		rw.Header().Set("Allow", http.MethodPost)
		w.fail(rw, http.StatusMethodNotAllowed, "Méthode refusée", "Method not allowed",
			"Utilisez le formulaire de la page de blocage.", "Use the form on the block page.")
		return
	}
	addr, ok := w.clientOf(rw, r)
	if !ok {
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/x-www-form-urlencoded" &&
		!bytes.HasPrefix([]byte(ct), []byte("application/x-www-form-urlencoded;")) {
		w.fail(rw, http.StatusUnsupportedMediaType, "Format refusé", "Unsupported format",
			"Utilisez le formulaire de la page de blocage.", "Use the form on the block page.")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(rw, r.Body, MaxBody))
	if err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			w.fail(rw, http.StatusRequestEntityTooLarge, "Demande trop longue", "Request too long",
				"Le formulaire envoyé est trop long.", "The form sent is too long.")
			return
		}
		w.fail(rw, http.StatusBadRequest, "Demande incomplète", "Incomplete request",
			"Le formulaire n'a pas été reçu au complet.", "The form was not received completely.")
		return
	}
	vals, err := url.ParseQuery(string(body))
	if err != nil {
		w.fail(rw, http.StatusBadRequest, "Formulaire invalide", "Invalid form",
			"Le formulaire envoyé est mal formé.", "The form sent is malformed.")
		return
	}
	now := w.opt.Clock()
	if !w.checkForm(rw, vals, formFields, addr, now) {
		return
	}
	dur, err := ParseDuration(vals.Get("duration"))
	if err != nil {
		dur = -1 // rejected by Submit with a field message
	}
	lang := vals.Get("lang")
	// A request being recorded is finished even if the browser goes away.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), w.opt.Timeout)
	defer cancel()
	rc, err := w.opt.Register.Submit(ctx, Submission{
		Client: addr, User: UserFrom(r.Context()), Name: vals.Get("name"), Contact: vals.Get("contact"),
		Service: vals.Get("service"), Host: vals.Get("host"),
		Justification: vals.Get("justification"), Duration: dur, Lang: lang,
	})
	var fe *FieldError
	var le *LimitError
	switch {
	case errors.As(err, &fe):
		w.write(rw, answer{Status: http.StatusBadRequest, TitleFR: "Demande incomplète", TitleEN: "Incomplete request",
			FR:      []string{"La demande n'a pas été enregistrée. Revenez à la page précédente, corrigez le champ suivant et renvoyez-la :"},
			EN:      []string{"The request was not recorded. Go back to the previous page, correct the following field and send it again:"},
			FieldFR: fieldLabelFR[fe.Field] + " : " + fe.MsgFR, FieldEN: fieldLabelEN[fe.Field] + ": " + fe.Msg})
	case errors.As(err, &le):
		fr, en := "Ce poste a déjà "+itoa(le.Limit)+" demandes en attente de décision. Attendez la réponse du service de la sécurité de l'information avant d'en envoyer une autre.",
			"This workstation already has "+itoa(le.Limit)+" requests waiting for a decision. Wait for the information-security service's answer before sending another."
		if le.Kind == "day" {
			fr, en = "Ce poste a envoyé "+itoa(le.Limit)+" demandes au cours des dernières 24 heures, le maximum. Réessayez demain ou communiquez avec le service de la sécurité de l'information.",
				"This workstation sent "+itoa(le.Limit)+" requests in the last 24 hours, the maximum. Try again tomorrow or contact the information-security service."
		}
		rw.Header().Set("Retry-After", "3600")
		w.write(rw, answer{Status: http.StatusTooManyRequests, TitleFR: "Trop de demandes", TitleEN: "Too many requests",
			FR: []string{"La demande n'a pas été enregistrée.", fr}, EN: []string{"The request was not recorded.", en}})
	case errors.Is(err, ErrUnavailable):
		w.opt.Logger.Error("exception request not recorded: register unavailable", "client", addr, "err", err)
		rw.Header().Set("Retry-After", "60")
		w.fail(rw, http.StatusServiceUnavailable, "Service temporairement indisponible", "Temporarily unavailable",
			"La demande n'a pas été enregistrée : le registre des exceptions est temporairement indisponible. Réessayez dans quelques minutes.",
			"The request was not recorded: the exception register is temporarily unavailable. Try again in a few minutes.")
	case err != nil:
		w.opt.Logger.Error("exception request not recorded", "client", addr, "err", err)
		rw.Header().Set("Retry-After", "60")
		w.fail(rw, http.StatusServiceUnavailable, "Demande non enregistrée", "Request not recorded",
			"La demande n'a pas pu être enregistrée. Réessayez dans quelques minutes; si le problème persiste, communiquez avec le soutien informatique.",
			"The request could not be recorded. Try again in a few minutes; if the problem persists, contact IT support.")
	default:
		q := rc.Request
		name := w.opt.ServiceName(q.Services[0])
		a := answer{Status: http.StatusOK, TitleFR: "Demande reçue", TitleEN: "Request received",
			Received: true, Duplicate: rc.Duplicate, ID: rc.ID, ServiceName: name,
			DurationFR: durationLabel(q.Duration, "fr"), DurationEN: durationLabel(q.Duration, "en")}
		if token, err := w.opt.Register.IssueStatusToken(ctx, rc.ID); err == nil {
			a.StatusURL = strings.TrimSuffix(w.opt.StatusBase, "/") + StatusPrefix + token
		} else {
			w.opt.Logger.Warn("exception status link not issued", "id", rc.ID, "err", err)
		}
		w.write(rw, a)
	}
}

var fieldLabelFR = map[string]string{"name": "Votre nom", "contact": "Pour vous joindre", "justification": "Pourquoi",
	"duration": "Durée", "service": "Service", "host": "Site", "client": "Poste", "user": "Utilisateur"}
var fieldLabelEN = map[string]string{"name": "Your name", "contact": "How to reach you", "justification": "Why",
	"duration": "Duration", "service": "Service", "host": "Site", "client": "Workstation", "user": "User"}

// clientOf returns the client's address from r.RemoteAddr ("ip" or
// "ip:port", as the proxy sets it), or answers 400 and false.
func (w *Web) clientOf(rw http.ResponseWriter, r *http.Request) (netip.Addr, bool) {
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		return ap.Addr().Unmap(), true
	}
	addr, err := netip.ParseAddr(r.RemoteAddr)
	if err != nil {
		w.fail(rw, http.StatusBadRequest, "Poste inconnu", "Unknown workstation",
			"L'adresse de votre poste est inconnue.", "Your workstation's address is unknown.")
		return netip.Addr{}, false
	}
	return addr.Unmap(), true
}

// checkForm accepts a posted form whose fields are all in allowed, once
// each, and whose token was issued to addr and is still valid; otherwise
// it answers (400 or 403) and returns false.
func (w *Web) checkForm(rw http.ResponseWriter, vals url.Values, allowed map[string]bool, addr netip.Addr, now time.Time) bool {
	for k, v := range vals {
		if !allowed[k] || len(v) != 1 {
			w.fail(rw, http.StatusBadRequest, "Formulaire invalide", "Invalid form",
				"Le formulaire envoyé contient des champs inattendus.", "The form sent has unexpected fields.")
			return false
		}
	}
	if err := w.opt.Tokens.Check(vals.Get("token"), addr, now); err != nil {
		w.fail(rw, http.StatusForbidden, "Formulaire expiré", "Form expired",
			"Ce formulaire a expiré ou ne vient pas de ce poste. Rechargez la page bloquée et recommencez.",
			"This form has expired or was not issued to this workstation. Reload the blocked page and try again.")
		return false
	}
	return true
}
