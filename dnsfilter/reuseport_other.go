//go:build !linux

package dnsfilter

import "net"

// reusePortConfig returns a plain ListenConfig: without SO_REUSEPORT the
// filter reads each UDP address from one socket.
func reusePortConfig(bool) net.ListenConfig { return net.ListenConfig{} }
