package console

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/balise-net/balise/internal/directory"
)

// cookieName is the session cookie's name: with the __Host- prefix when
// Secure, so that no other host or path can set it.
func (c *Console) cookieName() string {
	if c.opt.Insecure {
		return "balise_session"
	}
	return "__Host-balise_session"
}

func source(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// wantsJSON reports whether the client is a script (JSON answers) rather
// than a browser: a CSRF header, a JSON body or Accept, or an /api/ path
// that a browser did not navigate to (a browser's form post accepts
// text/html).
func wantsJSON(r *http.Request) bool {
	accept := r.Header.Get("Accept")
	switch {
	case r.Header.Get("X-CSRF-Token") != "", strings.Contains(accept, "application/json"),
		strings.HasPrefix(r.Header.Get("Content-Type"), "application/json"):
		return true
	case strings.Contains(accept, "text/html"):
		return false
	}
	return strings.HasPrefix(r.URL.Path, "/api/")
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// apiError is the body of an API refusal.
type apiError struct {
	Error   string `json:"error"`
	Message string `json:"message"`
}

// refuse answers a refusal as JSON for scripts and as a page for browsers.
func (c *Console) refuse(w http.ResponseWriter, r *http.Request, status int, code, fr, en string) {
	if wantsJSON(r) {
		writeJSON(w, status, apiError{Error: code, Message: en})
		return
	}
	l := lang(w, r)
	msg := fr
	if l == "en" {
		msg = en
	}
	c.render(w, r, status, "error", l, nil, map[string]any{"Status": status, "Message": msg})
}

// handler is a page or call that needs a session.
type handler func(w http.ResponseWriter, r *http.Request, s session)

// auth wraps h: no session is 401 (scripts) or a redirect to the
// sign-in page (browsers); a POST needs the session's CSRF token (header
// X-CSRF-Token or form field csrf_token) and, when the browser says
// where it comes from, this console's origin.
func (c *Console) auth(h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ck, _ := r.Cookie(c.cookieName())
		var s session
		ok := false
		if ck != nil {
			s, ok = c.sessions.get(ck.Value, c.now())
		}
		if !ok {
			if wantsJSON(r) || r.Method != http.MethodGet {
				c.refuse(w, r, http.StatusUnauthorized, "unauthenticated",
					"Votre session a expiré ou vous n'êtes pas connecté. Reconnectez-vous.",
					"Your session has expired or you are not signed in. Sign in again.")
				return
			}
			http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		if r.Method == http.MethodPost {
			if o := r.Header.Get("Origin"); o != "" && !sameOrigin(o, r) {
				c.refuse(w, r, http.StatusForbidden, "csrf", "Origine de la requête refusée.", "Request origin refused.")
				return
			}
			token := r.Header.Get("X-CSRF-Token")
			if token == "" && strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
				r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
				token = r.PostFormValue("csrf_token")
			}
			if !s.csrfOK(token) {
				c.log.Warn("console: state change refused: missing or wrong CSRF token", "user", s.user, "path", r.URL.Path, "source", source(r))
				c.refuse(w, r, http.StatusForbidden, "csrf", "Jeton anti-falsification absent ou invalide. Rechargez la page et recommencez.",
					"Missing or invalid anti-forgery token. Reload the page and try again.")
				return
			}
		}
		h(w, r, s)
	}
}

func sameOrigin(origin string, r *http.Request) bool {
	u, err := url.Parse(origin)
	return err == nil && u.Host == r.Host
}

func (c *Console) loginPage(w http.ResponseWriter, r *http.Request) {
	l := lang(w, r)
	c.render(w, r, http.StatusOK, "login", l, nil, map[string]any{"Next": safeNext(r.URL.Query().Get("next")), "SSO": c.opt.Negotiate != nil})
}

// safeNext keeps a post-sign-in destination on this console.
func safeNext(n string) string {
	if !strings.HasPrefix(n, "/") || strings.HasPrefix(n, "//") || strings.HasPrefix(n, "/\\") || strings.ContainsAny(n, "\r\n") {
		return "/"
	}
	return n
}

// errNoRole: the user signed in but is neither officer nor auditor.
var errNoRole = errors.New("no console role")

func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	if o := r.Header.Get("Origin"); o != "" && !sameOrigin(o, r) {
		// Another site's page signing the browser in (login CSRF).
		c.refuse(w, r, http.StatusForbidden, "csrf", "Origine de la requête refusée.", "Request origin refused.")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	if err := r.ParseForm(); err != nil {
		c.refuse(w, r, http.StatusBadRequest, "bad_request", "Formulaire invalide.", "Invalid form.")
		return
	}
	user := strings.TrimSpace(r.PostFormValue("username"))
	pw := r.PostFormValue("password")
	src := source(r)
	now := c.now()
	l := lang(w, r)
	failPage := func(status int, fr, en string) {
		if wantsJSON(r) {
			writeJSON(w, status, apiError{Error: "login_failed", Message: en})
			return
		}
		msg := fr
		if l == "en" {
			msg = en
		}
		c.render(w, r, status, "login", l, nil, map[string]any{"Next": safeNext(r.PostFormValue("next")), "Error": msg, "User": user})
	}
	if user == "" || pw == "" || len(user) > 256 || len(pw) > 1024 {
		failPage(http.StatusUnauthorized, "Nom d'utilisateur ou mot de passe incorrect.", "Wrong user name or password.")
		return
	}
	if ok, wait := c.throttle.allowed(user, src, now); !ok {
		c.log.Warn("console: sign-in throttled", "user", user, "source", src)
		w.Header().Set("Retry-After", strconv.Itoa(int(wait/time.Second)+1))
		failPage(http.StatusTooManyRequests, "Trop de tentatives de connexion échouées. Réessayez dans quelques minutes.",
			"Too many failed sign-ins. Try again in a few minutes.")
		return
	}
	name, role, err := c.authenticate(r.Context(), user, pw)
	switch {
	case errors.Is(err, directory.ErrUnavailable):
		c.log.Error("console: sign-in impossible: directory unavailable", "user", user, "error", err)
		failPage(http.StatusServiceUnavailable, "L'annuaire ne répond pas. Réessayez dans quelques minutes.",
			"The directory does not answer. Try again in a few minutes.")
		return
	case err != nil:
		c.throttle.fail(user, src, now)
		c.log.Warn("console: sign-in failed", "user", user, "source", src, "error", err)
		failPage(http.StatusUnauthorized, "Nom d'utilisateur ou mot de passe incorrect, ou compte sans accès à la console.",
			"Wrong user name or password, or an account without access to the console.")
		return
	}
	c.throttle.succeed(user)
	c.startSession(w, r, name, role, src, now, safeNext(r.PostFormValue("next")))
}

// startSession opens a session for name with role (a fresh id: no
// session fixation), sets its cookie, and answers the sign-in.
func (c *Console) startSession(w http.ResponseWriter, r *http.Request, name, role, src string, now time.Time, next string) {
	if ck, _ := r.Cookie(c.cookieName()); ck != nil {
		c.sessions.remove(ck.Value) // no session fixation
	}
	id, s := c.sessions.create(name, role, now)
	http.SetCookie(w, &http.Cookie{Name: c.cookieName(), Value: id, Path: "/", HttpOnly: true,
		Secure: !c.opt.Insecure, SameSite: http.SameSiteStrictMode})
	c.log.Info("console: signed in", "user", name, "role", role, "source", src)
	if wantsJSON(r) {
		writeJSON(w, http.StatusOK, sessionJSON{User: s.user, Role: s.role, CSRFToken: s.csrf})
		return
	}
	http.Redirect(w, r, next, http.StatusSeeOther)
}

// authenticate checks user's password against the local accounts, then
// the directory, and returns the user's canonical name and role.
func (c *Console) authenticate(ctx context.Context, user, pw string) (string, string, error) {
	if c.opt.AccountsFile != "" {
		accts, err := readAccounts(c.opt.AccountsFile)
		if err != nil {
			c.log.Error("console: accounts file unreadable", "error", err)
		}
		for _, a := range accts {
			if strings.EqualFold(a.user, user) {
				if !checkPassword(a.hash, pw) {
					return "", "", errors.New("wrong password")
				}
				return a.user, a.role, nil
			}
		}
	}
	if c.opt.Directory == nil {
		checkPassword(dummyHash, pw)
		return "", "", errors.New("unknown user")
	}
	if err := c.opt.Directory.Authenticate(ctx, user, pw); err != nil {
		return "", "", err
	}
	name := strings.ToLower(user)
	groups, err := c.opt.Directory.Groups(ctx, user)
	if err != nil {
		return "", "", err
	}
	switch {
	case matches(c.opt.Officers, name, groups):
		return name, RoleOfficer, nil
	case matches(c.opt.Auditors, name, groups):
		return name, RoleAuditor, nil
	}
	return "", "", errNoRole
}

// matches reports whether one of names is the user or one of its groups.
func matches(names []string, user string, groups []string) bool {
	for _, n := range names {
		if strings.EqualFold(n, user) {
			return true
		}
		for _, g := range groups {
			if strings.EqualFold(n, g) {
				return true
			}
		}
	}
	return false
}

// sameUser reports whether two user names are one person, ignoring case
// and a domain (alice, ALICE@CHUS.LOCAL, CHUS\alice).
func sameUser(a, b string) bool {
	base := func(s string) string {
		if i := strings.LastIndexByte(s, '\\'); i >= 0 {
			s = s[i+1:]
		}
		if i := strings.IndexByte(s, '@'); i >= 0 {
			s = s[:i]
		}
		return strings.ToLower(s)
	}
	return a != "" && b != "" && base(a) == base(b)
}

func (c *Console) logout(w http.ResponseWriter, r *http.Request, s session) {
	if ck, _ := r.Cookie(c.cookieName()); ck != nil {
		c.sessions.remove(ck.Value)
	}
	http.SetCookie(w, &http.Cookie{Name: c.cookieName(), Value: "", Path: "/", MaxAge: -1, HttpOnly: true,
		Secure: !c.opt.Insecure, SameSite: http.SameSiteStrictMode})
	c.log.Info("console: signed out", "user", s.user)
	if wantsJSON(r) {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// sessionJSON is GET /api/v1/session.
type sessionJSON struct {
	User      string `json:"user"`
	Role      string `json:"role"`
	CSRFToken string `json:"csrf_token"`
}

func (c *Console) apiSession(w http.ResponseWriter, r *http.Request, s session) {
	writeJSON(w, http.StatusOK, sessionJSON{User: s.user, Role: s.role, CSRFToken: s.csrf})
}
