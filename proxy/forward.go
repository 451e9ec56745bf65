package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Balise's forwarder carries every plain HTTP request, explicit and
// transparent, with or without a body, upgrades included, over the
// origin connections of origins.go, as RFC 9110 and 9112 ask of a proxy:
//
//   - hop-by-hop fields (Connection and every field it names,
//     Proxy-Connection, Keep-Alive, TE but "TE: trailers", Transfer-Encoding,
//     Upgrade outside an upgrade, Proxy-Authenticate, Proxy-Authorization,
//     Trailer) are not forwarded, either way; Via gets Balise's entry,
//     both ways;
//   - a request body is written as it was framed (Content-Length, or
//     chunked with its trailers); "Expect: 100-continue" is forwarded and
//     the client gets its 100 when the origin sends one (or, after
//     expectContinueWait of silence, when the body is sent anyway); a
//     final answer that comes first is forwarded without the body;
//   - response trailers are forwarded to clients that take a chunked
//     response; a response body the origin cuts short (truncated chunked,
//     short Content-Length) aborts the client's response, which is never
//     completed; a request body the client cuts short aborts the
//     origin's connection, which is never reused;
//   - a 101 answer to an upgrade (WebSocket) hands both connections to a
//     byte relay;
//   - a kept-alive connection that turns out closed before any byte of
//     the answer is retried on a new connection when the request has no
//     body and an idempotent method.

// expectContinueWait is how long a request with "Expect: 100-continue"
// waits for the origin's 100 before its body is sent anyway (as
// http.Transport's ExpectContinueTimeout).
const expectContinueWait = time.Second

// bodyWriteWait is how long the end of a response waits for the request
// body to be written before the origin connection is given up (an origin
// that answered without reading it).
const bodyWriteWait = 50 * time.Millisecond

// aLongTimeAgo is a deadline in the past, to unblock reads and writes.
var aLongTimeAgo = time.Unix(1, 0)

// copyBufSize is the size of the pooled buffers bodies are copied with.
const copyBufSize = 32 << 10

// forward carries r, decided and allowed, to dest ("host:port"; tlsOrigin
// for an https URL asked in plain HTTP) and the answer back to w. mode is
// the front-end (explicit or transparent), for refusal counts.
func (p *Proxy) forward(w http.ResponseWriter, r *http.Request, mode int, dest string, tlsOrigin bool) {
	ctx := r.Context()
	hasBody := r.Body != nil && r.Body != http.NoBody
	retryable := !hasBody && idempotent(r.Method)
	key := p.originKey(dest, tlsOrigin)
	x := exchange{r: r, dest: dest, hasBody: hasBody, upgrade: isUpgrade(r.Header), target: originForm(r)}
	if p.dial.parent != nil && !tlsOrigin {
		x.toParent = true
		if x.target == "*" {
			x.target = "http://" + dest
		} else {
			x.target = "http://" + dest + x.target
		}
	}
	bp := p.origins.bufs.get()
	defer p.origins.bufs.put(bp)
	x.buf = *bp
	wh := w.Header()
	for attempt := 0; ; attempt++ {
		var err error
		var oc *originConn
		if attempt == 0 {
			oc = p.origins.get(key, !retryable)
		}
		if oc == nil {
			if oc, err = p.dialOrigin(ctx, key, dest, tlsOrigin); err != nil {
				if ctx.Err() == nil {
					writeResponse(w, p.dialErrorResponse(r, mode, err))
				}
				return
			}
		}
		c := oc.c
		stop := context.AfterFunc(ctx, func() { c.SetDeadline(aLongTimeAgo) })
		a, err := p.roundTrip(w, &x, oc)
		if err == nil {
			if a.status == http.StatusSwitchingProtocols {
				stop()
				if x.body != nil {
					// The protocol switches after the request's body.
					if finished, ok := x.body.wait(bodyWriteWait); !finished || !ok {
						x.body.abort(w, oc)
						p.origins.discard(oc)
						return
					}
				}
				p.relayUpgrade(w, oc)
				return
			}
			p.relayResponse(w, &x, oc, a, stop)
			return
		}
		stop()
		clear(wh)
		if x.body != nil {
			// The client's body was not read whole: its connection ends
			// with this answer.
			x.body.abort(w, oc)
			x.body = nil
			wh["Connection"] = []string{"close"}
		}
		p.origins.discard(oc)
		if ctx.Err() != nil {
			return
		}
		if oc.reused && retryable && attempt == 0 && errors.Is(err, errStale) {
			continue
		}
		p.logger().Debug("origin exchange failed", "dest", dest, "err", err)
		ps := proxyStatus("http_response_incomplete", "")
		switch {
		case errors.Is(err, errHeadTooLarge):
			ps = proxyStatus("http_response_header_section_size", "")
		case errors.Is(err, errBadAnswer):
			ps = proxyStatus("http_protocol_error", "")
		}
		writeResponse(w, textResponse(r, http.StatusBadGateway, ps,
			"Balise : réponse invalide de la destination / invalid answer from the destination\n"))
		return
	}
}

