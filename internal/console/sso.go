package console

import (
	"net/http"
	"net/netip"
	"strings"
)

// loginSSO signs an officer in with the workstation's Kerberos session:
// 401 Negotiate, then the browser's ticket, verified by Options.Negotiate;
// the role comes from the directory as for a password sign-in. Failures
// count against the source like wrong passwords.
func (c *Console) loginSSO(w http.ResponseWriter, r *http.Request) {
	if c.opt.Negotiate == nil || c.opt.Directory == nil {
		http.NotFound(w, r)
		return
	}
	l := lang(w, r)
	src := source(r)
	now := c.now()
	next := safeNext(r.URL.Query().Get("next"))
	fail := func(status int, fr, en string) {
		if status == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", "Negotiate")
		}
		msg := fr
		if l == "en" {
			msg = en
		}
		c.render(w, r, status, "login", l, nil, map[string]any{"Next": next, "Error": msg, "SSO": false})
	}
	h := r.Header.Get("Authorization")
	if !strings.HasPrefix(h, "Negotiate ") {
		fail(http.StatusUnauthorized, "Votre navigateur n'a pas présenté la session de ce poste. Connectez-vous avec votre mot de passe.",
			"Your browser did not present this workstation's session. Sign in with your password.")
		return
	}
	if ok, _ := c.throttle.allowed("sso:"+src, src, now); !ok {
		fail(http.StatusTooManyRequests, "Trop de tentatives de connexion échouées. Réessayez dans quelques minutes.",
			"Too many failed sign-ins. Try again in a few minutes.")
		return
	}
	client, _ := netip.ParseAddr(src)
	user, err := c.opt.Negotiate(h, client)
	if err != nil {
		c.throttle.fail("sso:"+src, src, now)
		c.log.Warn("console: single sign-on refused", "source", src, "error", err)
		fail(http.StatusUnauthorized, "La session de ce poste n'a pas pu être vérifiée. Connectez-vous avec votre mot de passe.",
			"This workstation's session could not be verified. Sign in with your password.")
		return
	}
	groups, err := c.opt.Directory.Groups(r.Context(), user)
	if err != nil {
		c.log.Error("console: single sign-on: directory lookup failed", "user", user, "error", err)
		fail(http.StatusServiceUnavailable, "L'annuaire ne répond pas. Réessayez dans quelques minutes.",
			"The directory does not answer. Try again in a few minutes.")
		return
	}
	name := strings.ToLower(user)
	role := ""
	switch {
	case matches(c.opt.Officers, name, groups):
		role = RoleOfficer
	case matches(c.opt.Auditors, name, groups):
		role = RoleAuditor
	}
	if role == "" {
		c.log.Warn("console: single sign-on of a user without a console role", "user", name, "source", src, "error", errNoRole)
		fail(http.StatusForbidden, "Votre compte n'a pas accès à la console.", "Your account has no access to the console.")
		return
	}
	c.startSession(w, r, name, role, src, now, next)
}
