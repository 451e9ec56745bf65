package directory

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// inChain is LDAP_MATCHING_RULE_IN_CHAIN: AD walks nested groups itself.
const inChain = "1.2.840.113556.1.4.1941"

// dial opens a TLS connection to the directory (ldaps, or ldap upgraded
// with StartTLS before anything else is sent), within ctx.
func (d *Directory) dial(ctx context.Context) (*ldap.Conn, error) {
	nd := &net.Dialer{Timeout: d.s.Timeout}
	var nc net.Conn
	var err error
	if d.s.ldaps {
		nc, err = (&tls.Dialer{NetDialer: nd, Config: d.s.tls}).DialContext(ctx, "tcp", d.s.addr)
	} else {
		nc, err = nd.DialContext(ctx, "tcp", d.s.addr)
	}
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	c := ldap.NewConn(nc, d.s.ldaps)
	c.Start()
	c.SetTimeout(d.s.Timeout)
	if !d.s.ldaps {
		if err := c.StartTLS(d.s.tls.Clone()); err != nil {
			c.Close()
			return nil, fmt.Errorf("starttls: %w", err)
		}
	}
	nc.SetDeadline(time.Time{})
	return c, nil
}

// serviceConn returns the shared connection bound as the service
// account, dialling it when there is none or it broke.
func (d *Directory) serviceConn(ctx context.Context) (*ldap.Conn, bool, error) {
	if d.closed.Load() {
		return nil, false, errors.New("directory closed")
	}
	if c := d.current(); c != nil {
		return c, false, nil
	}
	d.dialMu.Lock()
	defer d.dialMu.Unlock()
	if c := d.current(); c != nil {
		return c, false, nil
	}
	c, err := d.dial(ctx)
	if err != nil {
		return nil, false, err
	}
	if err := c.Bind(d.s.BindDN, d.s.BindPassword); err != nil {
		c.Close()
		return nil, false, fmt.Errorf("service bind as %s: %w", d.s.BindDN, err)
	}
	d.connMu.Lock()
	d.conn = c
	d.connMu.Unlock()
	return c, true, nil
}

func (d *Directory) current() *ldap.Conn {
	d.connMu.Lock()
	defer d.connMu.Unlock()
	if d.conn != nil && d.conn.IsClosing() {
		d.conn = nil
	}
	return d.conn
}

// dropConn closes c if it is still the shared connection (any shared
// connection when c is nil), so that the next lookup dials afresh.
func (d *Directory) dropConn(c *ldap.Conn) {
	d.connMu.Lock()
	defer d.connMu.Unlock()
	if d.conn != nil && (c == nil || d.conn == c) {
		d.conn.Close()
		d.conn = nil
	}
}

// withService runs op on the shared connection; when op fails on a
// connection that was not fresh (an idle connection the directory
// closed), it redials and tries once more.
func (d *Directory) withService(ctx context.Context, op func(*ldap.Conn) error) error {
	for attempt := 0; ; attempt++ {
		start := time.Now()
		c, fresh, err := d.serviceConn(ctx)
		if err == nil {
			err = op(c)
		}
		if err == nil || errors.Is(err, ErrUnknownUser) {
			d.up.Store(true)
			d.lastContact.Store(d.now().UnixNano())
			d.m.observe(time.Since(start))
			return err
		}
		if c != nil {
			d.dropConn(c)
		}
		if fresh || c == nil || attempt > 0 || ctx.Err() != nil {
			d.up.Store(false)
			return err
		}
	}
}

// account is a user's entry.
type account struct {
	dn       string
	sid      []byte   // AD objectSid
	primary  uint32   // AD primaryGroupID; 0: none
	memberOf []string // OpenLDAP memberOf
}

// findUser looks user up by the user attribute.
func (d *Directory) findUser(c *ldap.Conn, user string) (account, error) {
	filter := "(" + d.s.UserAttribute + "=" + ldap.EscapeFilter(user) + ")"
	attrs := []string{"memberOf"}
	if d.s.Kind == KindAD {
		filter = "(&(objectClass=user)" + filter + ")"
		attrs = []string{"objectSid", "primaryGroupID"}
	}
	res, err := c.Search(ldap.NewSearchRequest(d.s.BaseDN, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
		2, d.timeLimit(), false, filter, attrs, nil))
	if ldap.IsErrorWithCode(err, ldap.LDAPResultSizeLimitExceeded) {
		return account{}, fmt.Errorf("more than one entry has %s=%s", d.s.UserAttribute, user)
	}
	if err != nil {
		return account{}, err
	}
	var found []*ldap.Entry
	for _, e := range res.Entries {
		if e.DN != "" {
			found = append(found, e)
		}
	}
	switch len(found) {
	case 0:
		return account{}, ErrUnknownUser
	case 1:
	default:
		return account{}, fmt.Errorf("more than one entry has %s=%s", d.s.UserAttribute, user)
	}
	e := found[0]
	a := account{dn: e.DN, sid: e.GetRawAttributeValue("objectSid"), memberOf: e.GetAttributeValues("memberOf")}
	if v, err := strconv.ParseUint(e.GetAttributeValue("primaryGroupID"), 10, 32); err == nil {
		a.primary = uint32(v)
	}
	return a, nil
}

