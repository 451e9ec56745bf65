package proxy

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/balise-net/balise/internal/policy"
	"github.com/elazarl/goproxy"
)

// helloLimit bounds the bytes read while looking for a ClientHello: the
// largest hello in full records with room for small records and skipped
// ones. A first flight that grows past it is refused.
const helloLimit = 256 << 10

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
	var w who
	if cc := connOf(req); cc != nil {
		w = cc.identity() // authenticated by ServeHTTP before the hijack
	}
	d := pol.Decide(w.query(host, client, now))
	if d.Invalid {
		p.m.refusals[modeExplicit][refusalBadRequest].Inc()
		writeConnectRefusal(raw, http.StatusBadRequest, proxyStatus("http_request_error", "invalid host name"), "Balise: invalid host name\n")
		return
	}
	p.logDecision("connect", client, w, host, d, now)
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
	t, intercepted := p.checkHello(modeExplicit, raw, pre, client, w, host, uint16(port), d, pol, now)
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
//
// On an opaque port the tunnel is decided on the CONNECT host alone. On
// any other port the first flight must be a ClientHello Balise reads
// (see ParseClientHello); anything else, silence included, is refused.
func (p *Proxy) checkHello(mode int, raw net.Conn, pre []byte, client netip.Addr, w who, host string, port uint16, d policy.Decision, pol *policy.Policy, now time.Time) (t *tunnel, intercepted bool) {
	dest := net.JoinHostPort(host, strconv.Itoa(int(port)))
	cfg := p.cfg()
	hosts := []string{}
	if d.Listed() {
		hosts = append(hosts, host)
	}
	if slices.Contains(cfg.OpaquePorts, port) {
		if d.IP && cfg.IPLiterals == IPLiteralsDeny {
			p.refuseTunnel(mode, refusalIPLiteral, reasonIPLiteral, raw, client, dest, d, false)
			return nil, false
		}
		p.m.request(mode, kindConnect, d, -1)
		return &tunnel{p: p, mode: mode, client: raw, clientAddr: client, who: w, port: port, hosts: hosts, replay: pre, until: earliestUntil(d)}, false
	}
	hello, ch, ok := p.readHello(mode, raw, pre, client, dest)
	if !ok {
		return nil, false
	}
	sni := ch.ServerName
	if sni == "" {
		if d.IP && cfg.IPLiterals != IPLiteralsAllow {
			p.refuseTunnel(mode, refusalIPLiteral, reasonIPLiteral, raw, client, dest, d, true)
			return nil, false
		}
		if !cfg.AllowNoSNI {
			p.refuseTunnel(mode, refusalNoSNI, reasonNoSNI, raw, client, dest, d, true)
			return nil, false
		}
	}
	final := d
	if sni != "" {
		sd := pol.Decide(w.query(sni, client, now))
		if sd.Invalid {
			p.refuseTunnel(mode, refusalNotTLS, -1, raw, client, dest, policy.Decision{}, true)
			return nil, false
		}
		if d.IP && sd.IP && cfg.IPLiterals == IPLiteralsSNI {
			// An address in server_name is not a name to decide on.
			p.refuseTunnel(mode, refusalIPLiteral, reasonIPLiteral, raw, client, dest, d, true)
			return nil, false
		}
		if sd.Listed() {
			p.logDecision("connect", client, w, sni, sd, now)
			if sd.Verdict == policy.Block {
				if !d.Listed() || d.Verdict != policy.Block {
					p.m.sniMismatch[mode].Inc()
				}
				p.m.request(mode, kindConnect, sd, -1)
				if p.certs != nil {
					p.icept.serve(mode, raw, hello, client, sni, sd)
					return nil, true
				}
				denyTLS(raw)
				raw.Close()
				return nil, false
			}
			final = sd
			hosts = append(hosts, sni)
		}
	}
	if d.IP && cfg.IPLiterals == IPLiteralsDeny && (sni == "" || !final.Listed() || final.Verdict != policy.Allow) {
		p.refuseTunnel(mode, refusalIPLiteral, reasonIPLiteral, raw, client, dest, final, true)
		return nil, false
	}
	p.m.request(mode, kindConnect, final, -1)
	return &tunnel{p: p, mode: mode, client: raw, clientAddr: client, who: w, port: port, hosts: hosts, replay: hello, until: earliestUntil(d, final)}, false
}

// readHello reads the first flight of a tunnel that must be TLS. When it
// is not a ClientHello Balise reads, it refuses the connection (counted
// and logged as not_tls, or silent when nothing came before the header
// timeout), closes it and reports false; a client that went away is
// closed without a refusal.
func (p *Proxy) readHello(mode int, c net.Conn, pre []byte, client netip.Addr, dest string) ([]byte, ClientHello, bool) {
	hello, ch, err := readClientHello(c, pre, time.Now().Add(p.opts.HeaderTimeout), helloLimit)
	switch {
	case err == nil:
		return hello, ch, true
	case len(hello) == 0 && isTimeout(err):
		p.refuseConn(mode, refusalSilent, client, dest)
	case isUnreadableHello(err), isTimeout(err):
		p.refuseConn(mode, refusalNotTLS, client, dest)
		if len(hello) > 0 && (hello[0] == recordHandshake || hello[0] == recordAlert) {
			denyTLS(c) // it looked like TLS: say why it ends
		}
	}
	c.Close()
	return nil, ClientHello{}, false
}

// refuseTunnel ends a tunnel refused for what it is rather than for a
// listed host: counted as a refusal (and as a blocked decision with the
// proxy's reason when reason >= 0), logged, closed with a TLS
// access_denied alert when the client spoke TLS.
func (p *Proxy) refuseTunnel(mode, refusal, reason int, c net.Conn, client netip.Addr, dest string, d policy.Decision, alert bool) {
	if reason >= 0 {
		d.Verdict = policy.Block
		p.m.request(mode, kindConnect, d, reason)
	}
	p.refuseConn(mode, refusal, client, dest)
	if alert {
		denyTLS(c)
	}
	c.Close()
}

// denyTLS sends the fatal access_denied alert, waiting at most a second.
func denyTLS(c net.Conn) {
	c.SetWriteDeadline(time.Now().Add(time.Second))
	c.Write(tlsAccessDenied)
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
