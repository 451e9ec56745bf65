package dnsfilter

import (
	"errors"
	"net"
	"net/netip"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// udpBatch is the number of datagrams read (recvmmsg) and written
// (sendmmsg) per system call on Linux; elsewhere one.
const udpBatch = 32

type batchConn interface {
	ReadBatch([]ipv4.Message, int) (int, error)
	WriteBatch([]ipv4.Message, int) (int, error)
}

// serveUDPBatch is serveUDP with batched reads and writes: under load,
// every datagram waiting in the socket is read by one system call and the
// answers to them are sent by one more.
func (f *Filter) serveUDPBatch(c *net.UDPConn) {
	var bc batchConn
	if la, ok := c.LocalAddr().(*net.UDPAddr); ok && la.IP.To4() != nil {
		bc = ipv4.NewPacketConn(c)
	} else {
		bc = ipv6.NewPacketConn(c)
	}
	in := make([]ipv4.Message, udpBatch)
	out := make([]ipv4.Message, udpBatch)
	outBufs := make([][]byte, udpBatch)
	for i := range in {
		in[i].Buffers = [][]byte{make([]byte, maxQuery+1)}
		out[i].Buffers = make([][]byte, 1)
		outBufs[i] = make([]byte, 0, 4096)
	}
	s := newScratch()
	for {
		n, err := bc.ReadBatch(in, 0)
		if err != nil {
			if f.closed.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		start := time.Now()
		k := 0
		for i := range n {
			msg := &in[i]
			ua, ok := msg.Addr.(*net.UDPAddr)
			if !ok {
				continue
			}
			if msg.N > maxQuery {
				f.m.malformed[malOversized].Inc()
				continue
			}
			from := ua.AddrPort()
			pkt := msg.Buffers[0][:msg.N]
			s.out = outBufs[k][:0]
			resp, pending := f.serve(s, pkt, from.Addr().Unmap(), protoUDP, start, modeFirst)
			if pending {
				resp = f.resume(c, pkt, from, start, s)
			}
			if resp == nil {
				continue
			}
			if cap(resp) <= 65535 {
				outBufs[k] = resp[:0]
			}
			out[k].Buffers[0] = resp
			out[k].Addr = ua
			k++
		}
		for sent := 0; sent < k; {
			m, err := bc.WriteBatch(out[sent:k], 0)
			if err != nil || m == 0 {
				break
			}
			sent += m
		}
		if k > 0 {
			d := time.Since(start).Seconds()
			for range k {
				f.m.duration[protoUDP].Observe(d)
			}
		}
	}
}

// resume hands a query that needs an upstream to its own goroutine, which
// answers on c. It returns an answer to send now only when too many
// queries are waiting already (SERVFAIL).
func (f *Filter) resume(c *net.UDPConn, pkt []byte, from netip.AddrPort, start time.Time, s *scratch) []byte {
	select {
	case f.pendingSem <- struct{}{}:
	default:
		f.m.count(protoUDP, verdictError, reasonUpstream)
		return errorResponse(s.out[:0], pkt, &s.q, dns.RcodeServerFailure)
	}
	pkt = append([]byte(nil), pkt...)
	client := from.Addr().Unmap()
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		defer func() { <-f.pendingSem }()
		rs := scratchPool.Get().(*scratch)
		defer scratchPool.Put(rs)
		out, _ := f.serve(rs, pkt, client, protoUDP, start, modeResume)
		if out != nil {
			c.WriteToUDPAddrPort(out, from)
		}
		f.m.duration[protoUDP].Observe(time.Since(start).Seconds())
	}()
	return nil
}
