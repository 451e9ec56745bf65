//go:build linux

package proxy

import (
	"syscall"
	"unsafe"
)

// waitReadable blocks (honouring the connection's read deadline) until
// rc has data or is at EOF, without reading anything and without holding
// a buffer or a pipe: this is what lets an idle tunnel cost only its two
// goroutines. It returns how many bytes can be read now; 0 means EOF.
func waitReadable(rc syscall.RawConn) (int, error) {
	var avail int
	var serr error
	err := rc.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, e := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		if e == syscall.EAGAIN || e == syscall.EWOULDBLOCK {
			return false
		}
		if e == syscall.EINTR {
			return false
		}
		if e != nil {
			serr = e
			return true
		}
		if n == 0 {
			avail = 0 // orderly shutdown by the peer
			return true
		}
		var v int32
		if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCINQ, uintptr(unsafe.Pointer(&v))); e != 0 || v <= 0 {
			avail = 1 // at least the peeked byte
		} else {
			avail = int(v)
		}
		return true
	})
	if err != nil {
		return 0, err
	}
	return avail, serr
}

const haveWaitReadable = true
