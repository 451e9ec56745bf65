package negotiate

import (
	"encoding/base64"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jcmturner/gofork/encoding/asn1"
	"github.com/jcmturner/gokrb5/v8/client"
	"github.com/jcmturner/gokrb5/v8/config"
	"github.com/jcmturner/gokrb5/v8/credentials"
	"github.com/jcmturner/gokrb5/v8/crypto"
	"github.com/jcmturner/gokrb5/v8/gssapi"
	"github.com/jcmturner/gokrb5/v8/iana/chksumtype"
	"github.com/jcmturner/gokrb5/v8/iana/etypeID"
	"github.com/jcmturner/gokrb5/v8/iana/keyusage"
	"github.com/jcmturner/gokrb5/v8/keytab"
	"github.com/jcmturner/gokrb5/v8/messages"
	"github.com/jcmturner/gokrb5/v8/spnego"
	"github.com/jcmturner/gokrb5/v8/types"

	"github.com/balise-net/balise/internal/adtest"
)

var ad adtest.Shared

func TestMain(m *testing.M) {
	code := m.Run()
	ad.Close()
	os.Exit(code)
}

var client4 = netip.MustParseAddr("127.0.0.1")

// testKeytab writes a keytab for HTTP/proxy.test@TEST made from a
// password, for tests that need no DC.
func testKeytab(t *testing.T) string {
	t.Helper()
	kt := keytab.New()
	if err := kt.AddEntry("HTTP/proxy.test", "TEST", "secret", time.Now(), 1, etypeID.AES256_CTS_HMAC_SHA1_96); err != nil {
		t.Fatal(err)
	}
	b, err := kt.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "proxy.keytab")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func spnegoInit(t testing.TB, mechs []asn1.ObjectIdentifier, mechToken []byte) []byte {
	t.Helper()
	tok := spnego.SPNEGOToken{Init: true, NegTokenInit: spnego.NegTokenInit{MechTypes: mechs, MechTokenBytes: mechToken}}
	b, err := tok.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func wantReason(t *testing.T, what string, err error, want Reason) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) || e.Reason != want {
		t.Errorf("%s: Verify = %v, want reason %v", what, err, want)
	}
}

func TestRefusedHeaders(t *testing.T) {
	v, err := New(Options{Keytab: testKeytab(t), ServicePrincipal: "HTTP/proxy.test"})
	if err != nil {
		t.Fatal(err)
	}
	if got := v.ServicePrincipal(); got != "HTTP/proxy.test@TEST" {
		t.Errorf("ServicePrincipal() = %q", got)
	}
	ntlmNegotiate := append([]byte("NTLMSSP\x00\x01\x00\x00\x00"), make([]byte, 28)...)
	resp, _ := (&spnego.NegTokenResp{NegState: 1, SupportedMech: oidKRB5}).Marshal()
	tests := []struct {
		name, header string
		want         Reason
	}{
		{"empty", "", NoHeader},
		{"basic", "Basic YWxpY2U6cHc=", NotNegotiate},
		{"bearer", "Bearer x", NotNegotiate},
		{"ntlm scheme", "NTLM " + b64(ntlmNegotiate), NTLM},
		{"ntlm lower case", "ntlm " + b64(ntlmNegotiate), NTLM},
		{"raw ntlmssp in negotiate", "Negotiate " + b64(ntlmNegotiate), NTLM},
		{"spnego preferring ntlm", "Negotiate " + b64(spnegoInit(t, []asn1.ObjectIdentifier{oidNTLM, oidKRB5}, ntlmNegotiate)), NTLM},
		{"spnego without token", "Negotiate " + b64(spnegoInit(t, []asn1.ObjectIdentifier{oidKRB5}, nil)), BadToken},
		{"spnego other mech", "Negotiate " + b64(spnegoInit(t, []asn1.ObjectIdentifier{{1, 3, 6, 1, 4, 1, 311, 2, 2, 30}}, []byte{1})), BadToken},
		{"spnego garbage krb5 token", "Negotiate " + b64(spnegoInit(t, []asn1.ObjectIdentifier{oidKRB5}, []byte{0x60, 1, 2})), BadToken},
		{"continuation", "Negotiate " + b64(resp), BadToken},
		{"not base64", "Negotiate !!!", BadToken},
		{"empty token", "Negotiate ", BadToken},
		{"garbage", "Negotiate " + b64([]byte("hello world")), BadToken},
		{"huge", "Negotiate " + strings.Repeat("A", 70000), BadToken},
	}
	for _, tt := range tests {
		_, err := v.Verify(tt.header, client4)
		wantReason(t, tt.name, err, tt.want)
	}
	for _, r := range Reasons() {
		if strings.HasPrefix(r.String(), "reason(") {
			t.Errorf("reason %d has no name", r)
		}
	}
}

