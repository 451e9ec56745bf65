package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/pires/go-proxyproto"
)

// PROXY protocol (v1 and v2) behind load balancers. With
// Options.ProxyProtocolFrom set, every proxy listener, explicit and
// transparent, reads the connection's first bytes before anything else:
//
//   - From a listed balancer the connection MUST open with a PROXY
//     header (go-proxyproto's REQUIRE). The header is read in the
//     background, bounded by HeaderTimeout, before the connection is
//     handed over, so a slow balancer never holds the accept loop. The
//     client is then the header's source address: allowed_clients, the
//     per-client tunnel cap, decisions and their lines, the exception
//     form and identity bindings all see the workstation, never the
//     balancer. A LOCAL header (v2) or "PROXY UNKNOWN" (v1), which a
//     balancer sends for its own health checks, is accepted and the
//     connection is the balancer's own (its real address, as the
//     protocol says). A missing, malformed, incomplete (HeaderTimeout) or
//     non-TCP header closes the connection as a refusal (reason
//     proxy_protocol). A balancer that connects and closes without
//     sending a byte (a plain TCP check) is closed without one.
//   - From anyone else a PROXY header is refused (go-proxyproto's
//     REJECT): the first bytes are peeked when the connection is first
//     read, and a stream opening with a v1 or v2 signature is closed as a
//     refusal (reason proxy_protocol). Nothing else changes for them.
//
// The header's destination address is never used: a transparent
// listener takes the original destination from the socket
// (SO_ORIGINAL_DST, or the local address with TPROXY), as without PROXY
// protocol. Empty ProxyProtocolFrom turns all of this off: connections
// are served as they come and a PROXY header is just a bad request.
//
// A listener started with ProxyProtocolFrom set reads the list in force
// at every accept, so a reload that changes it (or empties it) applies
// to the next connections. A listener started without it is not wrapped
// at all: handing connections over from a background accept loop costs
// some CPU per connection, which the default does not pay; turning the
// PROXY protocol on therefore takes a restart.

const (
	// ppHeaderBuffer buffers a balancer's header reads; what follows the
	// header in the same segment stays in it until the first Read.
	ppHeaderBuffer = 256
	// ppPeekBuffer buffers the peek at a non-balancer's first bytes; it is
	// handed over whole on the first Read and then dropped.
	ppPeekBuffer = 512
)

// errProxyHeaderRefused ends a connection whose PROXY header was refused.
var errProxyHeaderRefused = errors.New("PROXY protocol header refused")

// proxyHeaderPolicy is go-proxyproto's connection policy for the settings
// in force: SKIP (no PROXY protocol at all) when ProxyProtocolFrom is
// empty, REQUIRE for a listed balancer, REJECT for anyone else.
func (p *Proxy) proxyHeaderPolicy(o proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) {
	return headerPolicy(p.cfg().ProxyProtocolFrom, o.Upstream)
}

// headerPolicy decides the PROXY header policy of a connection from
// upstream given the balancers' networks.
func headerPolicy(from []netip.Prefix, upstream net.Addr) (proxyproto.Policy, error) {
	if len(from) == 0 {
		return proxyproto.SKIP, nil
	}
	a := addrOf(upstream)
	if !a.IsValid() {
		return proxyproto.REJECT, proxyproto.ErrInvalidUpstream
	}
	for _, pf := range from {
		if pf.Contains(a) {
			return proxyproto.REQUIRE, nil
		}
	}
	return proxyproto.REJECT, nil
}

