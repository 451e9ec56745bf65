//go:build !linux

package proxy

import (
	"errors"
	"net"
	"net/netip"
	"syscall"
)

func redirectedDst(net.Conn) (netip.AddrPort, error) {
	return netip.AddrPort{}, errors.New("transparent mode needs Linux")
}

func transparentControl(string, string, syscall.RawConn) error {
	return errors.New("transparent mode needs Linux")
}