// exchange is one request being forwarded.
type exchange struct {
	r        *http.Request
	dest     string // "host:port" the request goes to
	target   string // request target sent
	toParent bool   // sent to the parent proxy (absolute form)
	hasBody  bool
	upgrade  bool
	body     *bodyWriter // nil without a body
	buf      []byte      // pooled: the answer's head, then its body
	ob       originBody
}

// roundTrip writes the request head on oc (and starts its body, if any)
// and reads the answer's head into w's header map, forwarding 1xx
// answers to w. A failure before any byte of the answer is errStale.
func (p *Proxy) roundTrip(w http.ResponseWriter, x *exchange, oc *originConn) (answer, error) {
	r := x.r
	chunked := x.hasBody && r.ContentLength < 0
	expect := x.hasBody && r.ProtoAtLeast(1, 1) && hasToken(r.Header["Expect"], "100-continue")
	p.writeHead(oc.bw, x, chunked)
	if !x.hasBody || expect {
		if err := oc.bw.Flush(); err != nil {
			return answer{}, errStale
		}
	}
	if x.hasBody {
		http.NewResponseController(w).EnableFullDuplex()
		x.body = startBody(r, oc, chunked, expect, &p.origins.bufs)
	}
	maxHead := int64(p.opts.MaxHeaderBytes) * 4
	oc.lim.n = max(maxHead-int64(oc.br.Buffered()), 1)
	defer func() { oc.lim.n = -1 }()
	wh := w.Header()
	head := r.Method == http.MethodHead
	for first := true; ; first = false {
		a, err := readAnswer(oc.br, wh, head, x.buf)
		if err != nil {
			if first && !errors.Is(err, errBadAnswer) && !errors.Is(err, errHeadTooLarge) {
				return a, errors.Join(errStale, err)
			}
			return a, err
		}
		switch {
		case a.status == http.StatusSwitchingProtocols:
			if !x.upgrade || !strings.EqualFold(wh.Get("Upgrade"), r.Header.Get("Upgrade")) {
				return a, errors.New("unexpected 101 answer")
			}
			return a, nil
		case a.status == http.StatusContinue:
			clear(wh)
			if x.body != nil {
				x.body.proceed()
			}
		case a.status < 200:
			if r.ProtoAtLeast(1, 1) {
				removeHopByHop(wh, false)
				wh["Via"] = append(wh["Via"], p.via11)
				w.WriteHeader(a.status)
			}
			clear(wh)
		default:
			return a, nil
		}
	}
}

// writeHead writes r's request line and header section: hop-by-hop
// fields left out, Via extended, the body framed as the client framed it.
func (p *Proxy) writeHead(b *bufio.Writer, x *exchange, chunked bool) {
	r, upgrade := x.r, x.upgrade
	b.WriteString(r.Method)
	b.WriteByte(' ')
	b.WriteString(x.target)
	b.WriteString(" HTTP/1.1\r\nHost: ")
	if r.Host != "" {
		b.WriteString(r.Host)
	} else {
		b.WriteString(x.dest) // an HTTP/1.0 request without Host
	}
	b.WriteString("\r\n")
	h := r.Header
	conn := h["Connection"]
	teTrailers := false
	for k, vs := range h {
		if hopByHop(k) {
			switch {
			case k == "Te":
				teTrailers = teTrailers || hasToken(vs, "trailers")
			case k == "Upgrade" && upgrade:
				writeField(b, k, vs)
			}
			continue
		}
		if k == "Via" || k == "Content-Length" || (len(conn) > 0 && hasToken(conn, k)) {
			continue // Via and the framing are written below, whatever Connection names
		}
		writeField(b, k, vs)
	}
	if upgrade {
		b.WriteString("Connection: Upgrade\r\n")
	}
	if teTrailers {
		b.WriteString("Te: trailers\r\n")
	}
	switch _, cl := h["Content-Length"]; {
	case !chunked && r.ContentLength > 0:
		b.WriteString("Content-Length: ")
		b.WriteString(strconv.FormatInt(r.ContentLength, 10))
		b.WriteString("\r\n")
	case !chunked && cl:
		b.WriteString("Content-Length: 0\r\n")
	}
	if chunked {
		b.WriteString("Transfer-Encoding: chunked\r\n")
		if len(r.Trailer) > 0 {
			b.WriteString("Trailer: ")
			i := 0
			for k := range r.Trailer {
				if i > 0 {
					b.WriteString(", ")
				}
				b.WriteString(k)
				i++
			}
			b.WriteString("\r\n")
		}
	}
	b.WriteString("Via: ")
	for _, v := range h["Via"] {
		b.WriteString(v)
		b.WriteString(", ")
	}
	if r.ProtoMajor == 1 && r.ProtoMinor == 0 {
		b.WriteString(p.via10)
	} else {
		b.WriteString(p.via11)
	}
	b.WriteString("\r\n")
	if x.toParent && p.dial.auth != "" {
		b.WriteString("Proxy-Authorization: ")
		b.WriteString(p.dial.auth)
		b.WriteString("\r\n")
	}
	b.WriteString("\r\n")
}

