package adtest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
	"unicode/utf16"

	"github.com/go-ldap/ldap/v3"
)

// Addr returns the loopback address the DC listens on.
func (dc *DC) Addr() string { return dc.addr.String() }

// Realm returns the Kerberos realm, upper case (BALISE.TEST).
func (dc *DC) Realm() string { return dc.realm }

// Domain returns the NetBIOS domain name (BALISE).
func (dc *DC) Domain() string { return dc.domain }

// BaseDN returns the domain's naming context (DC=balise,DC=test).
func (dc *DC) BaseDN() string { return dc.baseDN }

// LDAPSURL returns the DC's LDAP-over-TLS address (ldaps://ADDR:636).
func (dc *DC) LDAPSURL() string { return "ldaps://" + net.JoinHostPort(dc.Addr(), "636") }

// LDAPURL returns the DC's plain LDAP address (ldap://ADDR:389), which
// offers StartTLS.
func (dc *DC) LDAPURL() string { return "ldap://" + net.JoinHostPort(dc.Addr(), "389") }

// KDCAddr returns the KDC's address (ADDR:88).
func (dc *DC) KDCAddr() string { return net.JoinHostPort(dc.Addr(), "88") }

// CAPEM returns the PEM certificate of the CA that signed the DC's LDAPS
// certificate.
func (dc *DC) CAPEM() []byte { return dc.caPEM }

// CAFile returns the path of the CA certificate in PEM.
func (dc *DC) CAFile() string { return filepath.Join(dc.dir, "ca.pem") }

// CertPool returns a pool holding only the DC's CA.
func (dc *DC) CertPool() *x509.CertPool { return dc.pool }

// AdminDN returns the DN of the domain's Administrator.
func (dc *DC) AdminDN() string { return "CN=Administrator,CN=Users," + dc.baseDN }

// AdminPassword returns the Administrator's password.
func (dc *DC) AdminPassword() string { return dc.adminPW }

// Krb5Conf returns the path of a krb5.conf for the realm: the KDC by
// address, no DNS lookups and no host name canonicalization, so that a
// client asks for HTTP/<name it was given>.
func (dc *DC) Krb5Conf() string { return dc.krb5Conf }

// Dir returns the DC's temporary directory (removed by Close).
func (dc *DC) Dir() string { return dc.dir }

// UserDN returns the DN that AddUser and AddGroup give name.
func (dc *DC) UserDN(name string) string {
	return "CN=" + ldap.EscapeDN(name) + ",CN=Users," + dc.baseDN
}

// admin returns an LDAPS connection bound as the Administrator.
func (dc *DC) admin() (*ldap.Conn, error) {
	c, err := ldap.DialURL(dc.LDAPSURL(),
		ldap.DialWithTLSConfig(&tls.Config{RootCAs: dc.pool}),
		ldap.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}))
	if err != nil {
		return nil, fmt.Errorf("adtest: %w", err)
	}
	c.SetTimeout(30 * time.Second)
	if err := c.Bind(dc.AdminDN(), dc.adminPW); err != nil {
		c.Close()
		return nil, fmt.Errorf("adtest: administrator bind: %w", err)
	}
	return c, nil
}

// relaxPasswordPolicy lets tests choose any password: no complexity, no
// minimum length, no expiry.
func (dc *DC) relaxPasswordPolicy() error {
	c, err := dc.admin()
	if err != nil {
		return err
	}
	defer c.Close()
	m := ldap.NewModifyRequest(dc.baseDN, nil)
	m.Replace("pwdProperties", []string{"0"})
	m.Replace("minPwdLength", []string{"0"})
	m.Replace("minPwdAge", []string{"0"})
	m.Replace("maxPwdAge", []string{"0"})
	if err := c.Modify(m); err != nil {
		return fmt.Errorf("adtest: password policy: %w", err)
	}
	return nil
}

