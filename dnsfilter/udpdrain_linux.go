//go:build linux

package dnsfilter

import (
	"errors"
	"net"
	"syscall"
)

// udpReuse: upstream UDP sockets carry several queries (see drain).
const udpReuse = true

// drain reads and discards, without waiting, the datagrams queued on c,
// and returns how many there were. clean is false when there were some,
// when the socket holds an error (an ICMP error left by an earlier
// datagram) or when it cannot be read: c is then not to be reused.
func drain(c *net.UDPConn) (n int, clean bool) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, false
	}
	var buf [512]byte
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		for {
			_, _, e := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_DONTWAIT)
			if e != nil {
				rerr = e
				return true
			}
			n++
		}
	})
	if err != nil || !errors.Is(rerr, syscall.EAGAIN) {
		return n, false
	}
	return n, n == 0
}
