package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// Origin connections: plain HTTP is forwarded over connections Balise
// keeps itself (forward.go), one request at a time, the request written
// and the response read on the client's own goroutine. Idle connections
// wait in originPool, keyed by what they reach ("host:port", the parent
// proxy, or "tls host:port" for https URLs asked in plain HTTP). The pool
// is bounded per key and in total (the oldest idle connection goes
// first), an idle connection is closed after its idle timeout by a timer
// (not only when the next request comes), and every idle connection is
// closed when the proxy stops. Idle connections hold no buffer: their
// bufio reader and writer go back to a sync.Pool.

const (
	originIdlePerHost = 256              // idle connections kept per key
	originIdleTotal   = 4096             // idle connections kept in all
	originIdleTimeout = 90 * time.Second // idle connections older than this are closed
	// originFreshFor: a request that cannot be sent again (a body, or a
	// method that is not idempotent) takes only a kept-alive connection
	// idle for less than this; otherwise it dials, so that an origin
	// closing its idle connections does not fail it.
	originFreshFor = time.Second
	originBufSize  = 4096
)

// originConn is one connection to an origin (or to the parent proxy).
type originConn struct {
	c      net.Conn
	key    string
	lim    headLimit     // c's reads, bounded while a response head is read
	br     *bufio.Reader // nil while idle
	bw     *bufio.Writer // nil while idle
	reused bool          // taken from the pool rather than dialled

	since      time.Time   // idle since
	prev, next *originConn // the pool's list of idle connections, oldest first
}

// originPool keeps idle origin connections.
type originPool struct {
	readers, writers sync.Pool
	bufs             bufPool // body copy buffers

	mu      sync.Mutex
	perHost int
	total   int
	timeout time.Duration
	idle    map[string][]*originConn // per key, oldest first
	oldest  *originConn              // all idle connections, oldest first
	newest  *originConn
	n       int
	timer   *time.Timer // sweeps idle connections; armed while n > 0
	armed   bool
	closed  bool
}

func newOriginPool() *originPool {
	return &originPool{perHost: originIdlePerHost, total: originIdleTotal, timeout: originIdleTimeout,
		idle: map[string][]*originConn{}}
}

// setLimits changes the pool's bounds (zero keeps one).
func (o *originPool) setLimits(perHost, total int, timeout time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if perHost > 0 {
		o.perHost = perHost
	}
	if total > 0 {
		o.total = total
	}
	if timeout > 0 {
		o.timeout = timeout
	}
}

// newConn wraps a freshly dialled connection for key.
func (o *originPool) newConn(c net.Conn, key string) *originConn {
	oc := &originConn{c: c, key: key}
	oc.lim = headLimit{r: c, n: -1}
	o.attach(oc)
	return oc
}

// attach gives oc its buffers.
func (o *originPool) attach(oc *originConn) {
	if br, ok := o.readers.Get().(*bufio.Reader); ok {
		br.Reset(&oc.lim)
		oc.br = br
	} else {
		oc.br = bufio.NewReaderSize(&oc.lim, originBufSize)
	}
	if bw, ok := o.writers.Get().(*bufio.Writer); ok {
		bw.Reset(connWriter{oc.c})
		oc.bw = bw
	} else {
		oc.bw = bufio.NewWriterSize(connWriter{oc.c}, originBufSize)
	}
}

// detach gives oc's buffers back.
func (o *originPool) detach(oc *originConn) {
	if oc.br != nil {
		oc.br.Reset(nil)
		o.readers.Put(oc.br)
		oc.br = nil
	}
	if oc.bw != nil {
		oc.bw.Reset(nil)
		o.writers.Put(oc.bw)
		oc.bw = nil
	}
}

// discard closes oc, which is not going back to the pool.
func (o *originPool) discard(oc *originConn) {
	oc.c.Close()
	o.detach(oc)
}

// get returns the most recently used idle connection for key, or nil.
// With fresh, only a connection idle for less than originFreshFor is
// taken.
func (o *originPool) get(key string, fresh bool) *originConn {
	now := time.Now()
	var stale []*originConn
	o.mu.Lock()
	var oc *originConn
	for l := o.idle[key]; len(l) > 0; l = o.idle[key] {
		c := l[len(l)-1]
		idleFor := now.Sub(c.since)
		if idleFor >= o.timeout {
			o.removeLocked(c, len(l)-1)
			stale = append(stale, c)
			continue
		}
		if fresh && idleFor >= originFreshFor {
			break
		}
		o.removeLocked(c, len(l)-1)
		oc = c
		break
	}
	o.mu.Unlock()
	for _, c := range stale {
		c.c.Close()
	}
	if oc != nil {
		oc.reused = true
		o.attach(oc)
	}
	return oc
}

// put keeps oc, whose last exchange ended cleanly, for the next request
// to its key; the oldest idle connection (of that key, or of all) makes
// room. A connection with unread bytes is closed.
func (o *originPool) put(oc *originConn) {
	if oc.br.Buffered() > 0 {
		o.discard(oc)
		return
	}
	o.detach(oc)
	oc.since = time.Now()
	var evicted []*originConn
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		oc.c.Close()
		return
	}
	l := append(o.idle[oc.key], oc)
	o.idle[oc.key] = l
	oc.prev, oc.next = o.newest, nil
	if o.newest != nil {
		o.newest.next = oc
	} else {
		o.oldest = oc
	}
	o.newest = oc
	o.n++
	if len(l) > o.perHost {
		c := l[0]
		o.removeLocked(c, 0)
		evicted = append(evicted, c)
	}
	for o.n > o.total {
		c := o.oldest
		o.removeLocked(c, -1)
		evicted = append(evicted, c)
	}
	if !o.armed {
		o.armed = true
		d := o.timeout
		if o.timer == nil {
			o.timer = time.AfterFunc(d, o.sweep)
		} else {
			o.timer.Reset(d)
		}
	}
	o.mu.Unlock()
	for _, c := range evicted {
		c.c.Close()
	}
}