func writeField(b *bufio.Writer, k string, vs []string) {
	for _, v := range vs {
		b.WriteString(k)
		b.WriteString(": ")
		b.WriteString(v)
		b.WriteString("\r\n")
	}
}

// originForm returns r's request target in origin form ("*" for a
// server-wide OPTIONS).
func originForm(r *http.Request) string {
	u := r.RequestURI
	if strings.HasPrefix(u, "/") || u == "*" {
		return u
	}
	if i := strings.Index(u, "://"); i >= 0 {
		rest := u[i+3:]
		j := strings.IndexAny(rest, "/?#")
		switch {
		case j < 0 || rest[j] == '#':
			if r.Method == http.MethodOptions {
				return "*"
			}
			return "/"
		case rest[j] == '/':
			t := rest[j:]
			if k := strings.IndexByte(t, '#'); k >= 0 {
				t = t[:k]
			}
			return t
		}
	}
	return r.URL.RequestURI()
}

// bodyWriter writes a request body to the origin on its own goroutine,
// so that an origin answering before it has read the body is heard.
type bodyWriter struct {
	r       *http.Request
	oc      *originConn
	chunked bool
	bufs    *bufPool
	start   chan struct{} // closed: send the body (the origin's 100)
	cancel  chan struct{} // closed: do not send it (a final answer came first)
	once    sync.Once
	done    chan error
	waited  bool
	result  error // what done delivered
}

var errBodyNotSent = errors.New("request body not sent: the origin answered first")

func startBody(r *http.Request, oc *originConn, chunked, expect bool, bufs *bufPool) *bodyWriter {
	bw := &bodyWriter{r: r, oc: oc, chunked: chunked, bufs: bufs, done: make(chan error, 1)}
	if expect {
		bw.start = make(chan struct{})
		bw.cancel = make(chan struct{})
	}
	go bw.run()
	return bw
}

// proceed lets a body waiting for the origin's 100 go.
func (bw *bodyWriter) proceed() {
	if bw.start != nil {
		bw.once.Do(func() { close(bw.start) })
	}
}

// dropUnsent keeps a body still waiting for the origin's 100 from going.
func (bw *bodyWriter) dropUnsent() {
	if bw.cancel != nil {
		bw.once.Do(func() { close(bw.cancel) })
	}
}

func (bw *bodyWriter) run() {
	if bw.start != nil {
		t := time.NewTimer(expectContinueWait)
		select {
		case <-bw.start:
		case <-t.C:
		case <-bw.cancel:
			t.Stop()
			bw.done <- errBodyNotSent
			return
		}
		t.Stop()
	}
	err, readErr := writeBody(bw.oc.bw, bw.r, bw.chunked, bw.bufs)
	if readErr {
		// The client's body was cut short: the origin must not take
		// what it got for a whole request.
		bw.oc.c.Close()
	}
	bw.done <- err
}

// wait returns whether the body writer finished and wrote the body
// whole, waiting at most d (d < 0: no limit).
func (bw *bodyWriter) wait(d time.Duration) (finished, ok bool) {
	if bw.waited {
		return true, bw.result == nil
	}
	switch {
	case d < 0:
		bw.result = <-bw.done
	case d == 0:
		select {
		case bw.result = <-bw.done:
		default:
			return false, false
		}
	default:
		t := time.NewTimer(d)
		select {
		case bw.result = <-bw.done:
			t.Stop()
		case <-t.C:
			return false, false
		}
	}
	bw.waited = true
	return true, bw.result == nil
}

