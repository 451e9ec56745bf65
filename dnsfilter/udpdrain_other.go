//go:build !linux

package dnsfilter

import "net"

// udpReuse: each upstream UDP socket carries one query (see drain).
const udpReuse = false

// drain reports c as not clean: without a way to read the datagrams
// queued on a socket without waiting, no upstream socket is reused, and
// each query gets a socket of its own.
func drain(*net.UDPConn) (n int, clean bool) { return 0, false }
