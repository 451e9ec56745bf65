package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
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
	cw     connWriter    // c's writes
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
	oc := &originConn{c: c, key: key, cw: connWriter{c}}
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
		bw.Reset(&oc.cw)
		oc.bw = bw
	} else {
		oc.bw = bufio.NewWriterSize(&oc.cw, originBufSize)
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

func (w *connWriter) Write(b []byte) (int, error) { return w.c.Write(b) }

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

// answer is an origin's response head as readAnswer found it; its
// fields went into the header map it was given.
type answer struct {
	status  int
	close   bool  // the origin ends the connection after this answer
	length  int64 // body length; -1: chunked or until the origin closes
	chunked bool
}

var errBadAnswer = errors.New("malformed answer head from the origin")

// readAnswer reads one response head from br into h (empty, the
// client's header map: the answer is not copied again) and works out
// its framing (RFC 9112 §6.3); head is true for an answer to HEAD. The
// head's bytes become one string that keys and values are cut from.
// An obsolete line folding, an invalid field, an unknown transfer coding
// or conflicting lengths are errors (the client gets a 502).
func readAnswer(br *bufio.Reader, h http.Header, head bool, scratch []byte) (answer, error) {
	buf := scratch[:0]
	lines, start := 0, 0
	for {
		chunk, err := br.ReadSlice('\n')
		buf = append(buf, chunk...)
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			if lines == 0 && len(buf) == 0 {
				return answer{}, err
			}
			return answer{}, fmt.Errorf("%w: %w", errBadAnswer, err)
		}
		line := buf[start:]
		lines++
		start = len(buf)
		if len(line) <= 2 && (string(line) == "\r\n" || string(line) == "\n") {
			break
		}
	}
	s := string(buf)
	var a answer
	status, rest, _ := strings.Cut(s, "\n")
	status = strings.TrimSuffix(status, "\r")
	var http10 bool
	switch {
	case strings.HasPrefix(status, "HTTP/1.1 "):
	case strings.HasPrefix(status, "HTTP/1.0 "):
		http10 = true
	default:
		return a, errBadAnswer
	}
	code := status[len("HTTP/1.1 "):]
	if len(code) < 3 || (len(code) > 3 && code[3] != ' ') {
		return a, errBadAnswer
	}
	for _, c := range code[:3] {
		if c < '0' || c > '9' {
			return a, errBadAnswer
		}
		a.status = a.status*10 + int(c-'0')
	}
	if a.status < 100 {
		return a, errBadAnswer
	}
	vals := make([]string, lines-2)
	for i := 0; ; i++ {
		var line string
		line, rest, _ = strings.Cut(rest, "\n")
		line = strings.TrimSuffix(line, "\r")
		if line == "" {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			return a, errBadAnswer // obsolete line folding
		}
		k, v, ok := strings.Cut(line, ":")
		v = textproto.TrimString(v)
		if !ok || !httpguts.ValidHeaderFieldName(k) || !httpguts.ValidHeaderFieldValue(v) {
			return a, errBadAnswer
		}
		if !canonical(k) {
			k = http.CanonicalHeaderKey(k)
		}
		if prev, ok := h[k]; ok {
			h[k] = append(prev, v)
			continue
		}
		vals[i] = v
		h[k] = vals[i : i+1 : i+1]
	}
	conn := h["Connection"]
	a.close = hasToken(conn, "close") || (http10 && !hasToken(conn, "keep-alive"))
	te, cl := h["Transfer-Encoding"], h["Content-Length"]
	switch {
	case head || a.status < 200 || a.status == http.StatusNoContent || a.status == http.StatusNotModified:
		a.length = 0
	case len(te) > 0:
		if len(te) != 1 || !strings.EqualFold(textproto.TrimString(te[0]), "chunked") {
			return a, errBadAnswer
		}
		a.chunked, a.length = true, -1
		if len(cl) > 0 {
			delete(h, "Content-Length")
			a.close = true // RFC 9112 §6.1: both framings, do not reuse
		}
	case len(cl) > 0:
		for _, v := range cl[1:] {
			if v != cl[0] {
				return a, errBadAnswer
			}
		}
		n, err := strconv.ParseUint(cl[0], 10, 63)
		if err != nil {
			return a, errBadAnswer
		}
		a.length = int64(n)
	default:
		a.length, a.close = -1, true // until the origin closes
	}
	return a, nil
}