// fetch asks the directory for user's groups.
func (d *Directory) fetch(ctx context.Context, user string) ([]string, error) {
	var groups []string
	err := d.withService(ctx, func(c *ldap.Conn) error {
		a, err := d.findUser(c, user)
		if err != nil {
			return err
		}
		if d.s.Kind == KindOpenLDAP {
			groups = make([]string, 0, 2*len(a.memberOf))
			for _, dn := range a.memberOf {
				groups = append(groups, dn)
				if cn := firstCN(dn); cn != "" {
					groups = append(groups, cn)
				}
			}
			groups = sortedGroups(groups)
			return nil
		}
		groups, err = d.adGroups(c, a)
		return err
	})
	return groups, err
}

// adGroups returns the groups that hold a, directly or through nested
// groups, and its primary group.
func (d *Directory) adGroups(c *ldap.Conn, a account) ([]string, error) {
	filter := "(member:" + inChain + ":=" + ldap.EscapeFilter(a.dn) + ")"
	if sid, ok := primaryGroupSID(a.sid, a.primary); ok {
		filter = "(|" + filter + "(objectSid=" + escapeBytes(sid) + "))"
	}
	filter = "(&(objectClass=group)" + filter + ")"
	res, err := c.SearchWithPaging(ldap.NewSearchRequest(d.s.BaseDN, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
		0, d.timeLimit(), false, filter, []string{"cn"}, nil), 500)
	if err != nil {
		return nil, err
	}
	groups := make([]string, 0, 2*len(res.Entries))
	for _, e := range res.Entries {
		if e.DN == "" {
			continue
		}
		groups = append(groups, e.DN)
		cn := e.GetAttributeValue("cn")
		if cn == "" {
			cn = firstCN(e.DN)
		}
		if cn != "" {
			groups = append(groups, cn)
		}
	}
	return sortedGroups(groups), nil
}

// timeLimit is the server-side time limit of a search, in seconds.
func (d *Directory) timeLimit() int {
	return int(math.Ceil(d.s.Timeout.Seconds()))
}

// firstCN returns the value of dn's first RDN when it is a CN.
func firstCN(dn string) string {
	p, err := ldap.ParseDN(dn)
	if err != nil || len(p.RDNs) == 0 || len(p.RDNs[0].Attributes) != 1 {
		return ""
	}
	if at := p.RDNs[0].Attributes[0]; strings.EqualFold(at.Type, "cn") {
		return at.Value
	}
	return ""
}

// primaryGroupSID is the SID of the user's primary group: the user's
// domain SID with the primary group's RID.
func primaryGroupSID(userSID []byte, rid uint32) ([]byte, bool) {
	if rid == 0 || len(userSID) < 12 || userSID[0] != 1 {
		return nil, false
	}
	n := int(userSID[1])
	if n < 1 || len(userSID) != 8+4*n {
		return nil, false
	}
	sid := append([]byte(nil), userSID...)
	binary.LittleEndian.PutUint32(sid[len(sid)-4:], rid)
	return sid, true
}

// escapeBytes writes binary filter values as \xx escapes.
func escapeBytes(b []byte) string {
	var sb strings.Builder
	for _, c := range b {
		fmt.Fprintf(&sb, "\\%02x", c)
	}
	return sb.String()
}

// Authenticate checks user's password with a simple bind as the user, on
// a TLS connection of its own. It returns nil when the directory accepts
// the password, an error wrapping ErrInvalidCredentials when it refuses it
// (an empty password is refused without asking: it would be an
// unauthenticated bind, which LDAP servers accept for any name), and an
// error wrapping ErrUnavailable when the directory cannot be asked within
// Timeout.
func (d *Directory) Authenticate(ctx context.Context, user, password string) error {
	if password == "" || !validUser(user) {
		d.m.auth(authInvalid)
		return ErrInvalidCredentials
	}
	ctx, cancel := context.WithTimeout(ctx, d.s.Timeout)
	defer cancel()
	var dn string
	err := d.withService(ctx, func(c *ldap.Conn) error {
		a, err := d.findUser(c, user)
		dn = a.dn
		return err
	})
	if errors.Is(err, ErrUnknownUser) {
		d.m.auth(authInvalid)
		return ErrInvalidCredentials
	}
	if err != nil {
		d.m.auth(authError)
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	c, err := d.dial(ctx)
	if err != nil {
		d.m.auth(authError)
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	defer c.Close()
	err = c.Bind(dn, password)
	switch {
	case err == nil:
		d.m.auth(authOK)
		return nil
	case ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidCredentials):
		d.m.auth(authInvalid)
		return ErrInvalidCredentials
	default:
		d.m.auth(authError)
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
}

// Users calls yield with the login name (UserAttribute) of every user
// under BaseDN, read in pages of 500, until yield returns false. It is
// for rare, deliberate uses — `balise identity reveal` recomputing
// pseudonyms — never for decisions.
func (d *Directory) Users(ctx context.Context, yield func(name string) bool) error {
	filter := "(" + d.s.UserAttribute + "=*)"
	if d.s.Kind == KindAD {
		filter = "(&(objectClass=user)(objectCategory=person)" + filter + ")"
	}
	var names []string
	err := d.withService(ctx, func(c *ldap.Conn) error {
		req := ldap.NewSearchRequest(d.s.BaseDN, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
			0, 0, false, filter, []string{d.s.UserAttribute}, nil)
		res, err := c.SearchWithPaging(req, 500)
		if err != nil {
			return err
		}
		names = names[:0]
		for _, e := range res.Entries {
			if name := e.GetAttributeValue(d.s.UserAttribute); name != "" {
				names = append(names, name)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, n := range names {
		if !yield(n) {
			break
		}
	}
	return nil
}
