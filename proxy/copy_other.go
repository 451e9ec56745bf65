//go:build !linux

package proxy

import (
	"errors"
	"syscall"
)

func waitReadable(syscall.RawConn) (int, error) {
	return 0, errors.New("waitReadable: not supported")
}

const haveWaitReadable = false
