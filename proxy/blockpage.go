package proxy

import (
	"bytes"
	_ "embed"
	"fmt"
	"html/template"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/balise-net/balise/internal/policy"
)

//go:embed blockpage.html
var blockPageHTML string

var blockPageTmpl = template.Must(template.New("block").Parse(blockPageHTML))

type blockSection struct {
	Lang       string
	Heading    string
	Intro      string
	Message    string
	Reopen     string
	NoReopen   string
	Help       string
	PortalLink string
	SignIn     string
	Form       template.HTML
}

type blockPageData struct {
	Lang        string
	Title       string
	Institution string
	Service     string
	Host        string
	PortalURL   string
	// SignInURL is the portal's sign-in, offered when who asks could
	// change the verdict and the address is bound to nobody ("": none).
	SignInURL string
	Sections  []blockSection
}

const (
	defaultMessageFR = "Selon la politique de l'établissement, les médias sociaux ne sont pas accessibles depuis les postes de travail, sauf pendant les pauses et pour les personnes autorisées."
	defaultMessageEN = "Under the institution's policy, social media are not available on workstations, except during breaks and for authorized staff."
)

// preferEnglish reports whether an Accept-Language header prefers English
// over French. Without either, French comes first.
func preferEnglish(acceptLanguage string) bool {
	qfr, qen := -1.0, -1.0
	for part := range strings.SplitSeq(acceptLanguage, ",") {
		tag, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		q := 1.0
		if v, ok := strings.CutPrefix(strings.TrimSpace(params), "q="); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || f < 0 || f > 1 {
				continue
			}
			q = f
		}
		primary, _, _ := strings.Cut(strings.ToLower(tag), "-")
		switch primary {
		case "fr":
			qfr = max(qfr, q)
		case "en":
			qen = max(qen, q)
		}
	}
	return qen > 0 && qen > qfr
}

// nextOpening follows the decision's until edges (at most a week ahead)
// to the first instant at which the client may reach the host.
func nextOpening(p *policy.Policy, q policy.Query, d policy.Decision) (time.Time, bool) {
	limit := q.Time.Add(7 * 24 * time.Hour)
	t := d.Until
	for range 32 {
		if t.IsZero() || t.After(limit) {
			return time.Time{}, false
		}
		q.Time = t
		nd := p.Decide(q)
		if nd.Verdict == policy.Allow {
			return t, true
		}
		if !nd.Until.After(t) {
			return time.Time{}, false
		}
		t = nd.Until
	}
	return time.Time{}, false
}

var (
	frDays   = [...]string{"dimanche", "lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi"}
	frMonths = [...]string{"janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre", "octobre", "novembre", "décembre"}
)

// reopenText formats the reopening instant in loc relative to now, in
// French (« Accès possible dès 12 h 00 ») and English.
func reopenText(at, now time.Time, loc *time.Location) (fr, en string) {
	if loc == nil {
		loc = time.UTC
	}
	at, now = at.In(loc), now.In(loc)
	hfr := fmt.Sprintf("%d h %02d", at.Hour(), at.Minute())
	hen := fmt.Sprintf("%d:%02d", at.Hour(), at.Minute())
	y1, m1, d1 := at.Date()
	y0, m0, d0 := now.Date()
	today := y1 == y0 && m1 == m0 && d1 == d0
	ty, tm, td := now.AddDate(0, 0, 1).Date()
	tomorrow := y1 == ty && m1 == tm && d1 == td
	switch {
	case today:
		return "Accès possible dès " + hfr, "Access possible from " + hen
	case tomorrow:
		return "Accès possible demain dès " + hfr, "Access possible tomorrow from " + hen
	default:
		return fmt.Sprintf("Accès possible dès %s %d %s, %s", frDays[at.Weekday()], d1, frMonths[m1-1], hfr),
			fmt.Sprintf("Access possible from %s, %s %d, %s", at.Weekday(), m1, d1, hen)
	}
}

