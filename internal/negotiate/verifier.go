package negotiate

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jcmturner/gokrb5/v8/iana/flags"
	"github.com/jcmturner/gokrb5/v8/keytab"
	"github.com/jcmturner/gokrb5/v8/messages"
	"github.com/jcmturner/gokrb5/v8/types"
)

// Options configure a Verifier. Keytab and ServicePrincipal are required;
// the other zero values are the documented defaults.
type Options struct {
	// Keytab is the path of the keytab holding the service principal's
	// keys (exported from AD for the proxy's service account).
	Keytab string
	// ServicePrincipal is the proxy's SPN, HTTP/<the proxy name browsers
	// are configured with>, optionally @REALM. Without a realm, the realm
	// of the keytab's entries for it (which must be one).
	ServicePrincipal string
	// MaxClockSkew is the largest difference accepted between the
	// client's clock and the proxy's. Zero: 5 minutes, Kerberos's default.
	MaxClockSkew time.Duration
	// ReplayCacheSize bounds the authenticators remembered to refuse
	// replays (about 50 bytes each). Zero: 200000. When it is full of
	// authenticators still within the clock skew, the oldest is forgotten
	// and counted (Stats.ReplayEvicted).
	ReplayCacheSize int
	// DecodePAC reads the account name from the ticket's PAC
	// (Result.AccountName). A PAC that does not decode is ignored, never a
	// failure. False: the PAC is not read; groups come from the directory.
	DecodePAC bool
}

// Verifier checks Negotiate (Kerberos) Proxy-Authorization headers. It is
// safe for concurrent use.
type Verifier struct {
	path   string
	spn    types.PrincipalName // as the keytab spells it
	realm  string
	skew   time.Duration
	pac    bool
	kt     atomic.Pointer[keytab.Keytab]
	replay *replayCache
}

// Result is an accepted authentication.
type Result struct {
	// User is the client principal's name without the realm (alice).
	User string
	// Realm is the client's realm (CHUS.LOCAL).
	Realm string
	// ResponseToken is the SPNEGO token to send back, base64-encoded, in
	// a Proxy-Authenticate: Negotiate header (see Header). It carries an
	// AP-REP when the client asked for mutual authentication.
	ResponseToken []byte
	// Expires is when the client's ticket ends.
	Expires time.Time
	// AccountName is the PAC's account name (sAMAccountName), when
	// Options.DecodePAC is set and the PAC decoded; else empty.
	AccountName string
}

// Header returns the Proxy-Authenticate value carrying ResponseToken.
func (r Result) Header() string {
	return "Negotiate " + base64.StdEncoding.EncodeToString(r.ResponseToken)
}

// New loads the keytab and checks that it holds keys for the service
// principal.
func New(opts Options) (*Verifier, error) {
	if opts.Keytab == "" {
		return nil, errors.New("negotiate: keytab is required")
	}
	name, realm, _ := strings.Cut(opts.ServicePrincipal, "@")
	if !strings.Contains(name, "/") || strings.HasPrefix(name, "/") || strings.HasSuffix(name, "/") {
		return nil, fmt.Errorf("negotiate: service principal %q: want HTTP/host[@REALM]", opts.ServicePrincipal)
	}
	if opts.MaxClockSkew < 0 || opts.ReplayCacheSize < 0 {
		return nil, errors.New("negotiate: negative clock skew or replay cache size")
	}
	v := &Verifier{path: opts.Keytab, realm: realm, skew: opts.MaxClockSkew, pac: opts.DecodePAC}
	if v.skew == 0 {
		v.skew = 5 * time.Minute
	}
	size := opts.ReplayCacheSize
	if size == 0 {
		size = 200000
	}
	v.replay = newReplayCache(size)
	kt, spn, realm, err := load(opts.Keytab, name, realm)
	if err != nil {
		return nil, err
	}
	v.spn, v.realm = spn, realm
	v.kt.Store(kt)
	return v, nil
}

// load reads a keytab and finds the entries for name (compared without
// regard to case) in realm, or in the keytab's one realm for name.
func load(path, name, realm string) (*keytab.Keytab, types.PrincipalName, string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, types.PrincipalName{}, "", fmt.Errorf("negotiate: %w", err)
	}
	kt := keytab.New()
	if err := kt.Unmarshal(b); err != nil {
		return nil, types.PrincipalName{}, "", fmt.Errorf("negotiate: keytab %s: %w", path, err)
	}
	var spn types.PrincipalName
	realms := map[string]bool{}
	for _, e := range kt.Entries {
		if strings.EqualFold(strings.Join(e.Principal.Components, "/"), name) && (realm == "" || e.Principal.Realm == realm) {
			spn = types.NewPrincipalName(e.Principal.NameType, strings.Join(e.Principal.Components, "/"))
			realms[e.Principal.Realm] = true
		}
	}
	switch len(realms) {
	case 0:
		return nil, spn, "", fmt.Errorf("negotiate: keytab %s holds no key for %s", path, name)
	case 1:
		for r := range realms {
			realm = r
		}
	default:
		return nil, spn, "", fmt.Errorf("negotiate: keytab %s holds %s in several realms; name one", path, name)
	}
	return kt, spn, realm, nil
}

// Reload reads the keytab file again (after the service account's keys
// changed). On error the keys in use are kept.
func (v *Verifier) Reload() error {
	kt, _, _, err := load(v.path, strings.Join(v.spn.NameString, "/"), v.realm)
	if err != nil {
		return err
	}
	v.kt.Store(kt)
	return nil
}

