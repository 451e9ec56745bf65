package negotiate

import "fmt"

// Reason is why a Proxy-Authorization header was not accepted.
type Reason uint8

// Reasons Verify fails with.
const (
	// NoHeader: no Proxy-Authorization header; the client should be
	// challenged.
	NoHeader Reason = iota
	// NotNegotiate: another scheme (Basic, Digest, Bearer...).
	NotNegotiate
	// NTLM: the client offered NTLM (raw, or as its preferred SPNEGO
	// mechanism without a Kerberos token): refused, Kerberos only.
	NTLM
	// BadToken: the token does not decode, or is not a Kerberos AP-REQ.
	BadToken
	// WrongService: the ticket is for another service principal or realm.
	WrongService
	// NoKey: the keytab holds no key of the ticket's version and type
	// (the service account's password changed: export the keytab again).
	NoKey
	// Decrypt: the ticket or the authenticator does not decrypt with the
	// keytab's key, or does not match: forged, or a stale keytab.
	Decrypt
	// Expired: the ticket has expired or is not yet valid.
	Expired
	// ClockSkew: the authenticator's time is too far from the proxy's.
	ClockSkew
	// Replay: this authenticator was already presented.
	Replay
	// Address: the ticket is bound to addresses the client is not using.
	Address
	numReasons
)

var reasonNames = [numReasons]string{"no_header", "not_negotiate", "ntlm", "bad_token", "wrong_service", "no_key", "decrypt", "expired", "clock_skew", "replay", "address"}

// String returns the reason's metric label.
func (r Reason) String() string {
	if r < numReasons {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason(%d)", r)
}

// Reasons returns every Reason, in order, for metrics created up front.
func Reasons() []Reason {
	rs := make([]Reason, numReasons)
	for i := range rs {
		rs[i] = Reason(i)
	}
	return rs
}

// Error is a refused authentication.
type Error struct {
	Reason Reason // the category, for metrics and logs
	Err    error  // detail; may be nil
}

// Error returns "negotiate: REASON[: detail]".
func (e *Error) Error() string {
	if e.Err == nil {
		return "negotiate: " + e.Reason.String()
	}
	return "negotiate: " + e.Reason.String() + ": " + e.Err.Error()
}

// Unwrap returns the detail.
func (e *Error) Unwrap() error { return e.Err }

func fail(r Reason, format string, args ...any) *Error {
	if format == "" {
		return &Error{Reason: r}
	}
	return &Error{Reason: r, Err: fmt.Errorf(format, args...)}
}