// abort stops the body writer (its origin connection is being given up)
// and waits for it: a read of the client's body is unblocked by a read
// deadline on the client connection, which is not reused.
func (bw *bodyWriter) abort(w http.ResponseWriter, oc *originConn) {
	bw.dropUnsent()
	if finished, _ := bw.wait(0); finished {
		return
	}
	oc.c.SetDeadline(aLongTimeAgo)
	http.NewResponseController(w).SetReadDeadline(aLongTimeAgo)
	bw.wait(-1)
}

// writeBody copies r's body to b, chunked or as it is, and flushes.
// readErr tells a failure reading the client's body from one writing to
// the origin.
func writeBody(b *bufio.Writer, r *http.Request, chunked bool, bufs *bufPool) (err error, readErr bool) {
	src := &readErrReader{r: r.Body}
	if !chunked {
		var n int64
		n, err = b.ReadFrom(src)
		if err == nil && n != r.ContentLength {
			err = io.ErrUnexpectedEOF
			src.err = err
		}
	} else {
		bp := bufs.get()
		buf := *bp
		for {
			n, rerr := src.Read(buf)
			if n > 0 {
				b.WriteString(strconv.FormatInt(int64(n), 16))
				b.WriteString("\r\n")
				b.Write(buf[:n])
				if _, err = b.WriteString("\r\n"); err != nil {
					break
				}
			}
			if rerr == io.EOF {
				b.WriteString("0\r\n")
				for k, vs := range r.Trailer {
					writeField(b, k, vs)
				}
				_, err = b.WriteString("\r\n")
				break
			}
			if rerr != nil {
				err = rerr
				break
			}
		}
		bufs.put(bp)
	}
	if err == nil {
		err = b.Flush()
	}
	return err, src.err != nil
}

// readErrReader records the error (other than EOF) its reader returned.
type readErrReader struct {
	r   io.Reader
	err error
}

func (e *readErrReader) Read(b []byte) (int, error) {
	n, err := e.r.Read(b)
	if err != nil && err != io.EOF {
		e.err = err
	}
	return n, err
}

// relayResponse forwards an origin's final answer (its head already in
// w's header map) to w, body and trailers included, and puts oc back in
// the pool when the exchange ended cleanly. A body the origin cut short
// aborts the client's answer (panic(http.ErrAbortHandler): no final
// chunk, the connection closed). stop ends the watch on the client's
// context.
func (p *Proxy) relayResponse(w http.ResponseWriter, x *exchange, oc *originConn, a answer, stop func() bool) {
	r := x.r
	reusable := !a.close
	aborted := false
	defer func() {
		stop()
		if bw := x.body; bw != nil {
			if finished, ok := bw.wait(bodyWriteWait); !finished || !ok {
				reusable = false
				bw.abort(w, oc)
			}
		}
		if reusable {
			p.origins.put(oc)
		} else {
			p.origins.discard(oc)
		}
		if aborted {
			panic(http.ErrAbortHandler)
		}
	}()
	wh := w.Header()
	announced := wh["Trailer"]
	removeHopByHop(wh, false)
	wh["Via"] = append(wh["Via"], p.via11)
	if _, ok := wh["Content-Type"]; !ok {
		wh["Content-Type"] = nil // no sniffing: forward what the origin said
	}
	if a.chunked && len(announced) > 0 {
		wh["Trailer"] = announced
	}
	if bw := x.body; bw != nil {
		// A body the origin did not ask for (no 100 yet) is not sent; one
		// it did not read before answering ends the client's connection.
		bw.dropUnsent()
		if finished, ok := bw.wait(bodyWriteWait); !finished || !ok {
			reusable = false
			wh["Connection"] = []string{"close"}
		}
	}
	w.WriteHeader(a.status)
	if a.length == 0 {
		return
	}
	x.ob = originBody{br: oc.br, chunked: a.chunked, toClose: a.length < 0 && !a.chunked}
	if a.length > 0 {
		x.ob.left = a.length
	}
	werr, rerr := copyBody(w, &x.ob, x.buf)
	switch {
	case rerr != nil:
		reusable = false
		if r.Context().Err() == nil {
			p.logger().Debug("origin body cut short; client answer aborted", "host", r.Host, "err", rerr)
			aborted = true
		}
		return
	case werr != nil:
		reusable = false
		return
	}
	if tr := x.ob.trailer; len(tr) > 0 {
		http.NewResponseController(w).Flush()
		for k, vs := range tr {
			if hopByHop(k) || k == "Content-Length" {
				continue
			}
			if hasToken(announced, k) {
				wh[k] = vs
			} else {
				wh[http.TrailerPrefix+k] = vs
			}
		}
	}
}