// unicodePwd encodes a password as AD's unicodePwd attribute wants it.
func unicodePwd(password string) string {
	u := utf16.Encode([]rune(`"` + password + `"`))
	b := make([]byte, 2*len(u))
	for i, r := range u {
		binary.LittleEndian.PutUint16(b[2*i:], r)
	}
	return string(b)
}

// AddUser creates an enabled user name (sAMAccountName and CN, UPN
// name@realm) with password in CN=Users and returns its DN.
func (dc *DC) AddUser(name, password string) (string, error) {
	c, err := dc.admin()
	if err != nil {
		return "", err
	}
	defer c.Close()
	dn := dc.UserDN(name)
	a := ldap.NewAddRequest(dn, nil)
	a.Attribute("objectClass", []string{"top", "person", "organizationalPerson", "user"})
	a.Attribute("sAMAccountName", []string{name})
	a.Attribute("userPrincipalName", []string{name + "@" + strings.ToLower(dc.realm)})
	a.Attribute("unicodePwd", []string{unicodePwd(password)})
	a.Attribute("userAccountControl", []string{"512"}) // normal account, enabled
	if err := c.Add(a); err != nil {
		return "", fmt.Errorf("adtest: add user %s: %w", name, err)
	}
	return dn, nil
}

// SetPassword changes an account's password, as an administrator's reset
// does; its key version number goes up by one.
func (dc *DC) SetPassword(name, password string) error {
	return dc.modify(name, "set password of "+name, func(_ *ldap.Conn, m *ldap.ModifyRequest) error {
		m.Replace("unicodePwd", []string{unicodePwd(password)})
		return nil
	})
}

// modify applies one modification, built by edit, to the account or group
// name (a sAMAccountName or a DN) over an administrator's connection;
// what names the operation in errors.
func (dc *DC) modify(name, what string, edit func(c *ldap.Conn, m *ldap.ModifyRequest) error) error {
	c, err := dc.admin()
	if err != nil {
		return err
	}
	defer c.Close()
	dn, err := dc.resolve(c, name)
	if err != nil {
		return err
	}
	m := ldap.NewModifyRequest(dn, nil)
	if err := edit(c, m); err != nil {
		return err
	}
	if err := c.Modify(m); err != nil {
		return fmt.Errorf("adtest: %s: %w", what, err)
	}
	return nil
}

// AddGroup creates a global security group name in CN=Users and returns
// its DN.
func (dc *DC) AddGroup(name string) (string, error) {
	c, err := dc.admin()
	if err != nil {
		return "", err
	}
	defer c.Close()
	dn := dc.UserDN(name)
	a := ldap.NewAddRequest(dn, nil)
	a.Attribute("objectClass", []string{"top", "group"})
	a.Attribute("sAMAccountName", []string{name})
	if err := c.Add(a); err != nil {
		return "", fmt.Errorf("adtest: add group %s: %w", name, err)
	}
	return dn, nil
}

// AddMembers adds users or groups (by sAMAccountName or DN) to group, so
// that groups can be nested.
func (dc *DC) AddMembers(group string, members ...string) error {
	return dc.modify(group, "add members to "+group, func(c *ldap.Conn, m *ldap.ModifyRequest) error {
		dns := make([]string, 0, len(members))
		for _, name := range members {
			dn, err := dc.resolve(c, name)
			if err != nil {
				return err
			}
			dns = append(dns, dn)
		}
		m.Add("member", dns)
		return nil
	})
}

// RemoveMembers removes users or groups from group.
func (dc *DC) RemoveMembers(group string, members ...string) error {
	return dc.modify(group, "remove members from "+group, func(c *ldap.Conn, m *ldap.ModifyRequest) error {
		for _, name := range members {
			dn, err := dc.resolve(c, name)
			if err != nil {
				return err
			}
			m.Delete("member", []string{dn})
		}
		return nil
	})
}

