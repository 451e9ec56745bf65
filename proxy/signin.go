package proxy

import (
	"bytes"
	"html/template"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/balise-net/balise/internal/policy"
)

// SignInPath is the portal's sign-in. A transparent proxy cannot answer
// 407, so a workstation whose verdict could change with who asks is
// offered this page on its block page: it answers 401 Negotiate on the
// portal's own name (which browsers treat as an intranet site and
// authenticate to without prompting, per the institution's policy), binds
// the workstation's address to the user for identity.binding_ttl, and
// says so. The DNS filter and the transparent proxy then decide for that
// user while the address is not shared.
const SignInPath = "/signin"

// signInURL is the sign-in link of a block page ("" when not offered:
// no portal URL, no authentication, or nothing a person could change).
func (p *Proxy) signInURL(pol *policy.Policy, client netip.Addr, host string, d policy.Decision, now time.Time) string {
	base := p.cfg().PortalURL
	if base == "" || pol == nil || !p.signInOffered(pol, client, host, d, now) {
		return ""
	}
	return strings.TrimSuffix(base, "/") + SignInPath
}

var signInTmpl = template.Must(template.New("signin").Parse(`<!DOCTYPE html>
<html lang="fr">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.TitleFR}} / {{.TitleEN}}</title>
<style>body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;color:#1a1a1a;line-height:1.5}
h1{font-size:1.4rem}section+section{border-top:1px solid #888;margin-top:1.5rem;padding-top:1rem}</style></head>
<body><main>
<section lang="fr"><h1>{{.TitleFR}}</h1><p>{{.FR}}</p></section>
<section lang="en"><h1>{{.TitleEN}}</h1><p>{{.EN}}</p></section>
</main></body></html>
`))

type signInPage struct {
	TitleFR, TitleEN, FR, EN string
}

// serveSignIn answers GET /signin on the portal (see SignInPath).
func (p *Proxy) serveSignIn(w http.ResponseWriter, r *http.Request, client netip.Addr) {
	s := p.cfg()
	if s.Auth == nil {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if !s.authClient(client) {
		p.writeSignIn(w, r, http.StatusForbidden, signInPage{
			TitleFR: "Identification non offerte", TitleEN: "Sign-in not offered",
			FR: "Ce poste de travail ne peut pas s'identifier auprès de Balise.",
			EN: "This workstation cannot sign in to Balise."})
		return
	}
	now := p.opts.Clock()
	h := r.Header.Get("Authorization")
	if h == "" {
		p.m.auth[authChallenged].Inc()
		w.Header().Set("WWW-Authenticate", "Negotiate")
		p.writeSignIn(w, r, http.StatusUnauthorized, signInPage{
			TitleFR: "Identification requise", TitleEN: "Sign-in required",
			FR: "Votre navigateur n'a pas présenté votre identité. Ouvrez une session sur ce poste avec votre compte de l'établissement, puis rechargez cette page.",
			EN: "Your browser did not present your identity. Log on to this workstation with your institution account, then reload this page."})
		return
	}
	v, err := s.Auth.Verify(h, client)
	if err != nil {
		p.m.auth[authFailed].Inc()
		if ok, dropped := p.refusalLog.Allow(time.Now()); ok {
			p.opts.Logger.Warn("sign-in refused", "client", client.String(), "error", err.Error(), "not_logged_before", dropped)
		}
		w.Header().Set("WWW-Authenticate", "Negotiate")
		p.writeSignIn(w, r, http.StatusUnauthorized, signInPage{
			TitleFR: "Identification refusée", TitleEN: "Sign-in refused",
			FR: "Votre identité n'a pas pu être vérifiée. Communiquez avec le service informatique.",
			EN: "Your identity could not be verified. Please contact IT support."})
		return
	}
	p.m.auth[authOK].Inc()
	s.Auth.Bind(client, v.User, now)
	if cc := connOf(r); cc != nil {
		cc.setIdentity(who{user: v.User, groups: s.Auth.Groups(r.Context(), v.User), expires: v.Expires})
	}
	if v.Reply != "" {
		w.Header().Set("WWW-Authenticate", v.Reply)
	}
	p.writeSignIn(w, r, http.StatusOK, signInPage{
		TitleFR: "Identification réussie", TitleEN: "Signed in",
		FR: "Ce poste est associé à votre compte pour un temps limité : les sites auxquels vous avez droit sont accessibles. Revenez à la page que vous consultiez et rechargez-la.",
		EN: "This workstation is tied to your account for a limited time: the sites you are entitled to are available. Go back to the page you were viewing and reload it."})
}

func (p *Proxy) writeSignIn(w http.ResponseWriter, r *http.Request, status int, pg signInPage) {
	var b bytes.Buffer
	signInTmpl.Execute(&b, pg)
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Content-Length", strconv.Itoa(b.Len()))
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		w.Write(b.Bytes())
	}
}