// copyBody copies an origin's answer body to w with buf, flushing
// whenever the origin has sent nothing more yet (a stream goes out as it
// comes). It returns the write and the read error apart.
func copyBody(w http.ResponseWriter, body *originBody, buf []byte) (werr, rerr error) {
	buf = buf[:cap(buf)]
	var rc *http.ResponseController
	for {
		n, err := body.Read(buf)
		if n > 0 {
			if _, werr = w.Write(buf[:n]); werr != nil {
				return werr, nil
			}
			if err == nil && !body.more() {
				if rc == nil {
					rc = http.NewResponseController(w)
				}
				if werr = rc.Flush(); werr != nil {
					return werr, nil
				}
			}
		}
		if err == io.EOF {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// relayUpgrade forwards a 101 answer (its head in w's header map) and
// then relays bytes both ways until either side ends.
func (p *Proxy) relayUpgrade(w http.ResponseWriter, oc *originConn) {
	defer p.origins.discard(oc)
	h := w.Header()
	client, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer client.Close()
	removeHopByHop(h, true)
	h["Via"] = append(h["Via"], p.via11)
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n")
	for k, vs := range h {
		writeField(brw.Writer, k, vs)
	}
	brw.WriteString("\r\n")
	if n := oc.br.Buffered(); n > 0 {
		b, _ := oc.br.Peek(n)
		brw.Write(b)
	}
	if err := brw.Flush(); err != nil {
		return
	}
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		if _, err := oc.c.Write(b); err != nil {
			return
		}
	}
	done := make(chan struct{})
	go func() {
		io.Copy(oc.c, client)
		oc.c.Close()
		client.Close()
		close(done)
	}()
	io.Copy(client, oc.c)
	oc.c.Close()
	client.Close()
	<-done
}

// writeResponse writes a response Balise made (block page, refusal,
// error) to w.
func writeResponse(w http.ResponseWriter, resp *http.Response) {
	wh := w.Header()
	for k, vs := range resp.Header {
		wh[k] = vs
	}
	w.WriteHeader(resp.StatusCode)
	if resp.Body != nil {
		io.Copy(w, resp.Body)
		resp.Body.Close()
	}
}

// hopByHop reports whether the canonical field name k is hop-by-hop
// whatever Connection says.
func hopByHop(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Te", "Transfer-Encoding",
		"Upgrade", "Proxy-Authenticate", "Proxy-Authorization", "Trailer":
		return true
	}
	return false
}

// removeHopByHop deletes h's hop-by-hop fields and those its Connection
// names; keepUpgrade keeps Upgrade (a 101 answer).
func removeHopByHop(h http.Header, keepUpgrade bool) {
	for _, v := range h["Connection"] {
		for f := range strings.SplitSeq(v, ",") {
			if f = textproto.TrimString(f); f != "" {
				k := http.CanonicalHeaderKey(f)
				if k == "Upgrade" && keepUpgrade {
					continue
				}
				delete(h, k)
			}
		}
	}
	for k := range h {
		if hopByHop(k) && !(k == "Upgrade" && keepUpgrade) {
			delete(h, k)
		}
	}
}

// hasToken reports whether the comma-separated lists vs hold token
// (case-insensitive).
func hasToken(vs []string, token string) bool {
	for _, v := range vs {
		for v != "" {
			var f string
			f, v, _ = strings.Cut(v, ",")
			if strings.EqualFold(textproto.TrimString(f), token) {
				return true
			}
		}
	}
	return false
}

// isUpgrade reports whether a request asks for a protocol upgrade.
func isUpgrade(h http.Header) bool {
	return len(h["Upgrade"]) > 0 && hasToken(h["Connection"], "upgrade")
}

// idempotent reports whether a request with method m may be sent again
// (RFC 9110 §9.2.2).
func idempotent(m string) bool {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

// bufPool holds the buffers bodies are copied with.
type bufPool struct{ p sync.Pool }

func (b *bufPool) get() *[]byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return v
	}
	buf := make([]byte, copyBufSize)
	return &buf
}

func (b *bufPool) put(v *[]byte) { b.p.Put(v) }