// addrOf returns a's IP address, unmapped, or the zero Addr.
func addrOf(a net.Addr) netip.Addr {
	if a == nil {
		return netip.Addr{}
	}
	if ta, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(ta.IP)
		return ip.Unmap()
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// ppListener applies the PROXY protocol policy to the connections of the
// listener it wraps. A background loop accepts; connections from
// balancers have their header read in a goroutine of their own and are
// handed to Accept once it is read, the others at once.
type ppListener struct {
	net.Listener // the accepting listener (temporary errors retried)

	p    *Proxy
	mode int

	ready     chan net.Conn
	closed    chan struct{}
	closeOnce sync.Once
	failed    chan struct{} // closed when the accept loop stopped
	err       error         // why, set before failed is closed
}

// proxyProtocol wraps ln so that connections follow the PROXY protocol
// settings in force (see above) and starts its accept loop.
func (p *Proxy) proxyProtocol(ln net.Listener, mode int) *ppListener {
	l := &ppListener{Listener: ln, p: p, mode: mode, ready: make(chan net.Conn),
		closed: make(chan struct{}), failed: make(chan struct{})}
	go l.run()
	return l
}

func (l *ppListener) run() {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			l.err = err
			close(l.failed)
			return
		}
		pol, err := l.p.proxyHeaderPolicy(proxyproto.ConnPolicyOptions{Upstream: c.RemoteAddr(), Downstream: c.LocalAddr()})
		switch {
		case err != nil:
			c.Close() // no usable peer address: nothing to decide on
		case pol == proxyproto.SKIP:
			l.deliver(c)
		case pol == proxyproto.REQUIRE:
			go l.handshake(c)
		default:
			l.deliver(&ppConn{Conn: c, remote: c.RemoteAddr(), check: true, l: l})
		}
	}
}

// deliver hands c to Accept, or closes it when the listener is closed.
func (l *ppListener) deliver(c net.Conn) {
	select {
	case l.ready <- c:
	case <-l.closed:
		c.Close()
	}
}

// Accept returns the next connection ready to be served.
func (l *ppListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	case <-l.failed:
		return nil, l.err
	}
}

