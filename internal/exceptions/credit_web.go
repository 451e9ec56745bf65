package exceptions

import (
	"bytes"
	"context"
	"errors"
	"html/template"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/balise-net/balise/internal/policy"
)

// Paths of the break buttons under the reserved prefix.
const (
	BreakStartPath = "/.balise/break/start"
	BreakEndPath   = "/.balise/break/end"
)

// breakView is what the break box and answer pages show.
type breakView struct {
	Lang, Credit, Service, ServiceName, Host, Token string
	Person                                          bool
	Active, Spent                                   bool
	Left, Ends, Refill                              string
	// Answer page only.
	TitleFR, TitleEN string
	Status           int
}

var breakBoxTmpl = template.Must(template.New("break").Parse(`<div class="balise-break" lang="{{.Lang}}">
{{if eq .Lang "en"}}<h2>Break credit</h2>
<p>{{if .Person}}Your break credit{{else}}This workstation's break credit{{end}} « {{.Credit}} » opens {{.ServiceName}} during your breaks.</p>
{{if .Active}}<p>Break in progress until <span class="break-ends">{{.Ends}}</span>.</p>
<form method="post" action="/.balise/break/end"><input type="hidden" name="credit" value="{{.Credit}}"><input type="hidden" name="token" value="{{.Token}}"><input type="hidden" name="lang" value="en"><button type="submit" class="break-end">End my break</button></form>
{{else if .Spent}}<p class="break-spent">Credit used up. It refills from <span class="break-refill">{{.Refill}}</span>.</p>
{{else}}<p><span class="break-left">{{.Left}}</span> left{{if .Refill}}; spent minutes come back from <span class="break-refill">{{.Refill}}</span>{{end}}.</p>
<form method="post" action="/.balise/break/start"><input type="hidden" name="credit" value="{{.Credit}}"><input type="hidden" name="service" value="{{.Service}}"><input type="hidden" name="host" value="{{.Host}}"><input type="hidden" name="token" value="{{.Token}}"><input type="hidden" name="lang" value="en"><button type="submit" class="break-start">Start my break</button></form>
{{end}}{{else}}<h2>Crédit de pause</h2>
<p>{{if .Person}}Votre crédit de pause{{else}}Le crédit de pause de ce poste{{end}} « {{.Credit}} » ouvre {{.ServiceName}} pendant vos pauses.</p>
{{if .Active}}<p>Pause en cours jusqu'à <span class="break-ends">{{.Ends}}</span>.</p>
<form method="post" action="/.balise/break/end"><input type="hidden" name="credit" value="{{.Credit}}"><input type="hidden" name="token" value="{{.Token}}"><input type="hidden" name="lang" value="fr"><button type="submit" class="break-end">Terminer ma pause</button></form>
{{else if .Spent}}<p class="break-spent">Crédit épuisé. Il se renouvelle à partir de <span class="break-refill">{{.Refill}}</span>.</p>
{{else}}<p>Il reste <span class="break-left">{{.Left}}</span>{{if .Refill}}; les minutes utilisées reviennent à partir de <span class="break-refill">{{.Refill}}</span>{{end}}.</p>
<form method="post" action="/.balise/break/start"><input type="hidden" name="credit" value="{{.Credit}}"><input type="hidden" name="service" value="{{.Service}}"><input type="hidden" name="host" value="{{.Host}}"><input type="hidden" name="token" value="{{.Token}}"><input type="hidden" name="lang" value="fr"><button type="submit" class="break-start">Commencer ma pause</button></form>
{{end}}{{end}}</div>
`))

var breakAnswerTmpl = template.Must(template.New("breakAnswer").Parse(`<!DOCTYPE html>
<html lang="fr">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.TitleFR}} / {{.TitleEN}}</title>
<style>body{font-family:system-ui,sans-serif;max-width:42rem;margin:2rem auto;padding:0 1rem;line-height:1.5;color:#1a1a1a}section{margin-bottom:2rem}hr{border:0;border-top:1px solid #ccc}</style>
</head>
<body>
<section lang="fr"><h1>{{.TitleFR}}</h1>
{{if .Active}}<p>{{if .Person}}Votre pause{{else}}La pause de ce poste{{end}} est commencée : accès permis jusqu'à <span class="break-ends">{{.Ends}}</span>, à moins que vous la terminiez avant (les minutes inutilisées restent à votre crédit).</p>
<form method="post" action="/.balise/break/end"><input type="hidden" name="credit" value="{{.Credit}}"><input type="hidden" name="token" value="{{.Token}}"><input type="hidden" name="lang" value="fr"><button type="submit">Terminer ma pause</button></form>
{{else if .Spent}}<p>Crédit épuisé. Il se renouvelle à partir de <span class="break-refill">{{.Refill}}</span>.</p>
{{else}}<p>Aucune pause en cours. Il reste <span class="break-left">{{.Left}}</span> à votre crédit.</p>{{end}}
<p><a href="/">Revenir à la page</a></p></section>
<hr>
<section lang="en"><h1>{{.TitleEN}}</h1>
{{if .Active}}<p>{{if .Person}}Your break{{else}}This workstation's break{{end}} has started: access allowed until {{.Ends}}, unless you end it earlier (unused minutes stay in your credit).</p>
<form method="post" action="/.balise/break/end"><input type="hidden" name="credit" value="{{.Credit}}"><input type="hidden" name="token" value="{{.Token}}"><input type="hidden" name="lang" value="en"><button type="submit">End my break</button></form>
{{else if .Spent}}<p>Credit used up. It refills from {{.Refill}}.</p>
{{else}}<p>No break in progress. {{.Left}} left in your credit.</p>{{end}}
<p><a href="/">Back to the page</a></p></section>
</body></html>
`))

