package proxy

import (
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"
)

// A transparent listener must never forward a connection to Balise itself:
// a workstation that connects straight to the gateway's transparent port
// has that very address as its "original destination" (SO_ORIGINAL_DST
// returns the local address when nothing was redirected; with TPROXY the
// original destination is the local address), and dialing it would bring
// the connection back to the same listener, again and again.

// localAddrTTL is how long the host's interface addresses are kept before
// they are listed again.
const localAddrTTL = 5 * time.Second

// localAddrs caches the addresses of this host's interfaces.
type localAddrs struct {
	mu   sync.Mutex
	at   time.Time
	set  map[netip.Addr]bool
	list func() ([]net.Addr, error) // nil: net.InterfaceAddrs
}

// has reports whether a (unmapped) is an address of one of this host's
// interfaces. The list is read again when older than localAddrTTL; when
// it cannot be read, the last one read is used.
func (l *localAddrs) has(a netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.set == nil || time.Since(l.at) > localAddrTTL {
		list := l.list
		if list == nil {
			list = net.InterfaceAddrs
		}
		if addrs, err := list(); err == nil {
			set := make(map[netip.Addr]bool, len(addrs))
			for _, na := range addrs {
				var ip net.IP
				switch v := na.(type) {
				case *net.IPNet:
					ip = v.IP
				case *net.IPAddr:
					ip = v.IP
				}
				if x, ok := netip.AddrFromSlice(ip); ok {
					set[x.Unmap()] = true
				}
			}
			l.set = set
		}
		l.at = time.Now()
	}
	return l.set[a]
}

// literalAddrPort returns host (an IP literal, unbracketed) and port
// (decimal) as an address; ok is false when host is a name.
func literalAddrPort(host, port string) (netip.AddrPort, bool) {
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.AddrPort{}, false
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(a, uint16(n)), true
}

// isLoop reports whether orig, the original destination of c (accepted
// on a transparent listener), is Balise itself, in any form (IPv4-mapped,
// NAT64, 6to4...): one of the proxy's listeners, or a local address of
// this host (loopback, unspecified, the connection's own local address
// outside TPROXY mode, or an interface address) on one of the proxy's
// listening ports. Only a destination on one of those ports costs more
// than a map look-up.
func (p *Proxy) isLoop(c net.Conn, orig netip.AddrPort) bool {
	p.selfMu.RLock()
	ours := p.selfPorts[orig.Port()]
	p.selfMu.RUnlock()
	if !ours {
		return false
	}
	if p.dests.isOwn(orig, true) {
		return true
	}
	var local netip.Addr
	// With TPROXY the local address is the original destination even when
	// it is a remote host, so only the interface list tells.
	if !p.opts.TPROXY && c != nil {
		if l, err := netip.ParseAddrPort(c.LocalAddr().String()); err == nil {
			local = l.Addr().Unmap().WithZone("")
		}
	}
	fs, n := forms(orig.Addr())
	for _, a := range fs[:n] {
		if a.IsLoopback() || a.IsUnspecified() || a == local || p.local.has(a) {
			return true
		}
	}
	return false
}