func TestNewErrors(t *testing.T) {
	kt := testKeytab(t)
	tests := []struct {
		opts Options
		want string
	}{
		{Options{ServicePrincipal: "HTTP/proxy.test"}, "keytab is required"},
		{Options{Keytab: kt, ServicePrincipal: "proxy.test"}, "want HTTP/host"},
		{Options{Keytab: kt, ServicePrincipal: "HTTP/other.test"}, "holds no key for HTTP/other.test"},
		{Options{Keytab: kt, ServicePrincipal: "HTTP/proxy.test@OTHER"}, "holds no key"},
		{Options{Keytab: filepath.Join(t.TempDir(), "none"), ServicePrincipal: "HTTP/proxy.test"}, "no such file"},
		{Options{Keytab: "/etc/hostname", ServicePrincipal: "HTTP/proxy.test"}, "keytab /etc/hostname"},
	}
	for _, tt := range tests {
		if _, err := New(tt.opts); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("New(%+v) = %v, want an error containing %q", tt.opts, err, tt.want)
		}
	}
	if _, err := New(Options{Keytab: kt, ServicePrincipal: "http/PROXY.test@TEST"}); err != nil {
		t.Errorf("SPN in another case: %v", err)
	}
}

func TestReplayCacheBound(t *testing.T) {
	c := newReplayCache(3)
	now := time.Now()
	key := func(i byte) [16]byte { return [16]byte{i} }
	for i := range byte(3) {
		if !c.add(key(i), now.Add(time.Minute), now) {
			t.Fatalf("add(%d) = false", i)
		}
	}
	if c.add(key(1), now.Add(time.Minute), now) {
		t.Error("a replay was accepted")
	}
	c.add(key(3), now.Add(time.Minute), now) // evicts 0
	if n, ev := c.stats(); n != 3 || ev != 1 {
		t.Errorf("stats = %d, %d, want 3, 1", n, ev)
	}
	// Expired entries go first, without counting as evictions.
	later := now.Add(2 * time.Minute)
	if !c.add(key(1), later.Add(time.Minute), later) {
		t.Error("an expired entry still refused")
	}
	if n, ev := c.stats(); n != 1 || ev != 1 {
		t.Errorf("stats = %d, %d, want 1, 1", n, ev)
	}
}

// kerberos is a realm with a proxy service and a logged-in user.
type kerberos struct {
	dc     *adtest.DC
	spn    string // HTTP/proxy.<realm>
	keytab string
	creds  adtest.Credentials
	conf   *config.Config
}

var (
	krbOnce sync.Once
	krb     kerberos
	krbErr  error
)

func setup(t testing.TB) *kerberos {
	t.Helper()
	dc := ad.DC(t)
	krbOnce.Do(func() {
		krbErr = func() error {
			k := kerberos{dc: dc, spn: "HTTP/proxy." + strings.ToLower(dc.Realm()), keytab: filepath.Join(dc.Dir(), "proxy.keytab")}
			if _, err := dc.AddUser("alice", "alice-pw"); err != nil {
				return err
			}
			if err := dc.AddService("proxysvc", k.spn, k.keytab); err != nil {
				return err
			}
			if err := dc.AddService("othersvc", "HTTP/other."+strings.ToLower(dc.Realm()), filepath.Join(dc.Dir(), "other.keytab")); err != nil {
				return err
			}
			var err error
			if k.creds, err = dc.Kinit("alice", "alice-pw"); err != nil {
				return err
			}
			if k.conf, err = config.Load(dc.Krb5Conf()); err != nil {
				return err
			}
			krb = k
			return nil
		}()
	})
	if krbErr != nil {
		t.Fatal(krbErr)
	}
	return &krb
}