// formatLeft writes a duration of credit: "12 min", "1 min 30 s", "45 s".
func formatLeft(d time.Duration) string {
	d = d.Round(time.Second)
	m, s := int(d/time.Minute), int(d%time.Minute/time.Second)
	switch {
	case m == 0:
		return strconv.Itoa(s) + " s"
	case s == 0:
		return strconv.Itoa(m) + " min"
	}
	return strconv.Itoa(m) + " min " + strconv.Itoa(s) + " s"
}

// clock writes an instant of the page: "14:05", with the date when it is
// not today.
func (w *Web) clock(t, now time.Time) string {
	if t.IsZero() {
		return ""
	}
	loc := w.opt.Location
	if loc == nil {
		loc = time.Local
	}
	t, now = t.In(loc), now.In(loc)
	if t.YearDay() == now.YearDay() && t.Year() == now.Year() {
		return t.Format("15:04:05")
	}
	return t.Format("2006-01-02 15:04:05")
}

// who is the user a page or a post is about: the authenticated
// connection's, else the address's bound user.
func (w *Web) who(ctx context.Context, client netip.Addr) string {
	if u := UserFrom(ctx); u != "" {
		return u
	}
	if w.opt.UserOf != nil {
		return w.opt.UserOf(client)
	}
	return ""
}

// view computes a break box for plan.
func (w *Web) view(ctx context.Context, client netip.Addr, user string, plan CreditPlan, lang string, now time.Time) (breakView, error) {
	st, err := w.opt.Register.Credit(ctx, CreditSubject(client, user), plan, now)
	if err != nil {
		return breakView{}, err
	}
	v := breakView{Lang: lang, Credit: plan.Name, Person: st.Person, Active: st.Active,
		Spent: !st.Active && st.Left < time.Second, Left: formatLeft(st.Left),
		Ends: w.clock(st.Ends, now), Refill: w.clock(st.Refill, now),
		Token: w.opt.Tokens.Issue(client, now)}
	return v, nil
}

