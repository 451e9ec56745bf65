package negotiate

import (
	"bytes"
	"encoding/binary"
	"time"

	"github.com/jcmturner/gofork/encoding/asn1"
	"github.com/jcmturner/gokrb5/v8/asn1tools"
	"github.com/jcmturner/gokrb5/v8/crypto"
	"github.com/jcmturner/gokrb5/v8/gssapi"
	"github.com/jcmturner/gokrb5/v8/iana/asnAppTag"
	"github.com/jcmturner/gokrb5/v8/iana/chksumtype"
	"github.com/jcmturner/gokrb5/v8/iana/flags"
	"github.com/jcmturner/gokrb5/v8/iana/keyusage"
	"github.com/jcmturner/gokrb5/v8/iana/msgtype"
	"github.com/jcmturner/gokrb5/v8/messages"
	"github.com/jcmturner/gokrb5/v8/spnego"
	"github.com/jcmturner/gokrb5/v8/types"
)

// Mechanisms a client may offer.
var (
	oidKRB5   = gssapi.OIDKRB5.OID()
	oidMSKRB5 = gssapi.OIDMSLegacyKRB5.OID()
	oidNTLM   = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 2, 2, 10}
)

// token is a Kerberos AP-REQ taken out of a Negotiate header.
type token struct {
	apReq  messages.APReq
	spnego bool                  // wrapped in SPNEGO (else a raw Kerberos GSS token)
	mech   asn1.ObjectIdentifier // the Kerberos OID the client named
}

// parseToken finds the AP-REQ in a Negotiate token: a SPNEGO NegTokenInit
// whose preferred mechanism is Kerberos with its optimistic token, or a
// raw Kerberos GSS-API token.
func parseToken(raw []byte) (token, error) {
	if bytes.HasPrefix(raw, []byte("NTLMSSP\x00")) {
		return token{}, fail(NTLM, "raw NTLMSSP in Negotiate")
	}
	if raw[0] == 0xa1 {
		return token{}, fail(BadToken, "a SPNEGO continuation; Kerberos takes one round")
	}
	tok := token{mech: oidKRB5}
	var mechToken []byte
	var sp spnego.SPNEGOToken
	if err := sp.Unmarshal(raw); err == nil && sp.Init {
		mechs := sp.NegTokenInit.MechTypes
		switch {
		case len(mechs) == 0:
			return token{}, fail(BadToken, "SPNEGO offers no mechanism")
		case mechs[0].Equal(oidNTLM):
			return token{}, fail(NTLM, "NTLM offered through SPNEGO, Kerberos only")
		case !mechs[0].Equal(oidKRB5) && !mechs[0].Equal(oidMSKRB5):
			return token{}, fail(BadToken, "preferred mechanism %v is not Kerberos", mechs[0])
		case len(sp.NegTokenInit.MechTokenBytes) == 0:
			return token{}, fail(BadToken, "SPNEGO without a Kerberos token")
		}
		tok.spnego, tok.mech, mechToken = true, mechs[0], sp.NegTokenInit.MechTokenBytes
	} else {
		mechToken = raw // perhaps a raw Kerberos token
	}
	var kt spnego.KRB5Token
	if err := kt.Unmarshal(mechToken); err != nil {
		return token{}, fail(BadToken, "%v", err)
	}
	if !kt.IsAPReq() {
		return token{}, fail(BadToken, "Kerberos token is not an AP-REQ")
	}
	tok.apReq = kt.APReq
	return tok, nil
}

// mutual reports whether the client asked for mutual authentication.
func (t *token) mutual() bool {
	if types.IsFlagSet(&t.apReq.APOptions, flags.APOptionMutualRequired) {
		return true
	}
	c := t.apReq.Authenticator.Cksum
	return c.CksumType == chksumtype.GSSAPI && len(c.Checksum) >= 24 &&
		binary.LittleEndian.Uint32(c.Checksum[20:24])&gssapi.ContextFlagMutual != 0
}

// encAPRepPart is RFC 4120's EncAPRepPart without the optional subkey and
// sequence number.
type encAPRepPart struct {
	CTime time.Time `asn1:"generalized,explicit,tag:0"`
	Cusec int       `asn1:"explicit,tag:1"`
}

// apRepToken returns the Kerberos GSS-API token carrying the AP-REP that
// proves to the client that the proxy holds the service key.
func apRepToken(a *types.Authenticator, sessionKey types.EncryptionKey) ([]byte, error) {
	b, err := asn1.Marshal(encAPRepPart{CTime: a.CTime.UTC().Truncate(time.Second), Cusec: a.Cusec})
	if err != nil {
		return nil, err
	}
	ed, err := crypto.GetEncryptedData(asn1tools.AddASNAppTag(b, asnAppTag.EncAPRepPart), sessionKey, keyusage.AP_REP_ENCPART, 0)
	if err != nil {
		return nil, err
	}
	rep, err := asn1.Marshal(messages.APRep{PVNO: 5, MsgType: msgtype.KRB_AP_REP, EncPart: ed})
	if err != nil {
		return nil, err
	}
	g, err := asn1.Marshal(oidKRB5)
	if err != nil {
		return nil, err
	}
	g = append(g, 0x02, 0x00) // TOK_ID of an AP-REP
	g = append(g, asn1tools.AddASNAppTag(rep, asnAppTag.APREP)...)
	return asn1tools.AddASNAppTag(g, 0), nil
}

// responseToken is what the proxy answers: a SPNEGO accept-completed (with
// the AP-REP when mutual authentication was asked), or the bare AP-REP
// token to a client that sent a bare Kerberos token.
func responseToken(t token, sessionKey types.EncryptionKey) ([]byte, error) {
	var rep []byte
	if t.mutual() {
		var err error
		if rep, err = apRepToken(&t.apReq.Authenticator, sessionKey); err != nil {
			return nil, err
		}
	}
	if !t.spnego {
		return rep, nil
	}
	resp := spnego.NegTokenResp{NegState: asn1.Enumerated(spnego.NegStateAcceptCompleted), SupportedMech: t.mech, ResponseToken: rep}
	return resp.Marshal()
}