// canonical reports whether k is already in canonical form (the usual
// case), so that it needs no new string.
func canonical(k string) bool {
	upper := true
	for i := 0; i < len(k); i++ {
		c := k[i]
		switch {
		case upper && 'a' <= c && c <= 'z':
			return false
		case !upper && 'A' <= c && c <= 'Z':
			return false
		}
		upper = c == '-'
	}
	return true
}

// originBody reads an answer's body from the origin connection: a
// length, chunks (then trailers), or everything until the origin closes.
// A body cut short is io.ErrUnexpectedEOF.
type originBody struct {
	br       *bufio.Reader
	left     int64 // bytes left: of the body, or of the current chunk
	chunked  bool
	toClose  bool // until the origin closes
	needCRLF bool // a chunk's data was read, its CRLF not yet
	done     bool
	trailer  http.Header
}

func (b *originBody) Read(p []byte) (int, error) {
	if b.chunked {
		return b.readChunked(p)
	}
	if b.toClose {
		return b.br.Read(p)
	}
	if b.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.br.Read(p)
	b.left -= int64(n)
	if err == io.EOF && b.left > 0 {
		err = io.ErrUnexpectedEOF
	}
	if b.left == 0 && err == nil {
		err = io.EOF
	}
	return n, err
}

// more reports whether the next Read returns without waiting for the
// origin (data or the end are already buffered).
func (b *originBody) more() bool {
	n := b.br.Buffered()
	switch {
	case b.done || (!b.chunked && !b.toClose && b.left == 0):
		return true
	case !b.chunked || b.left > 0:
		return n > 0
	}
	p, _ := b.br.Peek(n)
	if b.needCRLF {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			return false
		}
		p = p[i+1:]
	}
	i := bytes.IndexByte(p, '\n')
	if i < 0 {
		return false
	}
	if len(p) > i+1 {
		return true
	}
	size, _, _ := bytes.Cut(p[:i], []byte(";"))
	return len(bytes.Trim(size, "0 \t\r")) == 0 // the last chunk
}

func (b *originBody) readChunked(p []byte) (int, error) {
	for b.left == 0 {
		if b.done {
			return 0, io.EOF
		}
		if b.needCRLF {
			if err := b.crlf(); err != nil {
				return 0, err
			}
			b.needCRLF = false
		}
		line, err := b.line()
		if err != nil {
			return 0, err
		}
		size, _, _ := strings.Cut(line, ";")
		size = strings.TrimRight(size, " \t")
		if size == "" || len(size) > 15 {
			return 0, errBadAnswer
		}
		n, err := strconv.ParseUint(size, 16, 63)
		if err != nil {
			return 0, errBadAnswer
		}
		if n == 0 {
			if err := b.readTrailer(); err != nil {
				return 0, err
			}
			b.done = true
			return 0, io.EOF
		}
		b.left = int64(n)
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.br.Read(p)
	b.left -= int64(n)
	if b.left == 0 {
		b.needCRLF = true
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// line reads one line of chunk framing (without its end of line).
func (b *originBody) line() (string, error) {
	l, err := b.br.ReadSlice('\n')
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		if err == bufio.ErrBufferFull {
			err = errBadAnswer
		}
		return "", err
	}
	l = bytes.TrimSuffix(bytes.TrimSuffix(l, []byte("\n")), []byte("\r"))
	return string(l), nil
}

func (b *originBody) crlf() error {
	l, err := b.line()
	if err != nil {
		return err
	}
	if l != "" {
		return errBadAnswer
	}
	return nil
}

func (b *originBody) readTrailer() error {
	for {
		l, err := b.line()
		if err != nil {
			return err
		}
		if l == "" {
			return nil
		}
		k, v, ok := strings.Cut(l, ":")
		v = textproto.TrimString(v)
		if !ok || !httpguts.ValidHeaderFieldName(k) || !httpguts.ValidHeaderFieldValue(v) {
			return errBadAnswer
		}
		if b.trailer == nil {
			b.trailer = http.Header{}
		}
		b.trailer.Add(k, v)
	}
}
