package identity

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/balise-net/balise/internal/directory"
	"github.com/balise-net/balise/internal/negotiate"
)

// Service answers the front-ends' questions about who is asking: the
// proxy verifies Kerberos tickets and asks for groups through it, the DNS
// filter asks which user an address is bound to. It joins the Kerberos
// verifier, the directory, the address bindings and the pseudonyms; any
// of the first two may be absent.
type Service struct {
	verifier   *negotiate.Verifier  // nil: no authentication
	dir        *directory.Directory // nil: users have no directory groups
	bindings   *Bindings
	pseudonyms *Pseudonyms
	lookups    chan struct{} // slots of background lookups (lookUp)
}

// ServiceOptions are the parts of a Service.
type ServiceOptions struct {
	// Verifier checks Negotiate (Kerberos) tokens. Nil: Verify always
	// fails with ErrNoAuthentication.
	Verifier *negotiate.Verifier
	// Directory gives users' groups. Nil: users are known by name only.
	Directory *directory.Directory
	// Bindings tie addresses to the users last authenticated from them.
	// Required.
	Bindings *Bindings
	// Pseudonyms name users in decision lines. Nil: users never appear in
	// them.
	Pseudonyms *Pseudonyms
	// Registerer receives balise_identity_bound_addresses and
	// balise_identity_bindings_evicted_total (no address nor user in any
	// label). Nil: not registered.
	Registerer prometheus.Registerer
}

// ErrNoAuthentication is returned by Verify when no verifier is
// configured.
var ErrNoAuthentication = errors.New("identity: no authentication configured")

// NewService joins the parts. Bindings is required.
func NewService(o ServiceOptions) (*Service, error) {
	if o.Bindings == nil {
		return nil, errors.New("identity: bindings are required")
	}
	s := &Service{verifier: o.Verifier, dir: o.Directory, bindings: o.Bindings, pseudonyms: o.Pseudonyms,
		lookups: make(chan struct{}, maxLookups)}
	if o.Registerer != nil {
		for _, c := range []prometheus.Collector{
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "balise_identity_bound_addresses",
				Help: "Client addresses tied to the users last authenticated from them (within identity.binding_ttl)."},
				func() float64 { return float64(s.bindings.Stats().Addresses) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "balise_identity_bindings_evicted_total",
				Help: "Address bindings forgotten early because the table was full."},
				func() float64 { return float64(s.bindings.Stats().Evicted) }),
		} {
			if err := o.Registerer.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return s, nil
}

// ReloadKeytab re-reads the Kerberos keytab (after the service account's
// password changed); on failure the keys in force are kept.
func (s *Service) ReloadKeytab() error {
	if s.verifier == nil {
		return nil
	}
	return s.verifier.Reload()
}

// Verified is who a Negotiate header proved to be.
type Verified struct {
	// User is the authenticated user, without realm, in canonical form.
	User string
	// Reply is the header value to send back ("" when there is none).
	Reply string
	// Expires is when the client's ticket ends: an authenticated
	// connection is asked again past it.
	Expires time.Time
}

// Verify checks an HTTP Negotiate header value sent by client. Failures
// are *negotiate.Error values, whose Reason is a metric label.
func (s *Service) Verify(header string, client netip.Addr) (Verified, error) {
	if s.verifier == nil {
		return Verified{}, ErrNoAuthentication
	}
	r, err := s.verifier.Verify(header, client)
	if err != nil {
		return Verified{}, err
	}
	v := Verified{User: Canonical(r.User), Expires: r.Expires}
	if len(r.ResponseToken) > 0 {
		v.Reply = r.Header()
	}
	return v, nil
}

// Groups returns user's directory groups, waiting at most the directory's
// timeout (the directory gives the last known memberships while it is
// unreachable). Nil when there is no directory, the user is unknown to
// it, or nothing is known in time: the user is then decided by name and
// network groups alone.
func (s *Service) Groups(ctx context.Context, user string) []string {
	if s.dir == nil || user == "" {
		return nil
	}
	g, err := s.dir.Groups(ctx, user)
	if err != nil {
		return nil
	}
	return g
}

// Bind records that user authenticated from client at now.
func (s *Service) Bind(client netip.Addr, user string, now time.Time) {
	s.bindings.Bind(client, user, now)
}

// LogName is how user appears in proxy decision lines, per identity.log:
// "" (none), a pseudonym, or the name.
func (s *Service) LogName(user string) string {
	if s.pseudonyms == nil || user == "" {
		return ""
	}
	return s.pseudonyms.Name(user)
}

// Directory returns the directory client (nil without a [directory]),
// for the officer console's sign-in.
func (s *Service) Directory() *directory.Directory { return s.dir }

// Bindings returns the address bindings the service keeps.
func (s *Service) Bindings() *Bindings { return s.bindings }

// Bound returns the user bound to client (while exactly one is, see
// Bindings.User) with that user's groups as last known, never waiting on
// the directory: it serves the DNS filter's hot path.
func (s *Service) Bound(client netip.Addr, now time.Time) (user string, groups []string, ok bool) {
	user, ok = s.bindings.User(client, now)
	if !ok {
		return "", nil, false
	}
	if s.dir != nil {
		var cached bool
		if groups, cached = s.dir.Cached(user); !cached {
			s.lookUp(user)
		}
	}
	return user, groups, true
}

// lookUp asks the directory for user's groups in the background, so that
// the next Bound has them: a binding learnt from another node (or one
// older than the cache) arrives without them. At most maxLookups run at
// once; beyond, the lookup is left to a later call.
func (s *Service) lookUp(user string) {
	select {
	case s.lookups <- struct{}{}:
	default:
		return
	}
	go func() {
		defer func() { <-s.lookups }()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s.dir.Groups(ctx, user)
	}()
}

// maxLookups bounds the background directory lookups of Bound.
const maxLookups = 4
