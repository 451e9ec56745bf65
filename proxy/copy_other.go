//go:build !linux

package proxy

import (
	"errors"
	"syscall"
)

func waitReadable(syscall.RawConn) (bool, error) {
	return false, errors.New("waitReadable: not supported")
}

const haveWaitReadable = false
