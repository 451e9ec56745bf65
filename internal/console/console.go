package console

import (
	"context"
	"embed"
	"errors"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/balise-net/balise/internal/exceptions"
)

//go:embed web
var assets embed.FS

// Roles of a signed-in user.
const (
	RoleOfficer = "officer" // reads and decides
	RoleAuditor = "auditor" // reads, searches, reports, exports
)

// Directory signs users in against the institution's directory and tells
// their groups (a *directory.Directory).
type Directory interface {
	Authenticate(ctx context.Context, user, password string) error
	Groups(ctx context.Context, user string) ([]string, error)
}

// Options configures a Console. The zero value of each optional field is
// the safe default documented on it.
type Options struct {
	// Register is the exception register. Required.
	Register *exceptions.Register
	// Directory signs directory users in. Nil: local accounts only.
	Directory Directory
	// Negotiate verifies a Kerberos (SPNEGO) Authorization header sent by
	// the browser to GET /login/sso and returns the user, for single
	// sign-on (the console's name must have an SPN in the keytab). Nil:
	// no single sign-on, passwords only.
	Negotiate func(header string, client netip.Addr) (user string, err error)
	// AccountsFile holds local accounts (see WriteAccount). Empty: none.
	AccountsFile string
	// Officers and Auditors name directory users or groups (a name
	// matches either, case-insensitively; a group by its name or DN).
	Officers, Auditors []string
	// SessionIdle ends a session unused for that long. Zero: 30 minutes.
	SessionIdle time.Duration
	// SessionMax ends a session that long after sign-in, used or not.
	// Zero: 12 hours.
	SessionMax time.Duration
	// Insecure serves cookies without the Secure attribute, for a
	// console on loopback without TLS. False (default): Secure cookies.
	Insecure bool
	// MaxAccountFailures is the number of failed sign-ins for one account
	// within FailureWindow past which further attempts are refused
	// without asking the directory. Zero: 5.
	MaxAccountFailures int
	// MaxSourceFailures is the same bound per source address. Zero: 20.
	MaxSourceFailures int
	// FailureWindow is the throttle's window. Zero: 15 minutes.
	FailureWindow time.Duration
	// ServiceName returns a service's display name. Nil: the id.
	ServiceName func(id string) string
	// Location is the time zone of dates shown and typed. Nil: local.
	Location *time.Location
	// Mailer sends e-mail notifications. Nil: none.
	Mailer *Mailer
	// NotifyTo are told of new requests by e-mail.
	NotifyTo []string
	// BaseURL is the console's public address, used in e-mails
	// ("https://balise.cisss.example:9465/"). Empty: no link.
	BaseURL string
	// VerifyEvery is how often the audit chain is verified in the
	// background (Run); the report also verifies when opened, at most once
	// a minute. Zero: 1 hour.
	VerifyEvery time.Duration
	// Clock returns the time. Nil: time.Now.
	Clock func() time.Time
	// Logger receives sign-ins, refusals and failures. Nil: discarded.
	Logger *slog.Logger
}

// Console is the officer console's HTTP handler.
type Console struct {
	opt      Options
	now      func() time.Time
	log      *slog.Logger
	reg      *exceptions.Register
	sessions *sessions
	throttle *throttle
	pages    map[string]*template.Template
	mux      *http.ServeMux

	verifyMu   sync.Mutex
	verifiedAt time.Time
	verifyErr  error
}

// New returns a Console.
func New(opt Options) (*Console, error) {
	if opt.Register == nil {
		return nil, errors.New("console: Register is required")
	}
	if opt.Directory == nil && opt.AccountsFile == "" {
		return nil, errors.New("console: a Directory or an AccountsFile is required")
	}
	if opt.SessionIdle <= 0 {
		opt.SessionIdle = 30 * time.Minute
	}
	if opt.SessionMax <= 0 {
		opt.SessionMax = 12 * time.Hour
	}
	if opt.MaxAccountFailures <= 0 {
		opt.MaxAccountFailures = 5
	}
	if opt.MaxSourceFailures <= 0 {
		opt.MaxSourceFailures = 20
	}
	if opt.FailureWindow <= 0 {
		opt.FailureWindow = 15 * time.Minute
	}
	if opt.ServiceName == nil {
		opt.ServiceName = func(id string) string { return id }
	}
	if opt.Location == nil {
		opt.Location = time.Local
	}
	if opt.VerifyEvery <= 0 {
		opt.VerifyEvery = time.Hour
	}
	if opt.Clock == nil {
		opt.Clock = time.Now
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	c := &Console{opt: opt, now: opt.Clock, log: opt.Logger, reg: opt.Register}
	c.sessions = newSessions(opt.SessionIdle, opt.SessionMax)
	c.throttle = newThrottle(opt.MaxAccountFailures, opt.MaxSourceFailures, opt.FailureWindow)
	if err := c.parseTemplates(); err != nil {
		return nil, err
	}
	if opt.Mailer != nil {
		opt.Register.OnChange(c.notify)
	}
	c.routes()
	return c, nil
}

func (c *Console) routes() {
	m := http.NewServeMux()
	static, _ := fs.Sub(assets, "web/static")
	m.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	m.HandleFunc("GET /login", c.loginPage)
	m.HandleFunc("POST /login", c.login)
	m.HandleFunc("GET /login/sso", c.loginSSO)
	m.HandleFunc("POST /logout", c.auth(c.logout))
	m.HandleFunc("GET /api/v1/session", c.auth(c.apiSession))
	m.HandleFunc("GET /api/v1/requests", c.auth(c.apiList))
	m.HandleFunc("GET /api/v1/requests/{id}", c.auth(c.apiGet))
	m.HandleFunc("POST /api/v1/requests/{id}/{action}", c.auth(c.decide))
	m.HandleFunc("GET /{$}", c.auth(c.queuePage))
	m.HandleFunc("GET /requests", c.auth(c.searchPage))
	m.HandleFunc("GET /requests/{id}", c.auth(c.requestPage))
	m.HandleFunc("GET /report", c.auth(c.reportPage))
	m.HandleFunc("GET /report.csv", c.auth(c.reportCSV))
	c.mux = m
}

// ServeHTTP answers the console's pages and API.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin") // never leaves the console; keeps Origin on form posts
	h.Set("X-Frame-Options", "DENY")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	if !strings.HasPrefix(r.URL.Path, "/static/") {
		h.Set("Cache-Control", "no-store")
	}
	if r.TLS != nil && !c.opt.Insecure {
		h.Set("Strict-Transport-Security", "max-age=31536000")
	}
	c.mux.ServeHTTP(w, r)
}

// Run verifies the audit chain every VerifyEvery until ctx ends.
func (c *Console) Run(ctx context.Context) {
	t := time.NewTicker(c.opt.VerifyEvery)
	defer t.Stop()
	c.verify(ctx, 0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			c.verify(ctx, 0)
		}
	}
}

// verify runs the register's Verify unless it ran less than fresh ago,
// and returns when it last ran and its result.
func (c *Console) verify(ctx context.Context, fresh time.Duration) (time.Time, error) {
	c.verifyMu.Lock()
	defer c.verifyMu.Unlock()
	now := c.now()
	if !c.verifiedAt.IsZero() && now.Sub(c.verifiedAt) < fresh {
		return c.verifiedAt, c.verifyErr
	}
	c.verifyErr = c.reg.Verify(ctx)
	c.verifiedAt = now
	if c.verifyErr != nil {
		c.log.Error("audit chain verification failed", "error", c.verifyErr)
	}
	return c.verifiedAt, c.verifyErr
}