// resolve returns the DN of an account named by sAMAccountName, or name
// itself when it is a DN.
func (dc *DC) resolve(c *ldap.Conn, name string) (string, error) {
	if strings.Contains(name, "=") {
		return name, nil
	}
	res, err := c.Search(ldap.NewSearchRequest(dc.baseDN, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases, 2, 10, false,
		"(sAMAccountName="+ldap.EscapeFilter(name)+")", []string{"dn"}, nil))
	if err != nil {
		return "", fmt.Errorf("adtest: find %s: %w", name, err)
	}
	if len(res.Entries) != 1 {
		return "", fmt.Errorf("adtest: %d accounts named %s", len(res.Entries), name)
	}
	return res.Entries[0].DN, nil
}

// AddSPN gives the account (a user made with AddUser) the service
// principal name spn, such as "HTTP/proxy.balise.test", and restricts its
// tickets to AES, as a well-kept service account is.
func (dc *DC) AddSPN(account, spn string) error {
	return dc.modify(account, "add SPN "+spn+" to "+account, func(_ *ldap.Conn, m *ldap.ModifyRequest) error {
		m.Add("servicePrincipalName", []string{spn})
		m.Replace("msDS-SupportedEncryptionTypes", []string{"24"}) // AES128 | AES256
		return nil
	})
}

// ExportKeytab writes the keys of principal (an SPN or an account name)
// to a new keytab at path, replacing any file there in one rename.
func (dc *DC) ExportKeytab(principal, path string) error {
	tmp := path + ".new"
	os.Remove(tmp)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "samba-tool", "domain", "exportkeytab", tmp,
		"--principal="+principal, "-s", filepath.Join(dc.dir, "dc", "etc", "smb.conf")).CombinedOutput()
	if err != nil {
		return fmt.Errorf("adtest: exportkeytab %s: %v\n%s", principal, err, tail(out))
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("adtest: %w", err)
	}
	return nil
}

// AddService creates account with a random password, gives it spn and
// writes its keytab to path: what an administrator does for the proxy.
func (dc *DC) AddService(account, spn, path string) error {
	if _, err := dc.AddUser(account, fmt.Sprintf("Svc-%d-%x", time.Now().UnixNano(), os.Getpid())); err != nil {
		return err
	}
	if err := dc.AddSPN(account, spn); err != nil {
		return err
	}
	return dc.ExportKeytab(spn, path)
}

// Credentials are a Kerberos login made by Kinit.
type Credentials struct {
	// Principal is user@REALM.
	Principal string
	// CCache is the path of the credential cache file.
	CCache string
	// Krb5Conf is the path of the realm's krb5.conf.
	Krb5Conf string
}

// Env returns KRB5_CONFIG and KRB5CCNAME for a child process (curl
// --proxy-negotiate, Chromium, klist) to use these credentials.
func (c Credentials) Env() []string {
	return []string{"KRB5_CONFIG=" + c.Krb5Conf, "KRB5CCNAME=FILE:" + c.CCache}
}

// Kinit logs user in with MIT kinit and returns a fresh credential cache
// holding the user's ticket-granting ticket.
func (dc *DC) Kinit(user, password string) (Credentials, error) {
	dc.mu.Lock()
	dc.counter++
	path := filepath.Join(dc.dir, fmt.Sprintf("ccache-%d", dc.counter))
	dc.mu.Unlock()
	return dc.kinit(user, password, path)
}

func (dc *DC) kinit(user, password, path string) (Credentials, error) {
	cr := Credentials{Principal: user + "@" + dc.realm, CCache: path, Krb5Conf: dc.krb5Conf}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "kinit", cr.Principal)
	cmd.Env = append(os.Environ(), cr.Env()...)
	cmd.Stdin = strings.NewReader(password + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return Credentials{}, fmt.Errorf("adtest: kinit %s: %v: %s", cr.Principal, err, strings.TrimSpace(string(out)))
	}
	return cr, nil
}
