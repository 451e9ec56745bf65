package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/balise-net/balise/internal/policy"
	"github.com/elazarl/goproxy"
)

// helloLimit bounds the bytes read while looking for a ClientHello.
const helloLimit = maxHelloLen + 8*recordHeaderLen + 1024

// tlsAccessDenied is a fatal TLS alert (access_denied): how a tunnel
// refused after its ClientHello is ended, since the CONNECT already
// succeeded.
var tlsAccessDenied = []byte{21, 3, 3, 0, 2, 2, 49}

// writeConnectRefusal answers a CONNECT on the raw connection with a
// status, an RFC 9209 Proxy-Status and a short text, then closes it.
func writeConnectRefusal(c net.Conn, status int, ps, body string) {
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nProxy-Status: %s\r\nContent-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		status, http.StatusText(status), ps, len(body), body)
	c.Close()
}

// hijackConnect handles one CONNECT on the hijacked client connection: it
// runs in the HTTP server's goroutine for that connection until the
// tunnel ends.
func (p *Proxy) hijackConnect(req *http.Request, conn net.Conn, _ *goproxy.ProxyCtx) {
	client := clientAddr(req.RemoteAddr)
	raw, pre := unwrapPrefix(conn)
	if !p.tunnel.begin(raw) {
		return
	}
	handed := false // the tunnel's goroutines call end when they finish
	defer func() {
		if !handed {
			p.tunnel.settle(raw)
			p.tunnel.end()
		}
	}()
	host, portStr, err := net.SplitHostPort(req.URL.Host)
	port, perr := strconv.ParseUint(portStr, 10, 16)
	if err != nil || perr != nil || host == "" || port == 0 {
		p.m.refusals[modeExplicit][refusalBadRequest].Inc()
		writeConnectRefusal(raw, http.StatusBadRequest, proxyStatus("http_request_error", "CONNECT needs host:port"), "Balise: CONNECT needs host:port\n")
		return
	}
	if !p.cfg().ports[uint16(port)] || p.isSelf(req.URL.Host) {
		p.m.refusals[modeExplicit][refusalPort].Inc()
		writeConnectRefusal(raw, http.StatusForbidden, proxyStatus("http_request_denied", "port "+portStr+" not allowed"),
			"Balise : port non autorisé / port not allowed\n")
		return
	}
	if !p.tunnel.acquire(client, p.cfg().MaxTunnelsPerClient) {
		p.m.refusals[modeExplicit][refusalLimit].Inc()
		writeConnectRefusal(raw, http.StatusTooManyRequests, proxyStatus("http_request_denied", "too many tunnels from this client"),
			"Balise : trop de connexions simultanées / too many concurrent connections\n")
		return
	}
	released := false
	release := func() {
		if !released {
			released = true
			p.tunnel.release(client)
		}
	}
	defer release()

	pol := p.opts.Policy.Load()
	now := p.opts.Clock()
	d := pol.Decide(policy.Query{Host: host, Client: client, Time: now})
	if d.Invalid {
		p.m.refusals[modeExplicit][refusalBadRequest].Inc()
		writeConnectRefusal(raw, http.StatusBadRequest, proxyStatus("http_request_error", "invalid host name"), "Balise: invalid host name\n")
		return
	}
	p.logDecision("connect", client, host, d, now)
	if d.Verdict == policy.Block {
		p.m.request(modeExplicit, kindConnect, d, -1)
		if p.certs == nil {
			writeConnectRefusal(raw, http.StatusForbidden, proxyStatus("http_request_denied", "blocked by Balise: "+serviceName(d, host)),
				"Balise : "+serviceName(d, host)+" est bloqué / is blocked\n")
			return
		}
		if _, err := io.WriteString(raw, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
			raw.Close()
			return
		}
		released = true // the interceptor releases the slot when the connection ends
		p.icept.serve(modeExplicit, raw, pre, client, host, d)
		return
	}

	origin, err := p.dial.dialTunnel(req.Context(), req.URL.Host)
	if err != nil {
		p.refuseConnectDial(raw, client, req.URL.Host, err)
		return
	}
	if _, err := io.WriteString(raw, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		raw.Close()
		origin.Close()
		return
	}
	t, intercepted := p.checkHello(modeExplicit, raw, pre, client, host, uint16(port), d, pol, now)
	if t == nil {
		released = released || intercepted
		origin.Close()
		return
	}
	released, handed = true, true
	t.origin = origin
	p.startTunnel(t)
}

