package proxy

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// tunnelSet tracks open tunnels (to close them on shutdown) and each
// client's number of tunnels (for the per-client cap).
type tunnelSet struct {
	wg        sync.WaitGroup // every hijacked connection being handled
	mu        sync.Mutex
	perClient map[netip.Addr]int
	open      map[*tunnel]struct{}
	pending   map[net.Conn]uint64 // hijacked, not yet a tunnel -> gen at begin
	stopped   bool
	// gen counts re-decisions (Redecide): a tunnel decided before the
	// latest one but opened after it is decided again when it opens.
	gen uint64
}

func (s *tunnelSet) init() {
	s.perClient = make(map[netip.Addr]int)
	s.open = make(map[*tunnel]struct{})
	s.pending = make(map[net.Conn]uint64)
}

// begin registers a hijacked connection until end is called; it reports
// false (and closes c) when Balise is stopping.
func (s *tunnelSet) begin(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		c.Close()
		return false
	}
	s.wg.Add(1)
	s.pending[c] = s.gen
	return true
}

// settle marks c as no longer pending (it became a tunnel or is closed).
func (s *tunnelSet) settle(c net.Conn) {
	s.mu.Lock()
	delete(s.pending, c)
	s.mu.Unlock()
}

func (s *tunnelSet) end() { s.wg.Done() }

// acquire takes one of client's slots; limit < 0 means no cap.
func (s *tunnelSet) acquire(client netip.Addr, limit int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if limit >= 0 && s.perClient[client] >= limit {
		return false
	}
	s.perClient[client]++
	return true
}

func (s *tunnelSet) release(client netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := s.perClient[client]; n <= 1 {
		delete(s.perClient, client)
	} else {
		s.perClient[client] = n - 1
	}
}

// add registers t as open; it reports whether a re-decision ran since t's
// connection was hijacked (t was decided on an older policy).
func (s *tunnelSet) add(t *tunnel) (stale bool) {
	s.mu.Lock()
	s.open[t] = struct{}{}
	stopped := s.stopped
	if g, ok := s.pending[t.client]; ok && g != s.gen {
		stale = true
	}
	s.mu.Unlock()
	if stopped {
		t.close(causeShutdown)
	}
	return stale
}

// nextGen starts a re-decision and returns the open tunnels.
func (s *tunnelSet) nextGen() []*tunnel {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gen++
	ts := make([]*tunnel, 0, len(s.open))
	for t := range s.open {
		ts = append(ts, t)
	}
	return ts
}

func (s *tunnelSet) remove(t *tunnel) {
	s.mu.Lock()
	delete(s.open, t)
	s.mu.Unlock()
}

// closeAll closes every tunnel and pending connection with cause and
// waits (at most wait) for their handlers to finish.
func (s *tunnelSet) closeAll(cause int, wait time.Duration) {
	s.mu.Lock()
	s.stopped = true
	ts := make([]*tunnel, 0, len(s.open))
	for t := range s.open {
		ts = append(ts, t)
	}
	for c := range s.pending {
		c.Close()
	}
	s.mu.Unlock()
	for _, t := range ts {
		t.close(cause)
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(wait):
	}
}

// tunnel is one spliced client-origin byte stream.
type tunnel struct {
	p          *Proxy
	mode       int
	client     net.Conn // raw client socket
	origin     net.Conn
	clientAddr netip.Addr
	who        who       // the person it was decided for (empty: the address)
	port       uint16    // the CONNECT port (explicit tunnels; 0 otherwise)
	hosts      []string  // listed hosts the tunnel was decided on
	replay     []byte    // client bytes already read, sent to the origin first
	until      time.Time // when the decision must be checked again (zero: never)

	last     [2]atomic.Int64 // unix nanoseconds of the last byte seen per direction
	running  atomic.Int32    // pipes still running
	closing  atomic.Bool
	cause    atomic.Int32
	once     sync.Once
	timerMu  sync.Mutex
	untilT   *time.Timer
	lifetime *time.Timer
}

// startTunnel carries bytes both ways until both sides finish, an
// error, a timeout, the decision's end or shutdown. It returns at once:
// two goroutines own the tunnel (the hijacked connection's server
// goroutine, with its buffers, is let go), and the last of them to finish
// cleans up, releases the client's slot and ends the hijack's tracking.
func (p *Proxy) startTunnel(t *tunnel) {
	t.cause.Store(causeClosed)
	now := time.Now().UnixNano()
	t.last[0].Store(now)
	t.last[1].Store(now)
	stale := p.tunnel.add(t)
	p.tunnel.settle(t.client)
	p.m.tunnelsActive[t.mode].Inc()
	if stale {
		p.redecideTunnel(t)
	}

	origin, oprefix := unwrapPrefix(t.origin)
	t.origin = origin
	if len(t.replay) > 0 && !t.closing.Load() {
		origin.SetWriteDeadline(time.Now().Add(p.opts.HeaderTimeout))
		n, err := origin.Write(t.replay)
		origin.SetWriteDeadline(time.Time{})
		p.m.tunnelBytes[t.mode][dirUpstream].Add(float64(n))
		if err != nil {
			t.close(causeError)
		}
		t.replay = nil
	}
	if len(oprefix) > 0 && !t.closing.Load() {
		t.client.SetWriteDeadline(time.Now().Add(p.opts.HeaderTimeout))
		n, err := t.client.Write(oprefix)
		t.client.SetWriteDeadline(time.Time{})
		p.m.tunnelBytes[t.mode][dirDownstream].Add(float64(n))
		if err != nil {
			t.close(causeError)
		}
	}
	if t.closing.Load() {
		t.finish()
		return
	}
	t.timerMu.Lock()
	t.lifetime = time.AfterFunc(p.cfg().MaxTunnelLifetime, func() { t.close(causeLifetime) })
	if !t.until.IsZero() && t.untilT == nil {
		t.armUntilLocked(t.until)
	}
	t.timerMu.Unlock()

	t.running.Store(2)
	go t.pipeAndFinish(t.client, t.origin, dirDownstream)
	go t.pipeAndFinish(t.origin, t.client, dirUpstream)
}

