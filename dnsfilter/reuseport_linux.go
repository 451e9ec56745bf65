//go:build linux

package dnsfilter

import (
	"net"
	"syscall"
)

// soReusePort is SO_REUSEPORT on Linux.
const soReusePort = 0xf

// reusePortConfig returns a ListenConfig that sets SO_REUSEPORT when
// several sockets share one address; the kernel spreads datagrams over
// them by flow hash.
func reusePortConfig(on bool) net.ListenConfig {
	if !on {
		return net.ListenConfig{}
	}
	return net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, soReusePort, 1)
		})
		if err != nil {
			return err
		}
		return serr
	}}
}
