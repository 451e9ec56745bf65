//go:build linux

package proxy

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"unsafe"
)

const (
	soOriginalDst     = 80 // SO_ORIGINAL_DST (linux/netfilter_ipv4.h)
	ip6tSoOriginalDst = 80 // IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/ip6_tables.h)
	ipTransparent     = 19 // IP_TRANSPARENT
	ipv6Transparent   = 75 // IPV6_TRANSPARENT
)

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
		var sa [28]byte // sockaddr_in6 is the larger
		l := uint32(len(sa))
		level := uintptr(syscall.SOL_IP)
		opt := uintptr(soOriginalDst)
		if !local.Addr().Unmap().Is4() {
			level, opt = syscall.SOL_IPV6, ip6tSoOriginalDst
		}
		_, _, e := syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, level, opt, uintptr(unsafe.Pointer(&sa[0])), uintptr(unsafe.Pointer(&l)), 0)
		if e != 0 {
			serr = e
			return
		}
		ap, serr = decodeSockaddr(sa[:min(int(l), len(sa))])
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
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_IP, ipTransparent, 1)
		if network != "tcp4" {
			if e := syscall.SetsockoptInt(int(fd), syscall.SOL_IPV6, ipv6Transparent, 1); e == nil {
				serr = nil
			}
		}
	})
	if err != nil {
		return err
	}
	return serr
}