func (t *tunnel) pipeAndFinish(dst, src net.Conn, dir int) {
	t.pipe(dst, src, dir)
	if t.running.Add(-1) == 0 {
		t.finish()
	}
}

// finish releases everything the tunnel holds.
func (t *tunnel) finish() {
	p := t.p
	t.timerMu.Lock()
	t.closing.Store(true)
	if t.lifetime != nil {
		t.lifetime.Stop()
	}
	if t.untilT != nil {
		t.untilT.Stop()
	}
	t.timerMu.Unlock()
	t.closeConns()
	p.tunnel.remove(t)
	p.tunnel.release(t.clientAddr)
	p.m.tunnelsActive[t.mode].Dec()
	p.m.tunnelsClosed[t.mode][t.cause.Load()].Inc()
	p.tunnel.end()
}

// burst is how long a tunnel direction keeps splicing after data last
// arrived before it returns to waiting without a pipe. Short, so that
// pipes (two descriptors each, pooled until the next GC) are held only by
// tunnels that are moving data.
const burst = 25 * time.Millisecond

// pipe copies src to dst. An idle direction waits for src to become
// readable without holding any buffer or pipe (waitReadable); once data
// arrives it copies with io.Copy, which splices between TCP sockets on
// Linux (zero-copy, a pooled pipe), until src stays quiet for a burst.
// Read deadlines are renewed in slices so that a tunnel idle in both
// directions for IdleTimeout is closed.
func (t *tunnel) pipe(dst, src net.Conn, dir int) {
	idle := t.p.opts.IdleTimeout
	slice := min(max(idle/4, 50*time.Millisecond), 30*time.Second)
	other := 1 - dir
	var rc syscall.RawConn
	if sc, ok := src.(syscall.Conn); ok && haveWaitReadable {
		rc, _ = sc.SyscallConn()
	}
	waiting := rc != nil
	for {
		if t.closing.Load() {
			return
		}
		var n int64
		var err error
		eof := false
		if waiting {
			src.SetReadDeadline(time.Now().Add(slice))
			var readable bool
			readable, err = waitReadable(rc)
			if err == nil {
				if !readable {
					eof = true
				} else {
					waiting = false
					continue
				}
			}
		} else {
			wait := slice
			if rc != nil {
				wait = min(burst, slice)
			}
			src.SetReadDeadline(time.Now().Add(wait))
			n, err = io.Copy(dst, src)
			eof = err == nil
		}
		now := time.Now()
		if n > 0 {
			t.p.m.tunnelBytes[t.mode][dir].Add(float64(n))
			t.last[dir].Store(now.UnixNano())
		}
		if eof { // src finished sending: pass the half-close on
			if cw, ok := dst.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite()
			} else {
				t.close(causeClosed)
			}
			return
		}
		if t.closing.Load() {
			return
		}
		if !isTimeout(err) || errors.Is(err, net.ErrClosed) {
			t.close(causeError)
			return
		}
		if n > 0 {
			continue // still busy: keep splicing
		}
		waiting = rc != nil
		lastAny := max(t.last[dir].Load(), t.last[other].Load())
		if now.Sub(time.Unix(0, lastAny)) >= idle {
			t.close(causeIdle)
			return
		}
	}
}

// close ends the tunnel with cause (the first cause wins).
func (t *tunnel) close(cause int) {
	t.once.Do(func() {
		t.cause.Store(int32(cause))
		t.closing.Store(true)
		t.closeConns()
	})
}

func (t *tunnel) closeConns() {
	t.client.Close()
	if t.origin != nil {
		t.origin.Close()
	}
}

// armUntilLocked schedules the re-decision at at (timerMu held).
func (t *tunnel) armUntilLocked(at time.Time) {
	d := max(at.Sub(t.p.opts.Clock()), 10*time.Millisecond)
	t.untilT = time.AfterFunc(d, t.recheck)
}

// recheck runs when the decision's until passes: if every listed host is
// still allowed the tunnel lives on until the new until, otherwise it is
// closed.
func (t *tunnel) recheck() {
	if t.closing.Load() {
		return
	}
	t.decideAgain(t.p.opts.Policy.Load(), t.p.opts.Clock(), causeUntil, true)
}

func frontOf(mode int) string {
	if mode == modeTransparent {
		return "transparent"
	}
	return "connect"
}