// checkHello reads the client's first bytes on an allowed tunnel and
// decides on the TLS server name as well. It returns the tunnel to run,
// or nil when the connection was refused (and closed) or handed to the
// interceptor (intercepted). The caller holds one slot of the client's
// tunnel cap; it passes to the returned tunnel or to the interceptor.
func (p *Proxy) checkHello(mode int, raw net.Conn, pre []byte, client netip.Addr, host string, port uint16, d policy.Decision, pol *policy.Policy, now time.Time) (t *tunnel, intercepted bool) {
	deadline := time.Now().Add(p.opts.HeaderTimeout)
	hello, ch, err := readClientHelloFrom(raw, pre, deadline, helloLimit)
	switch {
	case err == nil, errors.Is(err, ErrNotTLS), errors.Is(err, errMalformedHello):
		// decided below; not TLS or unparsable: no name to check
	case len(hello) == 0 && isTimeout(err) && port != 443:
		// A protocol where the server speaks first: nothing to peek.
	default:
		raw.Close()
		return nil, false
	}
	sni := ""
	if err == nil && ch.ServerName != "" {
		sni = ch.ServerName
	}
	final := d
	hosts := []string{}
	if d.Listed() {
		hosts = append(hosts, host)
	}
	if sni != "" {
		sd := pol.Decide(policy.Query{Host: sni, Client: client, Time: now})
		if !sd.Invalid && sd.Listed() {
			p.logDecision("connect", client, sni, sd, now)
			if sd.Verdict == policy.Block {
				if !d.Listed() || d.Verdict != policy.Block {
					p.m.sniMismatch[mode].Inc()
				}
				p.m.request(mode, kindConnect, sd, -1)
				if p.certs != nil {
					p.icept.serve(mode, raw, hello, client, sni, sd)
					return nil, true
				}
				raw.Write(tlsAccessDenied)
				raw.Close()
				return nil, false
			}
			final = sd
			hosts = append(hosts, sni)
		}
	}
	if d.IP && p.opts.DenyIPLiterals && (sni == "" || !final.Listed() || final.Verdict != policy.Allow) {
		final.Verdict = policy.Block
		p.m.request(mode, kindConnect, final, reasonIPLiteral)
		raw.Write(tlsAccessDenied)
		raw.Close()
		return nil, false
	}
	p.m.request(mode, kindConnect, final, -1)
	return &tunnel{p: p, mode: mode, client: raw, clientAddr: client, hosts: hosts, replay: hello, until: earliestUntil(d, final)}, false
}

func earliestUntil(ds ...policy.Decision) time.Time {
	var u time.Time
	for _, d := range ds {
		if d.Listed() && !d.Until.IsZero() && (u.IsZero() || d.Until.Before(u)) {
			u = d.Until
		}
	}
	return u
}

func serviceName(d policy.Decision, host string) string {
	switch {
	case d.ServiceName != "":
		return d.ServiceName
	case d.Service != "":
		return d.Service
	}
	return host
}

// readClientHelloFrom is readClientHello with bytes already received.
func readClientHelloFrom(c net.Conn, pre []byte, deadline time.Time, limit int) ([]byte, ClientHello, error) {
	if len(pre) > 0 {
		ch, err := ParseClientHello(pre)
		if err != ErrIncomplete {
			return pre, ch, err
		}
	}
	return readClientHello(c, pre, deadline, limit)
}

// dialContext is used by tests and the transparent mode to reach a
// destination the way tunnels do.
func (p *Proxy) dialContext(ctx context.Context, addr string) (net.Conn, error) {
	return p.dial.dialTunnel(ctx, addr)
}
