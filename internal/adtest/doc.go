// Package adtest starts a real Samba Active Directory domain controller for
// tests, the way net/http/httptest starts an HTTP server.
//
// A DC is provisioned from scratch in a temporary directory with
// samba-tool (realm, NetBIOS domain, RFC 2307 attributes, a CA and a
// server certificate made in Go for LDAPS), then run as
// `samba -i -M single` with only its LDAP and Kerberos services. It listens
// on one loopback address of its own (127.77.X.Y by default, reserved with
// a lock file under the system temporary directory), so that several test
// binaries can each run a DC at the same time on the fixed ports AD uses
// (88, 389, 636, 464, 3268, 3269).
//
// Cost: New takes about 3 s on a 2-core machine (provisioning 2.5 s of
// mostly CPU, samba ready 0.4 s later), 7 s for two at once; Stop and
// Start take well under a second. Start one DC per test binary and share
// it (see Shared), never one per test.
//
// The helpers (AddUser, AddGroup, AddMembers, AddSPN, ExportKeytab, Kinit)
// act on the running DC over LDAPS as the domain administrator, and with
// samba-tool and MIT kinit. Kinit returns a credential cache and a
// krb5.conf that curl --proxy-negotiate, Chromium or gokrb5 can use through
// KRB5CCNAME and KRB5_CONFIG.
//
// The DC needs root (samba binds privileged ports) and the Debian packages
// samba-ad-dc and krb5-user. Require and Shared.DC skip a test when they
// are missing, and fail it when BALISE_E2E=1.
package adtest
