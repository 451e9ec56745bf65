package dnsfilter

import (
	"bufio"
	"errors"
	"io"
	"math"
	"net"
	"net/netip"
	"sync/atomic"
	"time"
)

// DNS over TCP holds a goroutine and a few kilobytes per connection, so
// connections are bounded three ways, in the manner of unbound's
// incoming-num-tcp and tcp-idle-timeout:
//
//   - each client (an IPv6 client by its /64) may hold
//     Access.MaxTCPPerClient connections; one more is closed at once;
//   - a connection without a query for Access.TCPIdleTimeout is closed;
//   - all clients together hold at most maxTCP connections. When every
//     slot is taken, a newcomer takes the slot of the connection idle the
//     longest among those of the client that holds the most (a client
//     outside AllowedClients first), provided that client keeps more
//     connections than the newcomer will have; otherwise the newcomer is
//     closed at once.
//
// So one client, or a few, cannot shut the others out of DNS over TCP by
// holding idle connections, whatever the number of connections they open.

// tcpConn is one open TCP connection of a client.
type tcpConn struct {
	c      net.Conn
	client netip.Addr
	key    netip.Addr // clientKey(client)
	// idleSince is when the connection began waiting for a query (Unix
	// ns); 0 while a query is read, resolved or answered.
	idleSince atomic.Int64
}

// tcpOpen returns the number of open TCP connections.
func (f *Filter) tcpOpen() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.tcpConns)
}

func (f *Filter) serveTCP(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			if f.closed.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		f.admit(c)
	}
}

// admit registers c and serves it in a goroutine of its own, or closes it
// at once when the limits say so.
func (f *Filter) admit(c net.Conn) {
	var client netip.Addr
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		client = ta.AddrPort().Addr().Unmap()
	}
	acc := f.access.Load()
	tc := &tcpConn{c: c, client: client, key: clientKey(client)}
	tc.idleSince.Store(time.Now().UnixNano())
	f.mu.Lock()
	if f.closed.Load() {
		f.mu.Unlock()
		c.Close()
		return
	}
	if f.tcpPer[tc.key] >= acc.maxPerClient {
		f.mu.Unlock()
		f.refuseConn(c, client)
		return
	}
	var victim *tcpConn
	if len(f.tcpConns) >= f.maxTCP {
		if acc.allows(client) {
			victim = f.victimLocked(acc, tc.key)
		}
		if victim == nil {
			f.mu.Unlock()
			f.refuseConn(c, client)
			return
		}
		f.dropLocked(victim)
	}
	f.tcpConns[tc] = struct{}{}
	f.tcpPer[tc.key]++
	f.mu.Unlock()
	if victim != nil {
		victim.c.Close()
		f.refuse(refusalTCPEvicted, protoTCP, victim.client, "")
	}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		f.serveConn(tc)
		f.mu.Lock()
		f.dropLocked(tc)
		f.mu.Unlock()
		c.Close()
	}()
}

// refuseConn closes a connection over the limits at once, with a reset so
// that no state lingers on Balise's side, and counts it.
func (f *Filter) refuseConn(c net.Conn, client netip.Addr) {
	if t, ok := c.(*net.TCPConn); ok {
		t.SetLinger(0)
	}
	c.Close()
	f.refuse(refusalTCPLimit, protoTCP, client, "")
}

// victimLocked returns the idle connection to close so that a new one of
// the client key may open, or nil. f.mu is held.
func (f *Filter) victimLocked(acc *access, key netip.Addr) *tcpConn {
	need := f.tcpPer[key] + 1 // the newcomer's connections once admitted
	var best *tcpConn
	bestN, bestSince := 0, int64(0)
	for tc := range f.tcpConns {
		since := tc.idleSince.Load()
		if since == 0 {
			continue
		}
		n := f.tcpPer[tc.key]
		if !acc.allows(tc.client) {
			n = math.MaxInt
		} else if n <= need {
			continue
		}
		if best == nil || n > bestN || n == bestN && since < bestSince {
			best, bestN, bestSince = tc, n, since
		}
	}
	return best
}

// dropLocked forgets tc, once. f.mu is held.
func (f *Filter) dropLocked(tc *tcpConn) {
	if _, ok := f.tcpConns[tc]; !ok {
		return
	}
	delete(f.tcpConns, tc)
	if n := f.tcpPer[tc.key] - 1; n > 0 {
		f.tcpPer[tc.key] = n
	} else {
		delete(f.tcpPer, tc.key)
	}
}

// serveConn answers the length-prefixed queries of one TCP connection, in
// order, until the client closes it, stays idle for the idle timeout, or
// sends a frame larger than any query. A client outside AllowedClients
// gets its REFUSED answer and the connection is closed.
func (f *Filter) serveConn(tc *tcpConn) {
	c := tc.c
	r := bufio.NewReaderSize(c, 1024)
	s := newScratch()
	var buf []byte
	for {
		idle := time.Now()
		tc.idleSince.Store(idle.UnixNano())
		acc := f.access.Load()
		c.SetReadDeadline(idle.Add(acc.idle))
		if cur := f.access.Load(); cur != acc {
			// SetAccess ran meanwhile and may have set the deadline
			// before this goroutine: set it again.
			acc = cur
			c.SetReadDeadline(idle.Add(acc.idle))
		}
		hi, err := r.ReadByte()
		if err != nil {
			return
		}
		tc.idleSince.Store(0)
		lo, err := r.ReadByte()
		if err != nil {
			return
		}
		n := int(hi)<<8 | int(lo)
		if n > maxQuery {
			f.m.malformed[malOversized].Inc()
			return
		}
		if buf == nil {
			buf = make([]byte, maxQuery)
		}
		if _, err := io.ReadFull(r, buf[:n]); err != nil {
			return
		}
		start := time.Now()
		out, _ := f.serve(s, buf[:n], tc.client, protoTCP, start, modeWait)
		if out == nil {
			return
		}
		frame := make([]byte, 2, 2+len(out))
		frame[0], frame[1] = byte(len(out)>>8), byte(len(out))
		frame = append(frame, out...)
		c.SetWriteDeadline(time.Now().Add(acc.idle))
		if _, err := c.Write(frame); err != nil {
			return
		}
		f.m.duration[protoTCP].Observe(time.Since(start).Seconds())
		if !acc.allows(tc.client) {
			return
		}
	}
}
