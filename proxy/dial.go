package proxy

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// dialer opens connections to destinations, directly (optionally through
// a chosen DNS server) or through a parent proxy. Every connection to a
// destination goes through net, whose Control hook refuses the addresses
// dests forbids; plain reaches the parent proxy (the operator's choice,
// loopback included).
type dialer struct {
	net     net.Dialer
	plain   net.Dialer
	dests   *destinations
	res     *resolver // names of destinations (and of the parent)
	parent  *url.URL  // nil: direct
	auth    string    // Proxy-Authorization value for the parent, "" for none
	timeout time.Duration
	observe func(time.Duration)
}

func newDialer(o *Options, dests *destinations, observe func(time.Duration)) (*dialer, error) {
	d := &dialer{timeout: o.DialTimeout, observe: observe, dests: dests}
	d.net = net.Dialer{Timeout: o.DialTimeout, KeepAlive: 30 * time.Second, Control: dests.control}
	if o.Resolver != "" {
		if _, _, err := net.SplitHostPort(o.Resolver); err != nil {
			return nil, fmt.Errorf("resolver %q: %w", o.Resolver, err)
		}
	}
	d.res = newResolver(o.Resolver, "/etc/resolv.conf", "/etc/hosts", o.DialTimeout)
	d.plain = d.net
	d.plain.Control = nil
	if o.Parent != nil {
		if o.Parent.Scheme != "http" || o.Parent.Host == "" {
			return nil, fmt.Errorf("parent %q: want http://host:port", o.Parent.Redacted())
		}
		p := *o.Parent
		if p.Port() == "" {
			p.Host = net.JoinHostPort(p.Hostname(), "80")
		}
		if o.ParentCredentialsFile != "" {
			b, err := os.ReadFile(o.ParentCredentialsFile)
			if err != nil {
				return nil, fmt.Errorf("parent credentials: %w", err)
			}
			cred := strings.TrimSpace(string(b))
			user, pass, ok := strings.Cut(cred, ":")
			if !ok || user == "" {
				return nil, fmt.Errorf("parent credentials %s: want user:password", o.ParentCredentialsFile)
			}
			p.User = url.UserPassword(user, pass)
			d.auth = "Basic " + base64.StdEncoding.EncodeToString([]byte(cred))
		}
		d.parent = &p
	}
	return d, nil
}

// dialDirect connects to addr without the parent (plain HTTP uses it to
// reach the parent itself, or destinations when there is none).
func (d *dialer) dialDirect(ctx context.Context, network, addr string) (net.Conn, error) {
	if d.parent != nil {
		return d.dialVia(ctx, &d.plain, network, addr)
	}
	return d.dialVia(ctx, &d.net, network, addr)
}

// dialTunnel opens a byte stream to addr for a tunnel: a TCP connection,
// or a CONNECT tunnel through the parent proxy.
func (d *dialer) dialTunnel(ctx context.Context, addr string) (net.Conn, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	var c net.Conn
	var err error
	if d.parent == nil {
		c, err = d.dialVia(ctx, &d.net, "tcp", addr)
	} else if err = d.checkHostPort(ctx, addr); err == nil {
		c, err = d.connectParent(ctx, addr)
	}
	if err == nil && d.observe != nil {
		d.observe(time.Since(start))
	}
	return c, err
}

