//go:build linux

package proxy

import (
	"syscall"
)

// waitReadable blocks (honouring the connection's read deadline) until
// rc has data or is at EOF, without reading anything and without holding
// a buffer or a pipe: this is what lets an idle tunnel cost only its two
// goroutines. It reports false at EOF (orderly shutdown by the peer).
func waitReadable(rc syscall.RawConn) (bool, error) {
	var readable bool
	var serr error
	err := rc.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, e := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case e == syscall.EAGAIN || e == syscall.EWOULDBLOCK || e == syscall.EINTR:
			return false // not ready: wait for the poller
		case e != nil:
			serr = e
		default:
			readable = n > 0
		}
		return true
	})
	if err != nil {
		return false, err
	}
	return readable, serr
}

const haveWaitReadable = true