// removeLocked takes c out of the pool; i is its index in its key's
// list, or -1 to look it up.
func (o *originPool) removeLocked(c *originConn, i int) {
	l := o.idle[c.key]
	if i < 0 {
		for j, x := range l {
			if x == c {
				i = j
				break
			}
		}
	}
	if i >= 0 {
		copy(l[i:], l[i+1:])
		l[len(l)-1] = nil
		l = l[:len(l)-1]
		if len(l) == 0 {
			delete(o.idle, c.key)
		} else {
			o.idle[c.key] = l
		}
	}
	if c.prev != nil {
		c.prev.next = c.next
	} else {
		o.oldest = c.next
	}
	if c.next != nil {
		c.next.prev = c.prev
	} else {
		o.newest = c.prev
	}
	c.prev, c.next = nil, nil
	o.n--
}

// sweep closes the connections idle for longer than the timeout and
// sets the timer for the next one to expire.
func (o *originPool) sweep() {
	now := time.Now()
	var expired []*originConn
	o.mu.Lock()
	for o.oldest != nil && now.Sub(o.oldest.since) >= o.timeout {
		c := o.oldest
		o.removeLocked(c, -1)
		expired = append(expired, c)
	}
	o.armed = o.oldest != nil && !o.closed
	if o.armed {
		o.timer.Reset(o.oldest.since.Add(o.timeout).Sub(now) + 10*time.Millisecond)
	}
	o.mu.Unlock()
	for _, c := range expired {
		c.c.Close()
	}
}

// closeAll closes every idle connection; the pool stays usable.
func (o *originPool) closeAll() {
	o.mu.Lock()
	var all []*originConn
	for c := o.oldest; c != nil; c = c.next {
		all = append(all, c)
	}
	clear(o.idle)
	o.oldest, o.newest, o.n = nil, nil, 0
	if o.timer != nil {
		o.timer.Stop()
	}
	o.armed = false
	o.mu.Unlock()
	for _, c := range all {
		c.prev, c.next = nil, nil
		c.c.Close()
	}
}

// close closes every idle connection and every connection put back from
// now on.
func (o *originPool) close() {
	o.mu.Lock()
	o.closed = true
	o.mu.Unlock()
	o.closeAll()
}

// idleCount returns the number of idle connections (for tests and
// readiness figures).
func (o *originPool) idleCount() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.n
}

// connWriter hides the connection's ReadFrom, so that a bufio.Writer
// copying a request body fills its own buffer instead of having the
// connection allocate one per copy.
type connWriter struct{ c net.Conn }

func (w connWriter) Write(b []byte) (int, error) { return w.c.Write(b) }

// originKey returns the pool key and the dial function for a request
// to dest ("host:port"), in plain HTTP or, with tlsOrigin, over TLS.
// With a parent proxy, plain HTTP goes to the parent (in absolute form)
// once the destination passed the checks a direct dial would make.
func (p *Proxy) originKey(dest string, tlsOrigin bool) string {
	switch {
	case tlsOrigin:
		return "tls " + dest
	case p.dial.parent != nil:
		return p.parentKey
	}
	return dest
}

// dialOrigin opens a connection for key (see originKey) to dest.
func (p *Proxy) dialOrigin(ctx context.Context, key, dest string, tlsOrigin bool) (*originConn, error) {
	var c net.Conn
	var err error
	switch {
	case tlsOrigin:
		c, err = p.dial.dialTunnel(ctx, dest)
		if err == nil {
			host, _, _ := net.SplitHostPort(dest)
			tc := tls.Client(c, &tls.Config{ServerName: host, NextProtos: []string{"http/1.1"}})
			hctx, cancel := context.WithTimeout(ctx, p.opts.DialTimeout)
			err = tc.HandshakeContext(hctx)
			cancel()
			if err != nil {
				c.Close()
			}
			c = tc
		}
	case p.dial.parent != nil:
		if err = p.dial.checkHostPort(ctx, dest); err == nil {
			c, err = p.dialContextTimed(ctx, "tcp", p.dial.parent.Host)
		}
	default:
		c, err = p.dialContextTimed(ctx, "tcp", dest)
	}
	if err != nil {
		return nil, err
	}
	return p.origins.newConn(c, key), nil
}

// errStale is a kept-alive connection that failed before any byte of
// the response.
var errStale = errors.New("kept-alive origin connection closed")

var errHeadTooLarge = errors.New("origin response head too large")

// headLimit reads from r at most n bytes while n >= 0 (then fails);
// n < 0: no limit.
type headLimit struct {
	r io.Reader
	n int64
}

func (h *headLimit) Read(b []byte) (int, error) {
	if h.n < 0 {
		return h.r.Read(b)
	}
	if h.n == 0 {
		return 0, errHeadTooLarge
	}
	if int64(len(b)) > h.n {
		b = b[:h.n]
	}
	k, err := h.r.Read(b)
	h.n -= int64(k)
	return k, err
}