// breakOffer returns the break box of a block page, or nothing when no
// credit covers the service for this client.
func (w *Web) breakOffer(client netip.Addr, d policy.Decision, name, host, lang string) template.HTML {
	if w.opt.Credits == nil || d.Bypass {
		return ""
	}
	user := w.who(context.Background(), client)
	plans := w.opt.Credits(client, user, d.Service)
	if len(plans) == 0 {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	v, err := w.view(ctx, client, user, plans[0], lang, w.opt.Clock())
	if err != nil {
		w.opt.Logger.Warn("break credit not read", "err", err)
		return ""
	}
	v.Service, v.ServiceName, v.Host = d.Service, name, host
	var b bytes.Buffer
	if err := breakBoxTmpl.Execute(&b, v); err != nil {
		return ""
	}
	return template.HTML(b.String())
}

// CreditPanel returns the portal's list of the client's credits (their
// minutes left, a break in progress with its end button), or nothing.
func (w *Web) CreditPanel(ctx context.Context, client netip.Addr, lang string) template.HTML {
	if w.opt.CreditsOf == nil {
		return ""
	}
	if lang != "en" {
		lang = "fr"
	}
	user := w.who(ctx, client)
	var b bytes.Buffer
	now := w.opt.Clock()
	for _, plan := range w.opt.CreditsOf(client, user) {
		v, err := w.view(ctx, client, user, plan, lang, now)
		if err != nil {
			w.opt.Logger.Warn("break credit not read", "err", err)
			return ""
		}
		v.ServiceName = "les services couverts"
		if lang == "en" {
			v.ServiceName = "the services it covers"
		}
		if err := breakBoxTmpl.Execute(&b, v); err != nil {
			return ""
		}
	}
	return template.HTML(b.String())
}

// breakFields are the fields the break forms send.
var breakFields = map[string]bool{"credit": true, "service": true, "host": true, "token": true, "lang": true}

// serveBreak answers POST /.balise/break/start and /.balise/break/end.
func (w *Web) serveBreak(rw http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		rw.Header().Set("Allow", http.MethodPost)
		w.fail(rw, http.StatusMethodNotAllowed, "Méthode refusée", "Method not allowed",
			"Utilisez le bouton de la page de blocage.", "Use the button on the block page.")
		return
	}
	addr, ok := w.clientOf(rw, r)
	if !ok {
		return
	}
	now := w.opt.Clock()
	if !w.limits.allow(addr, now) {
		rw.Header().Set("Retry-After", "60")
		w.fail(rw, http.StatusTooManyRequests, "Trop de demandes", "Too many requests",
			"Attendez une minute avant de réessayer.", "Wait a minute before trying again.")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(rw, r.Body, MaxBody))
	vals, err2 := url.ParseQuery(string(body))
	if err != nil || err2 != nil {
		w.fail(rw, http.StatusBadRequest, "Formulaire invalide", "Invalid form",
			"Le formulaire envoyé est mal formé.", "The form sent is malformed.")
		return
	}
	if !w.checkForm(rw, vals, breakFields, addr, now) {
		return
	}
	user := w.who(r.Context(), addr)
	var plan CreditPlan
	found := false
	var plans []CreditPlan
	// The credit's name identifies it (the portal's button names no
	// service); it must be one of this client's.
	if w.opt.CreditsOf != nil {
		plans = w.opt.CreditsOf(addr, user)
	} else if w.opt.Credits != nil {
		plans = w.opt.Credits(addr, user, vals.Get("service"))
	}
	for _, p := range plans {
		if p.Name == vals.Get("credit") {
			plan, found = p, true
		}
	}
	if !found {
		w.fail(rw, http.StatusNotFound, "Aucun crédit de pause", "No break credit",
			"Aucun crédit de pause ne couvre ce service pour ce poste.", "No break credit covers this service for this workstation.")
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), w.opt.Timeout)
	defer cancel()
	subject := CreditSubject(addr, user)
	titleFR, titleEN := "Pause commencée", "Break started"
	if r.URL.Path == BreakStartPath {
		_, err = w.opt.Register.StartBreak(ctx, subject, plan, now)
		if errors.Is(err, ErrCreditSpent) {
			titleFR, titleEN, err = "Crédit épuisé", "Credit used up", nil
		}
	} else {
		titleFR, titleEN = "Pause terminée", "Break ended"
		_, err = w.opt.Register.EndBreak(ctx, subject, plan.Name, now)
	}
	if err != nil {
		w.opt.Logger.Error("break not recorded", "err", err)
		rw.Header().Set("Retry-After", "60")
		w.fail(rw, http.StatusServiceUnavailable, "Service temporairement indisponible", "Temporarily unavailable",
			"La pause n'a pas pu être enregistrée. Réessayez dans quelques minutes.", "The break could not be recorded. Try again in a few minutes.")
		return
	}
	v, err := w.view(ctx, addr, user, plan, "fr", now)
	if err != nil {
		w.fail(rw, http.StatusServiceUnavailable, "Service temporairement indisponible", "Temporarily unavailable",
			"Le crédit de pause n'a pas pu être lu.", "The break credit could not be read.")
		return
	}
	v.TitleFR, v.TitleEN = titleFR, titleEN
	writePage(rw, http.StatusOK, breakAnswerTmpl, v)
}

// postLimiter bounds the break posts of each client per minute; it keeps
// at most maxClients clients (the oldest windows are dropped first).
type postLimiter struct {
	max int
	mu  sync.Mutex
	m   map[netip.Addr]*postWindow
}

type postWindow struct {
	start time.Time
	n     int
}

const maxLimitedClients = 10000

func (l *postLimiter) allow(client netip.Addr, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = map[netip.Addr]*postWindow{}
	}
	w := l.m[client]
	if w == nil || now.Sub(w.start) >= time.Minute || now.Before(w.start) {
		if len(l.m) >= maxLimitedClients {
			for k, v := range l.m {
				if now.Sub(v.start) >= time.Minute {
					delete(l.m, k)
				}
			}
			if len(l.m) >= maxLimitedClients {
				return false
			}
		}
		w = &postWindow{start: now}
		l.m[client] = w
	}
	w.n++
	return w.n <= l.max
}