// client returns a gokrb5 client logged in from alice's credential cache.
func (k *kerberos) client(t testing.TB) *client.Client {
	t.Helper()
	cc, err := credentials.LoadCCache(k.creds.CCache)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := client.NewFromCCache(cc, k.conf, client.DisablePAFXFAST(true))
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

func (k *kerberos) verifier(t testing.TB, opts Options) *Verifier {
	t.Helper()
	if opts.Keytab == "" {
		opts.Keytab = k.keytab
	}
	opts.ServicePrincipal = k.spn
	v, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// header is what gokrb5's SPNEGO client sends for spn.
func header(t testing.TB, cl *client.Client, spn string) string {
	t.Helper()
	ct, err := spnego.SPNEGOClient(cl, spn).InitSecContext()
	if err != nil {
		t.Fatal(err)
	}
	b, err := ct.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return "Negotiate " + b64(b)
}

// craft builds a Negotiate header whose authenticator is edited first.
func craft(t testing.TB, cl *client.Client, spn string, edit func(*types.Authenticator), tamper func(*messages.APReq)) (string, types.EncryptionKey) {
	t.Helper()
	tkt, key, err := cl.GetServiceTicket(spn)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := spnego.NewKRB5TokenAPREQ(cl, tkt, key, []int{gssapi.ContextFlagInteg, gssapi.ContextFlagMutual}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		auth, err := types.NewAuthenticator(cl.Credentials.Domain(), cl.Credentials.CName())
		if err != nil {
			t.Fatal(err)
		}
		auth.Cksum = types.Checksum{CksumType: chksumtype.GSSAPI, Checksum: make([]byte, 24)}
		auth.Cksum.Checksum[0] = 16
		auth.Cksum.Checksum[20] = gssapi.ContextFlagMutual
		edit(&auth)
		if tok.APReq, err = messages.NewAPReq(tkt, key, auth); err != nil {
			t.Fatal(err)
		}
	}
	if tamper != nil {
		tamper(&tok.APReq)
	}
	mt, err := tok.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return "Negotiate " + b64(spnegoInit(t, []asn1.ObjectIdentifier{oidMSKRB5, oidKRB5, oidNTLM}, mt)), key
}

func TestVerifyKerberos(t *testing.T) {
	k := setup(t)
	v := k.verifier(t, Options{DecodePAC: true})
	cl := k.client(t)
	h := header(t, cl, k.spn)
	res, err := v.Verify(h, client4)
	if err != nil {
		t.Fatal(err)
	}
	if res.User != "alice" || res.Realm != k.dc.Realm() || res.AccountName != "alice" || time.Until(res.Expires) < time.Hour {
		t.Errorf("Verify = %+v, want alice@%s", res, k.dc.Realm())
	}
	var resp spnego.SPNEGOToken
	if err := resp.Unmarshal(res.ResponseToken); err != nil || !resp.Resp || resp.NegTokenResp.State() != spnego.NegStateAcceptCompleted {
		t.Errorf("response token %x: %v, want accept-completed", res.ResponseToken, err)
	}
	if !strings.HasPrefix(res.Header(), "Negotiate oR") {
		t.Errorf("Header() = %q", res.Header())
	}
	_, err = v.Verify(h, client4)
	wantReason(t, "the same header again", err, Replay)
	// A new authenticator on the same ticket is fine.
	if _, err := v.Verify(header(t, cl, k.spn), client4); err != nil {
		t.Errorf("a second authenticator: %v", err)
	}
	if st := v.Stats(); st.ReplayEntries != 2 {
		t.Errorf("Stats = %+v, want 2 authenticators remembered", st)
	}

	// Without DecodePAC the PAC is not read.
	v2 := k.verifier(t, Options{})
	if res, err := v2.Verify(header(t, cl, k.spn), client4); err != nil || res.AccountName != "" || res.User != "alice" {
		t.Errorf("Verify without DecodePAC = %+v, %v", res, err)
	}
}

func TestMutualAuthentication(t *testing.T) {
	k := setup(t)
	v := k.verifier(t, Options{})
	cl := k.client(t)
	var sent types.Authenticator
	h, key := craft(t, cl, k.spn, func(a *types.Authenticator) { sent = *a }, nil)
	res, err := v.Verify(h, client4)
	if err != nil {
		t.Fatal(err)
	}
	var resp spnego.SPNEGOToken
	if err := resp.Unmarshal(res.ResponseToken); err != nil {
		t.Fatal(err)
	}
	if !resp.NegTokenResp.SupportedMech.Equal(oidMSKRB5) {
		t.Errorf("supported mech = %v, want the client's %v", resp.NegTokenResp.SupportedMech, oidMSKRB5)
	}
	var kt spnego.KRB5Token
	if err := kt.Unmarshal(resp.NegTokenResp.ResponseToken); err != nil || !kt.IsAPRep() {
		t.Fatalf("response token is not an AP-REP: %v", err)
	}
	plain, err := crypto.DecryptEncPart(kt.APRep.EncPart, key, keyusage.AP_REP_ENCPART)
	if err != nil {
		t.Fatal(err)
	}
	var part messages.EncAPRepPart
	if err := part.Unmarshal(plain); err != nil {
		t.Fatal(err)
	}
	if !part.CTime.Equal(sent.CTime.Truncate(time.Second)) || part.Cusec != sent.Cusec {
		t.Errorf("AP-REP time %v.%06d, want the authenticator's %v.%06d", part.CTime, part.Cusec, sent.CTime, sent.Cusec)
	}
}

func TestVerifyRefusesKerberos(t *testing.T) {
	k := setup(t)
	v := k.verifier(t, Options{MaxClockSkew: time.Minute})
	cl := k.client(t)

	h, _ := craft(t, cl, k.spn, func(a *types.Authenticator) { a.CTime = time.Now().Add(-3 * time.Minute) }, nil)
	_, err := v.Verify(h, client4)
	wantReason(t, "authenticator 3 minutes old", err, ClockSkew)
	h, _ = craft(t, cl, k.spn, func(a *types.Authenticator) { a.CTime = time.Now().Add(3 * time.Minute) }, nil)
	_, err = v.Verify(h, client4)
	wantReason(t, "authenticator 3 minutes ahead", err, ClockSkew)

	h, _ = craft(t, cl, k.spn, nil, func(ap *messages.APReq) { ap.Ticket.EncPart.Cipher[20] ^= 1 })
	_, err = v.Verify(h, client4)
	wantReason(t, "tampered ticket", err, Decrypt)
	h, _ = craft(t, cl, k.spn, nil, func(ap *messages.APReq) { ap.EncryptedAuthenticator.Cipher[20] ^= 1 })
	_, err = v.Verify(h, client4)
	wantReason(t, "tampered authenticator", err, Decrypt)
	h, _ = craft(t, cl, k.spn, nil, func(ap *messages.APReq) { ap.Ticket.EncPart.KVNO += 7 })
	_, err = v.Verify(h, client4)
	wantReason(t, "unknown key version", err, NoKey)

	_, err = v.Verify(header(t, cl, "HTTP/other."+strings.ToLower(k.dc.Realm())), client4)
	wantReason(t, "ticket for another service", err, WrongService)
}

// TestReloadKeytab changes the service account's password: tickets then
// carry a new key version, refused until the exported keytab is reloaded.
func TestReloadKeytab(t *testing.T) {
	k := setup(t)
	path := filepath.Join(k.dc.Dir(), "reload.keytab")
	spn := "HTTP/reload." + strings.ToLower(k.dc.Realm())
	if err := k.dc.AddService("reloadsvc", spn, path); err != nil {
		t.Fatal(err)
	}
	v, err := New(Options{Keytab: path, ServicePrincipal: spn})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(header(t, k.client(t), spn), client4); err != nil {
		t.Fatal(err)
	}
	if err := k.dc.SetPassword("reloadsvc", "new-service-password-1"); err != nil {
		t.Fatal(err)
	}
	_, err = v.Verify(header(t, k.client(t), spn), client4)
	wantReason(t, "ticket under the new key", err, NoKey)
	if err := k.dc.ExportKeytab(spn, path); err != nil {
		t.Fatal(err)
	}
	if err := v.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(header(t, k.client(t), spn), client4); err != nil {
		t.Errorf("after Reload: %v", err)
	}
	os.WriteFile(path, []byte("garbage"), 0o600)
	if err := v.Reload(); err == nil {
		t.Error("Reload of a garbage keytab succeeded")
	}
	if _, err := v.Verify(header(t, k.client(t), spn), client4); err != nil {
		t.Errorf("after a failed Reload the old keys should stay: %v", err)
	}
}

// BenchmarkVerify measures the CPU one authentication costs the proxy:
// base64, SPNEGO and AP-REQ decoding, two AES decryptions, the replay
// cache and the response token. Tokens are made before the timer starts.
func BenchmarkVerify(b *testing.B) {
	k := setup(b)
	for _, pac := range []bool{false, true} {
		name := "pac=off"
		if pac {
			name = "pac=on"
		}
		b.Run(name, func(b *testing.B) {
			v := k.verifier(b, Options{DecodePAC: pac})
			cl := k.client(b)
			headers := make([]string, b.N)
			for i := range headers {
				headers[i], _ = craft(b, cl, k.spn, func(a *types.Authenticator) {
					a.Cusec = i % 1000000
					a.CTime = time.Now().Add(time.Duration(i/1000000) * time.Second)
				}, nil)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				if _, err := v.Verify(headers[i], client4); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