// ServicePrincipal returns the principal tickets must be for, with realm.
func (v *Verifier) ServicePrincipal() string {
	return v.spn.PrincipalNameString() + "@" + v.realm
}

// maxHeader bounds the header: a ticket with a large PAC (users in
// hundreds of groups) reaches 48 KB in base64.
const maxHeader = 64 << 10

// Verify checks a Proxy-Authorization header value sent by client. It
// returns the authenticated user, or an *Error saying why not.
func (v *Verifier) Verify(header string, client netip.Addr) (Result, error) {
	if header == "" {
		return Result{}, fail(NoHeader, "")
	}
	if len(header) > maxHeader {
		return Result{}, fail(BadToken, "header of %d bytes", len(header))
	}
	scheme, b64, _ := strings.Cut(strings.TrimSpace(header), " ")
	switch {
	case strings.EqualFold(scheme, "NTLM"):
		return Result{}, fail(NTLM, "NTLM is refused, Kerberos only")
	case !strings.EqualFold(scheme, "Negotiate"):
		return Result{}, fail(NotNegotiate, "scheme %.20q", scheme)
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(b64))
	if err != nil || len(raw) == 0 {
		return Result{}, fail(BadToken, "not base64")
	}
	tok, err := parseToken(raw)
	if err != nil {
		return Result{}, err
	}
	return v.verifyAPReq(tok, client)
}

// verifyAPReq does what RFC 4120 §3.2.3 asks of a server receiving an
// AP-REQ: the ticket decrypts with the service key, is within its times and
// addresses; the authenticator decrypts with the session key, names the
// ticket's client, is within the clock skew and is not a replay.
func (v *Verifier) verifyAPReq(tok token, client netip.Addr) (Result, error) {
	ap := &tok.apReq
	t := &ap.Ticket
	if !strings.EqualFold(strings.Join(t.SName.NameString, "/"), strings.Join(v.spn.NameString, "/")) || !strings.EqualFold(t.Realm, v.realm) {
		return Result{}, fail(WrongService, "ticket for %s@%s", t.SName.PrincipalNameString(), t.Realm)
	}
	if types.IsFlagSet(&ap.APOptions, flags.APOptionUseSessionKey) {
		return Result{}, fail(BadToken, "user-to-user tickets are not supported")
	}
	kt := v.kt.Load()
	key, _, err := kt.GetEncryptionKey(v.spn, v.realm, t.EncPart.KVNO, t.EncPart.EType)
	if err != nil {
		return Result{}, fail(NoKey, "kvno %d etype %d", t.EncPart.KVNO, t.EncPart.EType)
	}
	if err := t.Decrypt(key); err != nil {
		return Result{}, fail(Decrypt, "ticket: %v", err)
	}
	now := time.Now()
	enc := &t.DecryptedEncPart
	if types.IsFlagSet(&enc.Flags, flags.Invalid) || enc.StartTime.Sub(now) > v.skew {
		return Result{}, fail(Expired, "ticket not yet valid")
	}
	if now.Sub(enc.EndTime) > v.skew {
		return Result{}, fail(Expired, "ticket expired at %v", enc.EndTime)
	}
	if len(enc.CAddr) > 0 && (!client.IsValid() || !types.HostAddressesContains(enc.CAddr, types.HostAddressFromNetIP(client.AsSlice()))) {
		return Result{}, fail(Address, "client %v not in the ticket's addresses", client)
	}
	if err := ap.DecryptAuthenticator(enc.Key); err != nil {
		return Result{}, fail(Decrypt, "authenticator")
	}
	a := &ap.Authenticator
	if !a.CName.Equal(enc.CName) || a.CRealm != t.DecryptedEncPart.CRealm {
		return Result{}, fail(Decrypt, "authenticator names another client")
	}
	ct := a.CTime.Add(time.Duration(a.Cusec) * time.Microsecond)
	if d := now.Sub(ct); d > v.skew || -d > v.skew {
		return Result{}, fail(ClockSkew, "client clock off by %v", d.Round(time.Second))
	}
	if !v.replay.add(replayKey(t, a), ct.Add(v.skew), now) {
		return Result{}, fail(Replay, "")
	}
	res := Result{
		User:    strings.Join(enc.CName.NameString, "/"),
		Realm:   enc.CRealm,
		Expires: enc.EndTime,
	}
	res.ResponseToken, err = responseToken(tok, enc.Key)
	if err != nil {
		return Result{}, fail(BadToken, "response: %v", err)
	}
	if v.pac {
		res.AccountName = v.pacName(t)
	}
	return res, nil
}

// pacName returns the PAC's account name, or "" for a ticket without a
// PAC or one that does not decode.
func (v *Verifier) pacName(t *messages.Ticket) (name string) {
	defer func() {
		if recover() != nil {
			name = ""
		}
	}()
	ok, pac, err := t.GetPACType(v.kt.Load(), &v.spn, log.New(io.Discard, "", 0))
	if !ok || err != nil || pac.KerbValidationInfo == nil {
		return ""
	}
	return pac.KerbValidationInfo.EffectiveName.Value
}

// Stats are a Verifier's counters.
type Stats struct {
	// ReplayEntries are the authenticators remembered.
	ReplayEntries int
	// ReplayEvicted are authenticators forgotten within the clock skew
	// because the replay cache was full.
	ReplayEvicted uint64
}

// Stats returns the Verifier's counters.
func (v *Verifier) Stats() Stats {
	n, ev := v.replay.stats()
	return Stats{ReplayEntries: n, ReplayEvicted: ev}
}
