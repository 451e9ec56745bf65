// Package negotiate verifies Kerberos single sign-on (SPNEGO, RFC 4559)
// for the proxy: the Proxy-Authorization: Negotiate header a browser sends
// after a 407 with Proxy-Authenticate: Negotiate.
//
// A Verifier holds the proxy's keytab (reloadable) and its service
// principal (HTTP/proxy.chus.local). Verify decodes the header, takes the
// Kerberos AP-REQ out of the SPNEGO token, decrypts the ticket with the
// keytab, checks the ticket's times, the authenticator and the clock skew,
// refuses a replayed authenticator, and returns the user and realm with a
// response token for mutual authentication. It is Kerberos only: NTLM,
// offered raw or inside SPNEGO, is refused with its own reason, since it
// would tie the proxy to a domain controller on every request and is
// being retired by Microsoft.
//
// Groups are not read from the ticket's PAC: they come from the directory
// (package directory). The PAC is decoded only when asked, for the
// account name it carries, and a PAC that does not decode never fails an
// authentication.
//
// Every failure is an *Error whose Reason names a category fit for a
// metric label (no_header, not_negotiate, ntlm, bad_token, wrong_service,
// no_key, decrypt, expired, clock_skew, replay, address).
package negotiate
