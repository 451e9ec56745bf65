//go:build linux

package proxy

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ip6tSoOriginalDst is IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/
// ip6_tables.h), which x/sys/unix does not name; it equals SO_ORIGINAL_DST.
const ip6tSoOriginalDst = unix.SO_ORIGINAL_DST

// redirectedDst returns where a connection redirected by iptables or
// nftables REDIRECT/DNAT was going (SO_ORIGINAL_DST, IP6T_SO_ORIGINAL_DST).
func redirectedDst(c net.Conn) (netip.AddrPort, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return netip.AddrPort{}, errors.New("original destination: not a TCP connection")
	}
	local, _ := netip.ParseAddrPort(tc.LocalAddr().String())
	rc, err := tc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var ap netip.AddrPort
	var serr error
	cerr := rc.Control(func(fd uintptr) {
		// x/sys/unix has no getsockopt returning a sockaddr; the two
		// calls below read option values of the right size and layout:
		// an ip_mreqn-sized buffer holds the sockaddr_in of
		// SO_ORIGINAL_DST, an ip6_mtuinfo starts with the sockaddr_in6 of
		// IP6T_SO_ORIGINAL_DST.
		if local.Addr().Unmap().Is4() {
			var m *unix.IPv6Mreq
			if m, serr = unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, unix.SO_ORIGINAL_DST); serr == nil {
				ap, serr = decodeSockaddr(m.Multiaddr[:])
			}
			return
		}
		var mi *unix.IPv6MTUInfo
		if mi, serr = unix.GetsockoptIPv6MTUInfo(int(fd), unix.SOL_IPV6, ip6tSoOriginalDst); serr == nil {
			raw := (*[unix.SizeofSockaddrInet6]byte)(unsafe.Pointer(&mi.Addr))
			ap, serr = decodeSockaddr(raw[:])
		}
	})
	if cerr != nil {
		return netip.AddrPort{}, cerr
	}
	return ap, serr
}

// decodeSockaddr decodes the sockaddr_in or sockaddr_in6 the kernel
// wrote for SO_ORIGINAL_DST: the family in host byte order, the port and
// address in network byte order.
func decodeSockaddr(sa []byte) (netip.AddrPort, error) {
	if len(sa) < 2 {
		return netip.AddrPort{}, errors.New("original destination: short address")
	}
	switch binary.NativeEndian.Uint16(sa[0:2]) {
	case syscall.AF_INET:
		if len(sa) < 8 {
			return netip.AddrPort{}, errors.New("original destination: short IPv4 address")
		}
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(sa[4:8])), binary.BigEndian.Uint16(sa[2:4])), nil
	case syscall.AF_INET6:
		if len(sa) < 24 {
			return netip.AddrPort{}, errors.New("original destination: short IPv6 address")
		}
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(sa[8:24])).Unmap(), binary.BigEndian.Uint16(sa[2:4])), nil
	}
	return netip.AddrPort{}, errors.New("original destination: unknown address family")
}

// transparentControl marks a listening socket IP_TRANSPARENT (TPROXY).
func transparentControl(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
		if network != "tcp4" {
			if e := unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1); e == nil {
				serr = nil
			}
		}
	})
	if err != nil {
		return err
	}
	return serr
}
