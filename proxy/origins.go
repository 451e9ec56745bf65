package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// Plain HTTP GET and HEAD requests without a body, sent directly (no
// parent proxy), go through originPool instead of the shared
// http.Transport: the request is written and the response read on the
// client's own goroutine, on a kept-alive origin connection, without the
// transport's two goroutines per connection and their hand-offs. Every
// other request uses the transport.

const (
	originIdlePerHost = 256              // idle connections kept per origin
	originIdleTimeout = 90 * time.Second // idle connections older than this are closed
	originSweepEvery  = 30 * time.Second
)

// originConn is one kept-alive connection to an origin.
type originConn struct {
	c     net.Conn
	lim   *headLimit // bounds the bytes read for response heads
	br    *bufio.Reader
	bw    *bufio.Writer
	since time.Time // idle since
}

// originPool keeps idle origin connections by "host:port".
type originPool struct {
	dial func(ctx context.Context, network, addr string) (net.Conn, error)

	mu        sync.Mutex
	idle      map[string][]*originConn
	lastSweep time.Time
}

func newOriginPool(dial func(ctx context.Context, network, addr string) (net.Conn, error)) *originPool {
	return &originPool{dial: dial, idle: map[string][]*originConn{}, lastSweep: time.Now()}
}

// get returns an idle connection to addr (reused true) or dials one.
func (o *originPool) get(ctx context.Context, addr string) (oc *originConn, reused bool, err error) {
	now := time.Now()
	o.mu.Lock()
	o.sweepLocked(now)
	for l := o.idle[addr]; len(l) > 0; l = o.idle[addr] {
		oc = l[len(l)-1]
		l[len(l)-1] = nil
		o.idle[addr] = l[:len(l)-1]
		if now.Sub(oc.since) < originIdleTimeout {
			o.mu.Unlock()
			return oc, true, nil
		}
		oc.c.Close()
	}
	o.mu.Unlock()
	c, err := o.dial(ctx, "tcp", addr)
	if err != nil {
		return nil, false, err
	}
	lim := &headLimit{r: c, n: -1}
	return &originConn{c: c, lim: lim, br: bufio.NewReaderSize(lim, 4096), bw: bufio.NewWriterSize(c, 4096)}, false, nil
}

// put keeps oc for the next request to addr, or closes it.
func (o *originPool) put(addr string, oc *originConn) {
	oc.since = time.Now()
	o.mu.Lock()
	if len(o.idle[addr]) >= originIdlePerHost {
		o.mu.Unlock()
		oc.c.Close()
		return
	}
	o.idle[addr] = append(o.idle[addr], oc)
	o.mu.Unlock()
}

// sweepLocked closes connections idle for too long, at most every
// originSweepEvery (mu held).
func (o *originPool) sweepLocked(now time.Time) {
	if now.Sub(o.lastSweep) < originSweepEvery {
		return
	}
	o.lastSweep = now
	for addr, l := range o.idle {
		keep := l[:0]
		for _, oc := range l {
			if now.Sub(oc.since) < originIdleTimeout {
				keep = append(keep, oc)
			} else {
				oc.c.Close()
			}
		}
		clear(l[len(keep):])
		if len(keep) == 0 {
			delete(o.idle, addr)
		} else {
			o.idle[addr] = keep
		}
	}
}

// closeAll closes every idle connection.
func (o *originPool) closeAll() {
	o.mu.Lock()
	defer o.mu.Unlock()
	for addr, l := range o.idle {
		for _, oc := range l {
			oc.c.Close()
		}
		delete(o.idle, addr)
	}
}

// fastPath reports whether r can go through the origin pool.
func (p *Proxy) fastPath(r *http.Request) bool {
	return p.origins != nil && r.URL.Scheme == "http" &&
		(r.Method == http.MethodGet || r.Method == http.MethodHead) &&
		(r.Body == nil || r.Body == http.NoBody) && r.ContentLength == 0 &&
		len(r.TransferEncoding) == 0 && r.Header.Get("Expect") == "" && r.Header.Get("Upgrade") == ""
}

// errStale is a reused connection that failed before any response byte.
var errStale = errors.New("kept-alive origin connection closed")

// roundTripOrigin sends r to its origin through the pool. When the
// response is returned, done must be called once its body has been
// consumed (ok: entirely, so the connection may be reused); it closes
// the body. The
// connection is cut if the client's request is cancelled before that.
func (p *Proxy) roundTripOrigin(r *http.Request) (*http.Response, func(ok bool), error) {
	addr := r.URL.Host
	if r.URL.Port() == "" {
		addr = net.JoinHostPort(r.URL.Hostname(), "80")
	}
	ctx := r.Context()
	for attempt := 0; ; attempt++ {
		oc, reused, err := p.origins.get(ctx, addr)
		if err != nil {
			return nil, nil, err
		}
		c := oc.c
		stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
		resp, err := exchange(oc, r, int64(p.opts.MaxHeaderBytes)*4)
		if err == nil {
			done := func(ok bool) {
				if !ok {
					c.Close() // so that closing the body does not read the rest
				}
				resp.Body.Close()
				if stop() && ok && !resp.Close && !r.Close {
					p.origins.put(addr, oc)
				} else {
					c.Close()
				}
			}
			return resp, done, nil
		}
		stop()
		c.Close()
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		if !reused || !errors.Is(err, errStale) || attempt > 0 {
			return nil, nil, err
		}
	}
}

// exchange writes r on oc and reads the response head, reading at most
// maxHead bytes (with informational answers) before the final head ends.
func exchange(oc *originConn, r *http.Request, maxHead int64) (*http.Response, error) {
	if err := r.Write(oc.bw); err != nil {
		return nil, errStale
	}
	if err := oc.bw.Flush(); err != nil {
		return nil, errStale
	}
	oc.lim.n = max(maxHead-int64(oc.br.Buffered()), 1)
	defer func() { oc.lim.n = -1 }()
	for {
		if _, err := oc.br.Peek(1); err != nil {
			return nil, errStale
		}
		resp, err := http.ReadResponse(oc.br, r)
		if err != nil {
			return nil, err
		}
		switch {
		case resp.StatusCode == http.StatusSwitchingProtocols:
			resp.Body.Close()
			return nil, errors.New("unexpected 101 response")
		case resp.StatusCode >= 100 && resp.StatusCode < 200:
			continue // informational: wait for the final response
		}
		return resp, nil
	}
}

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