// dialVia connects to addr ("host:port") with nd. A name is resolved
// through the cache and its addresses dialled in turn, IPv6 and IPv4
// alternating, each as a literal so that nd's Control hook sees it; each
// attempt gets a share of the time left, as net.Dialer gives. The first
// failure is returned; a failed resolution is a *net.DNSError inside a
// *net.OpError, as net.Dialer returns it.
func (d *dialer) dialVia(ctx context.Context, nd *net.Dialer, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return nd.DialContext(ctx, network, addr)
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nd.DialContext(ctx, network, addr)
	}
	if nd.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, nd.Timeout)
		defer cancel()
	}
	addrs, err := d.res.lookup(ctx, host)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	addrs = dialOrder(addrs, network)
	if len(addrs) == 0 {
		return nil, &net.OpError{Op: "dial", Net: network, Err: &net.AddrError{Err: "no suitable address found", Addr: host}}
	}
	var first error
	for i, a := range addrs {
		actx, cancel := partialDeadline(ctx, len(addrs)-i)
		c, err := nd.DialContext(actx, network, net.JoinHostPort(a.String(), port))
		cancel()
		if err == nil {
			return c, nil
		}
		if first == nil {
			first = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, first
}

// dialOrder returns the addresses network can reach, IPv6 and IPv4
// alternating, starting with the family of the first.
func dialOrder(addrs []netip.Addr, network string) []netip.Addr {
	var v4, v6 []netip.Addr
	for _, a := range addrs {
		if a.Unmap().Is4() {
			if network != "tcp6" {
				v4 = append(v4, a)
			}
		} else if network != "tcp4" {
			v6 = append(v6, a)
		}
	}
	if len(v4) == 0 {
		return v6
	}
	if len(v6) == 0 {
		return v4
	}
	first, second := v6, v4
	if addrs[0].Unmap().Is4() {
		first, second = v4, v6
	}
	out := make([]netip.Addr, 0, len(v4)+len(v6))
	for i := 0; i < len(first) || i < len(second); i++ {
		if i < len(first) {
			out = append(out, first[i])
		}
		if i < len(second) {
			out = append(out, second[i])
		}
	}
	return out
}

// partialDeadline gives one of left attempts its share of the time ctx
// has left, at least 2 s (as net.Dialer does).
func partialDeadline(ctx context.Context, left int) (context.Context, context.CancelFunc) {
	dl, ok := ctx.Deadline()
	if !ok || left <= 1 {
		return ctx, func() {}
	}
	share := time.Until(dl) / time.Duration(left)
	if share < 2*time.Second {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, share)
}

// checkHostPort checks a destination "host:port" before it is handed to
// the parent proxy: an IP literal as it is, a name by every address the
// cache gives for it (one refused address refuses the name). A name
// without address is left to the parent; any other lookup failure is
// returned.
func (d *dialer) checkHostPort(ctx context.Context, hostport string) error {
	host, portStr, err := net.SplitHostPort(hostport)
	if err != nil {
		return err
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return err
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return d.dests.check(netip.AddrPortFrom(a, uint16(port)))
	}
	addrs, err := d.res.lookup(ctx, host)
	if err != nil {
		if isNotFound(err) {
			return nil
		}
		return err
	}
	for _, a := range addrs {
		if err := d.dests.check(netip.AddrPortFrom(a, uint16(port))); err != nil {
			return err
		}
	}
	return nil
}

var errParentRefused = errors.New("parent proxy refused the tunnel")

func (d *dialer) connectParent(ctx context.Context, addr string) (net.Conn, error) {
	c, err := d.dialVia(ctx, &d.plain, "tcp", d.parent.Host)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	req := "CONNECT " + addr + " HTTP/1.1\r\nHost: " + addr + "\r\n"
	if d.auth != "" {
		req += "Proxy-Authorization: " + d.auth + "\r\n"
	}
	req += "\r\n"
	if _, err := c.Write([]byte(req)); err != nil {
		c.Close()
		return nil, err
	}
	br := bufio.NewReaderSize(c, 1024)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		c.Close()
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		c.Close()
		return nil, fmt.Errorf("%w: %s", errParentRefused, resp.Status)
	}
	c.SetDeadline(time.Time{})
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		return &prefixConn{Conn: c, prefix: append([]byte(nil), b...)}, nil
	}
	return c, nil
}

// prefixConn is a connection whose first bytes were already read into
// prefix; Read returns them first.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// unwrapPrefix returns the underlying connection and the bytes already
// read from it, so that copies can use the raw socket (splice).
func unwrapPrefix(c net.Conn) (net.Conn, []byte) {
	if pc, ok := c.(*prefixConn); ok {
		return pc.Conn, pc.prefix
	}
	return c, nil
}

// proxyStatusForDialError maps a dial error to an RFC 9209 error type.
func proxyStatusForDialError(err error) string {
	var dnsErr *net.DNSError
	switch {
	case errors.As(err, new(*destinationError)):
		return destProxyStatus
	case errors.As(err, &dnsErr):
		if dnsErr.IsTimeout {
			return "dns_timeout"
		}
		return "dns_error"
	case errors.Is(err, errParentRefused):
		return "destination_unavailable"
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		return "connection_timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection_refused"
	}
	return "destination_unavailable"
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