// Close closes the listener; connections whose header is being read are
// closed once it is.
func (l *ppListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// handshake reads a balancer's PROXY header, within HeaderTimeout, and
// hands the connection over with the client it names, or refuses it.
func (l *ppListener) handshake(c net.Conn) {
	c.SetReadDeadline(time.Now().Add(l.p.opts.HeaderTimeout))
	br := bufio.NewReaderSize(c, ppHeaderBuffer)
	h, err := proxyproto.Read(br)
	if err == nil && !h.Command.IsLocal() && !validSource(h) {
		err = proxyproto.ErrUnsupportedAddressFamilyAndProtocol
	}
	if err != nil {
		balancer := addrOf(c.RemoteAddr())
		var why string
		switch {
		case isTimeout(err):
			why = "no complete PROXY header before header_timeout"
		case br.Buffered() == 0 && errors.Is(err, proxyproto.ErrNoProxyProtocol):
			// Closed before sending anything: a balancer's TCP check.
			l.p.opts.Logger.Debug("connection from a load balancer closed before any byte", "balancer", balancer.String())
			c.Close()
			return
		case errors.Is(err, proxyproto.ErrNoProxyProtocol):
			why = "no PROXY header from a load balancer"
		default:
			why = "malformed PROXY header: " + err.Error()
		}
		l.p.refuseProxyHeader(l.mode, balancer, why)
		c.Close()
		return
	}
	c.SetReadDeadline(time.Time{})
	pc := &ppConn{Conn: c, remote: c.RemoteAddr()}
	if !h.Command.IsLocal() {
		pc.remote = h.SourceAddr
	}
	if br.Buffered() > 0 {
		pc.br = br
	}
	l.deliver(pc)
}

// validSource reports whether a PROXY command carries a TCP source
// address Balise can decide on.
func validSource(h *proxyproto.Header) bool {
	if h.TransportProtocol != proxyproto.TCPv4 && h.TransportProtocol != proxyproto.TCPv6 {
		return false
	}
	src, _, ok := h.TCPAddrs()
	return ok && src != nil && addrOf(src).IsValid()
}

// refuseProxyHeader counts and logs (rate bound, as refuseConn) a
// connection closed for its PROXY header; client is the address the
// connection came from (a balancer's when the header is missing or
// malformed).
func (p *Proxy) refuseProxyHeader(mode int, client netip.Addr, why string) {
	p.m.refusals[mode][refusalProxyProtocol].Inc()
	ok, dropped := p.refusalLog.Allow(time.Now())
	if !ok {
		return
	}
	args := []any{"mode", modeNames[mode], "reason", refusalNames[refusalProxyProtocol], "client", client.String(), "destination", "", "detail", why}
	if dropped > 0 {
		args = append(args, "not_logged_before", dropped)
	}
	p.opts.Logger.Warn("refused", args...)
}

// ppConn is a connection accepted with PROXY protocol on: its
// RemoteAddr is the client (the header's source from a balancer), its
// LocalAddr and everything else the socket's.
type ppConn struct {
	net.Conn // the socket

	remote net.Addr
	// br holds bytes read past the header or peeked; nil once drained.
	br *bufio.Reader
	// check: the first Read refuses a stream that opens with a PROXY
	// header (the connection is not from a balancer).
	check bool
	l     *ppListener
}

// RemoteAddr returns the client's address.
func (c *ppConn) RemoteAddr() net.Addr { return c.remote }

// Read reads the stream after the PROXY header.
func (c *ppConn) Read(b []byte) (int, error) {
	if c.check {
		if err := c.refuseHeader(); err != nil {
			return 0, err
		}
	}
	if c.br != nil {
		if c.br.Buffered() > 0 {
			n, err := c.br.Read(b)
			if c.br.Buffered() == 0 {
				c.br = nil
			}
			return n, err
		}
		c.br = nil
	}
	return c.Conn.Read(b)
}

// refuseHeader peeks at the first bytes of a connection that is not from
// a balancer and refuses it when they are a PROXY v1 or v2 signature.
func (c *ppConn) refuseHeader() error {
	c.check = false
	br := bufio.NewReaderSize(c.Conn, ppPeekBuffer)
	c.br = br
	first, err := br.Peek(1)
	if err != nil {
		c.check = isTimeout(err) // nothing came yet: check again on the next read
		return err
	}
	var sig []byte
	switch first[0] {
	case proxyproto.SIGV1[0]:
		sig = proxyproto.SIGV1
	case proxyproto.SIGV2[0]:
		sig = proxyproto.SIGV2
	default:
		return nil
	}
	got, err := br.Peek(len(sig))
	if !bytes.Equal(got, sig) {
		if len(got) == 0 {
			return err
		}
		return nil // not a signature; a short peek's error comes again on the next read
	}
	c.br = nil
	c.l.p.refuseProxyHeader(c.l.mode, addrOf(c.Conn.RemoteAddr()), "PROXY header from an address not in proxy_protocol_from")
	c.Conn.Close()
	return &net.OpError{Op: "read", Net: "tcp", Source: c.Conn.LocalAddr(), Addr: c.Conn.RemoteAddr(), Err: errProxyHeaderRefused}
}

// pending reports whether reads still go through the wrapper (a check to
// make or buffered bytes).
func (c *ppConn) pending() bool { return c.check || (c.br != nil && c.br.Buffered() > 0) }

// WriteTo copies the stream to w: buffered bytes first, then straight
// from the socket, so that io.Copy between TCP sockets still splices.
func (c *ppConn) WriteTo(w io.Writer) (int64, error) {
	var n int64
	for c.pending() {
		var buf [ppPeekBuffer]byte
		k, err := c.Read(buf[:])
		if k > 0 {
			wk, werr := w.Write(buf[:k])
			n += int64(wk)
			if werr != nil {
				return n, werr
			}
		}
		if err != nil {
			if err == io.EOF {
				err = nil
			}
			return n, err
		}
	}
	c.br = nil
	k, err := io.Copy(w, c.Conn)
	return n + k, err
}

// ReadFrom writes r to the socket (spliced between TCP sockets).
func (c *ppConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(c.Conn, r)
}

// CloseWrite shuts down the writing side of the socket.
func (c *ppConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// SyscallConn returns the socket's raw connection once nothing is left
// in the wrapper's buffer (waiting on the descriptor would miss buffered
// bytes); before, it fails and callers fall back to reading.
func (c *ppConn) SyscallConn() (syscall.RawConn, error) {
	if c.pending() {
		return nil, errors.New("bytes buffered past the PROXY header")
	}
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.New("not a socket")
	}
	return sc.SyscallConn()
}

// socketOf returns the socket under a connection accepted with PROXY
// protocol on, or c itself.
func socketOf(c net.Conn) net.Conn {
	if pc, ok := c.(*ppConn); ok {
		return pc.Conn
	}
	return c
}