// blockPage renders the block page for a client, decision and host.
func (p *Proxy) blockPage(pol *policy.Policy, client netip.Addr, host string, d policy.Decision, now time.Time, acceptLanguage string) []byte {
	service := d.ServiceName
	if service == "" {
		service = d.Service
	}
	if service == "" {
		service = host
	}
	cfg := p.cfg()
	var reopenFR, reopenEN string
	if pol != nil && d.Verdict == policy.Block {
		if at, ok := nextOpening(pol, policy.Query{Host: host, Client: client, Time: now}, d); ok {
			reopenFR, reopenEN = reopenText(at, now, pol.Location())
		}
	}
	msgFR, msgEN := cfg.BlockMessage, cfg.BlockMessageEN
	if msgFR == "" {
		msgFR = defaultMessageFR
	}
	if msgEN == "" {
		msgEN = defaultMessageEN
	}
	fr := blockSection{
		Lang:       "fr",
		Heading:    "Ce site n'est pas accessible depuis ce poste",
		Intro:      "Balise a bloqué l'accès à",
		Message:    msgFR,
		Reopen:     reopenFR,
		NoReopen:   "Aucune plage d'accès n'est prévue pour ce service dans les prochains jours.",
		Help:       "Si vous avez besoin de ce site pour votre travail, communiquez avec le service informatique ou la sécurité de l'information.",
		PortalLink: "Voir ce qui est accessible maintenant",
		SignIn:     "Vous êtes une personne autorisée ? Identifiez-vous avec votre compte de l'établissement",
	}
	en := blockSection{
		Lang:       "en",
		Heading:    "This site is not available from this workstation",
		Intro:      "Balise blocked access to",
		Message:    msgEN,
		Reopen:     reopenEN,
		NoReopen:   "No access period is scheduled for this service in the coming days.",
		Help:       "If you need this site for your work, please contact IT support or information security.",
		PortalLink: "See what is available now",
		SignIn:     "Are you an authorized person? Sign in with your institution account",
	}
	if p.opts.Exceptions != nil {
		fr.Form = p.opts.Exceptions.Form(client, d, host, "fr")
		en.Form = p.opts.Exceptions.Form(client, d, host, "en")
	}
	data := blockPageData{
		Lang:        "fr",
		Title:       service + " — accès bloqué / access blocked",
		Institution: cfg.Institution,
		Service:     service,
		Host:        host,
		PortalURL:   cfg.PortalURL,
		SignInURL:   p.signInURL(pol, client, host, d, now),
		Sections:    []blockSection{fr, en},
	}
	if preferEnglish(acceptLanguage) {
		data.Lang = "en"
		data.Title = service + " — access blocked / accès bloqué"
		data.Sections = []blockSection{en, fr}
	}
	var b bytes.Buffer
	if err := blockPageTmpl.Execute(&b, data); err != nil {
		// The template is fixed and its data are strings: this cannot
		// fail short of a bug. Serve a minimal page rather than nothing.
		return []byte("<!DOCTYPE html><title>Balise</title><p>Accès bloqué / Access blocked</p>")
	}
	return b.Bytes()
}

// setBlockHeaders sets the headers every block page carries.
func setBlockHeaders(h http.Header, n int) {
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
	h.Set("Content-Length", strconv.Itoa(n))
}

// proxyStatus builds an RFC 9209 Proxy-Status value.
func proxyStatus(errType, details string) string {
	var b strings.Builder
	b.WriteString("balise; error=")
	b.WriteString(errType)
	if details != "" {
		b.WriteString(`; details="`)
		for _, c := range details {
			switch {
			case c == '"' || c == '\\':
				b.WriteByte('\\')
				b.WriteRune(c)
			case c >= 0x20 && c < 0x7f:
				b.WriteRune(c)
			default:
				b.WriteByte('?')
			}
		}
		b.WriteByte('"')
	}
	return b.String()
}
