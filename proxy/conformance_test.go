package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The conformance table drives the plain HTTP forwarder with raw bytes
// on both sides: a raw TCP origin records exactly what it received and
// answers scripted bytes; raw client sockets talk to the proxy, in
// absolute form to the explicit listener and in origin form to the
// transparent listener.

// confClient is the client side of a row: a mode and the proxy address
// it talks to.
type confClient struct {
	t           *testing.T
	e           *env
	transparent bool
	addr        string // proxy listener
	origin      *scriptOrigin
}

// req returns the request head for method and path to host (a name the
// test DNS resolves to the origin), in the form the mode uses, with extra
// header lines (each ending in CRLF) and the blank line.
func (c *confClient) req(method, host, path, extra string) string {
	authority := host + ":" + c.origin.port
	target := "http://" + authority + path
	if c.transparent {
		target = path
	}
	return method + " " + target + " HTTP/1.1\r\nHost: " + authority + "\r\n" + extra + "\r\n"
}

func (c *confClient) dial() (net.Conn, *bufio.Reader) {
	c.t.Helper()
	conn, err := net.DialTimeout("tcp", c.addr, 5*time.Second)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	return conn, bufio.NewReader(conn)
}

// roundTrip sends raw and reads one response (body read whole).
func (c *confClient) roundTrip(conn net.Conn, br *bufio.Reader, method, raw string) (*http.Response, string, error) {
	c.t.Helper()
	if raw != "" {
		if _, err := io.WriteString(conn, raw); err != nil {
			c.t.Fatal(err)
		}
	}
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		return nil, "", err
	}
	b, err := io.ReadAll(resp.Body)
	return resp, string(b), err
}

func (c *confClient) get(path string) (*http.Response, string) {
	c.t.Helper()
	conn, br := c.dial()
	resp, body, err := c.roundTrip(conn, br, "GET", c.req("GET", "unlisted.test", path, ""))
	if err != nil {
		c.t.Fatalf("GET %s: %v", path, err)
	}
	return resp, body
}

// confRow is one semantic checked in both modes (unless explicitOnly).
type confRow struct {
	name         string
	explicitOnly bool
	origin       func(o *originSide)
	run          func(t *testing.T, c *confClient)
}

const okAnswer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

func TestConformance(t *testing.T) {
	for _, row := range conformanceRows() {
		for _, transparent := range []bool{false, true} {
			if transparent && row.explicitOnly {
				continue
			}
			mode := "explicit"
			if transparent {
				mode = "transparent"
			}
			t.Run(row.name+"/"+mode, func(t *testing.T) {
				origin := startScriptOrigin(t, row.origin)
				dsts := &dstMap{}
				e := startEnv(t, testSpec(), func(o *Options) { o.OriginalDestination = dsts.hook })
				c := &confClient{t: t, e: e, transparent: transparent, addr: e.addr, origin: origin}
				if transparent {
					ha, _ := startTransparent(t, e)
					dsts.set(ha, origin.ln.Addr().String())
					c.addr = ha
				}
				row.run(t, c)
			})
		}
	}
}

func conformanceRows() []confRow {
	return []confRow{
		{
			name:   "request hop-by-hop fields dropped",
			origin: answerAll(func(int) string { return okAnswer }),
			run: func(t *testing.T, c *confClient) {
				conn, br := c.dial()
				raw := c.req("GET", "unlisted.test", "/h", "Connection: keep-alive, X-Named\r\nX-Named: secret\r\n"+
					"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: gzip\r\nTrailer: X-T\r\n"+
					"Proxy-Authorization: Basic dTpw\r\nUpgrade: h2c\r\nX-Kept: yes\r\n")
				if _, _, err := c.roundTrip(conn, br, "GET", raw); err != nil {
					t.Fatal(err)
				}
				rs := c.origin.requests()
				if len(rs) != 1 {
					t.Fatalf("origin saw %d requests, want 1", len(rs))
				}
				for _, f := range []string{"Connection", "X-Named", "Keep-Alive", "Proxy-Connection", "TE", "Trailer", "Proxy-Authorization", "Upgrade"} {
					if v := fieldValues(rs[0].head, f); len(v) > 0 {
						t.Errorf("origin received %s: %q", f, v)
					}
				}
				if v := fieldValues(rs[0].head, "X-Kept"); len(v) != 1 || v[0] != "yes" {
					t.Errorf("origin X-Kept = %q, want yes", v)
				}
				if !strings.HasPrefix(rs[0].head, "GET /h HTTP/1.1\r\n") {
					t.Errorf("request line = %q, want origin form", strings.SplitN(rs[0].head, "\r\n", 2)[0])
				}
			},
		},
		{
			name:   "TE trailers kept",
			origin: answerAll(func(int) string { return okAnswer }),
			run: func(t *testing.T, c *confClient) {
				conn, br := c.dial()
				if _, _, err := c.roundTrip(conn, br, "GET", c.req("GET", "unlisted.test", "/", "TE: trailers\r\n")); err != nil {
					t.Fatal(err)
				}
				if v := fieldValues(c.origin.requests()[0].head, "TE"); len(v) != 1 || v[0] != "trailers" {
					t.Errorf("origin TE = %q, want [trailers]", v)
				}
			},
		},
		{
			name: "response hop-by-hop fields dropped",
			origin: answerAll(func(int) string {
				return "HTTP/1.1 200 OK\r\nConnection: X-Named\r\nX-Named: secret\r\nKeep-Alive: timeout=5\r\n" +
					"Proxy-Connection: keep-alive\r\nProxy-Authenticate: Basic realm=x\r\nUpgrade: foo\r\nTrailer: X-T\r\n" +
					"X-Kept: yes\r\nContent-Length: 2\r\n\r\nok"
			}),
			run: func(t *testing.T, c *confClient) {
				conn, br := c.dial()
				if _, err := io.WriteString(conn, c.req("GET", "unlisted.test", "/", "")); err != nil {
					t.Fatal(err)
				}
				head := readRawHead(t, br)
				for _, f := range []string{"X-Named", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Upgrade", "Trailer"} {
					if v := fieldValues(head, f); len(v) > 0 {
						t.Errorf("client received %s: %q", f, v)
					}
				}
				if v := fieldValues(head, "Connection"); len(v) > 0 && !strings.EqualFold(v[0], "keep-alive") {
					t.Errorf("client received Connection: %q", v)
				}
				if v := fieldValues(head, "X-Kept"); len(v) != 1 {
					t.Errorf("client X-Kept = %q, want yes", v)
				}
			},
		},
		{
			name: "Via added both ways after existing entries",
			origin: answerAll(func(int) string {
				return "HTTP/1.1 200 OK\r\nVia: 1.1 upstream-cache\r\nContent-Length: 2\r\n\r\nok"
			}),
			run: func(t *testing.T, c *confClient) {
				conn, br := c.dial()
				resp, _, err := c.roundTrip(conn, br, "GET", c.req("GET", "unlisted.test", "/", "Via: 1.0 child-proxy\r\n"))
				if err != nil {
					t.Fatal(err)
				}
				want := "1.1 " + c.e.p.via
				got := strings.Join(fieldValues(c.origin.requests()[0].head, "Via"), ", ")
				if got != "1.0 child-proxy, "+want {
					t.Errorf("origin Via = %q, want %q", got, "1.0 child-proxy, "+want)
				}
				got = strings.Join(resp.Header.Values("Via"), ", ")
				if got != "1.1 upstream-cache, "+want {
					t.Errorf("client Via = %q, want %q", got, "1.1 upstream-cache, "+want)
				}
			},
		},
		func() confRow {
			var sent100 atomic.Bool
			return confRow{
				name: "100-continue: the origin's 100, then the body",
				origin: func(o *originSide) {
					o.c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
					head, err := readHeadOnly(o)
					if err != nil {
						return
					}
					if n, _ := o.br.Read(make([]byte, 1)); n > 0 {
						o.write("HTTP/1.1 400 Bad Request\r\nContent-Length: 10\r\n\r\nearly body")
						return
					}
					o.c.SetReadDeadline(time.Now().Add(5 * time.Second))
					sent100.Store(true)
					o.write("HTTP/1.1 100 Continue\r\n\r\n")
					body, err := o.readBody(head, false)
					if err != nil {
						return
					}
					o.write("HTTP/1.1 200 OK\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body)
				},
				run: func(t *testing.T, c *confClient) {
					sent100.Store(false)
					conn, br := c.dial()
					io.WriteString(conn, c.req("POST", "unlisted.test", "/up", "Expect: 100-continue\r\nContent-Length: 5\r\n"))
					resp, err := http.ReadResponse(br, nil)
					if err != nil {
						t.Fatal(err)
					}
					if resp.StatusCode != 100 {
						t.Fatalf("first answer = %d, want 100", resp.StatusCode)
					}
					if !sent100.Load() {
						t.Fatalf("client got 100 before the origin sent one")
					}
					resp, body, err := c.roundTrip(conn, br, "POST", "hello")
					if err != nil || resp.StatusCode != 200 || body != "hello" {
						t.Fatalf("answer = %v %q %v, want 200 hello", resp, body, err)
					}
				},
			}
		}(),
		{
			name: "100-continue: a final answer without the body",
			origin: func(o *originSide) {
				if _, err := readHeadOnly(o); err != nil {
					return
				}
				o.write("HTTP/1.1 401 Unauthorized\r\nContent-Length: 4\r\n\r\nnope")
				o.c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
				if n, _ := o.br.Read(make([]byte, 1)); n > 0 {
					o.s.mu.Lock()
					o.s.reqs = append(o.s.reqs, rawRequest{conn: o.n, body: "body bytes came"})
					o.s.mu.Unlock()
				}
			},
			run: func(t *testing.T, c *confClient) {
				conn, br := c.dial()
				resp, body, err := c.roundTrip(conn, br, "POST", c.req("POST", "unlisted.test", "/up", "Expect: 100-continue\r\nContent-Length: 5\r\n"))
				if err != nil || resp.StatusCode != 401 || body != "nope" {
					t.Fatalf("answer = %v %q %v, want 401 nope", resp, body, err)
				}
				time.Sleep(700 * time.Millisecond)
				if rs := c.origin.requests(); len(rs) > 0 {
					t.Errorf("the origin received body bytes it never asked for")
				}
			},
		},
		{
			name: "response trailers forwarded",
			origin: answerAll(func(int) string {
				return "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: abc\r\n\r\n"
			}),
			run: func(t *testing.T, c *confClient) {
				conn, br := c.dial()
				resp, body, err := c.roundTrip(conn, br, "GET", c.req("GET", "unlisted.test", "/", "TE: trailers\r\n"))
				if err != nil || body != "hello" {
					t.Fatalf("answer = %q %v", body, err)
				}
				if got := resp.Trailer.Get("X-Sum"); got != "abc" {
					t.Errorf("trailer X-Sum = %q, want abc", got)
				}
			},
		},
		func() confRow {
			got := make(chan struct{}, 1)
			return confRow{
				name: "chunked stream forwarded as it comes",
				origin: func(o *originSide) {
					if _, err := o.next(); err != nil {
						return
					}
					o.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nfirst\n\r\n")
					select {
					case <-got:
					case <-time.After(5 * time.Second):
					}
					o.write("5\r\nlast\n\r\n0\r\n\r\n")
				},
				run: func(t *testing.T, c *confClient) {
					conn, br := c.dial()
					io.WriteString(conn, c.req("GET", "unlisted.test", "/", ""))
					resp, err := http.ReadResponse(br, nil)
					if err != nil {
						t.Fatalf("head of a stream: %v", err)
					}
					line, err := bufio.NewReader(resp.Body).ReadString('\n')
					if err != nil || line != "first\n" {
						t.Fatalf("first chunk = %q %v", line, err)
					}
					got <- struct{}{}
				},
			}
		}(),
		{
			name:   "no Content-Type invented for an answer without one",
			origin: answerAll(func(int) string { return "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n<html" }),
			run: func(t *testing.T, c *confClient) {
				resp, body := c.get("/")
				if ct, ok := resp.Header["Content-Type"]; ok || body != "<html" {
					t.Errorf("answer Content-Type = %q, body %q; want none, <html", ct, body)
				}
			},
		},
		{
			name: "103 Early Hints forwarded before the answer",
			origin: answerAll(func(int) string {
				return "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" + okAnswer
			}),
			run: func(t *testing.T, c *confClient) {
				conn, br := c.dial()
				resp, _, err := c.roundTrip(conn, br, "GET", c.req("GET", "unlisted.test", "/", ""))
				if err != nil || resp.StatusCode != 103 || resp.Header.Get("Link") == "" {
					t.Fatalf("first answer = %v %v, want 103 with Link", resp, err)
				}
				resp, body, err := c.roundTrip(conn, br, "GET", "")
				if err != nil || resp.StatusCode != 200 || body != "ok" {
					t.Fatalf("final answer = %v %q %v", resp, body, err)
				}
			},
		},
		func() confRow {
			var n atomic.Int32 // answers given, on every connection
			return confRow{
				name: "malformed answer heads: 502",
				origin: answerAll(func(int) string {
					switch n.Add(1) {
					case 1:
						return "HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\nok"
					case 2:
						return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok"
					}
					return "HTTP/1.1 200 OK\r\nBad Name: x\r\nContent-Length: 2\r\n\r\nok"
				}),
				run: func(t *testing.T, c *confClient) {
					n.Store(0)
					for i := 1; i <= 3; i++ {
						resp, _ := c.get(fmt.Sprintf("/%d", i))
						if resp.StatusCode != http.StatusBadGateway || !strings.Contains(resp.Header.Get("Proxy-Status"), "http_protocol_error") {
							t.Errorf("malformed answer %d = %d (%q), want 502 http_protocol_error", i, resp.StatusCode, resp.Header.Get("Proxy-Status"))
						}
					}
					if got := n.Load(); got != 3 {
						t.Errorf("origin answered %d times, want 3", got)
					}
				},
			}
		}(),
		{
			name: "Transfer-Encoding over Content-Length: length dropped, connection not reused",
			origin: answerAll(func(int) string {
				return "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
			}),
			run: func(t *testing.T, c *confClient) {
				for range 2 {
					resp, body := c.get("/")
					if resp.StatusCode != 200 || body != "ok" || resp.ContentLength == 100 {
						t.Fatalf("answer = %d %q (length %d), want 200 ok without the length", resp.StatusCode, body, resp.ContentLength)
					}
				}
				if n := c.origin.accepted.Load(); n != 2 {
					t.Errorf("origin connections = %d, want 2", n)
				}
			},
		},
		{
			name: "answer delimited by the origin's close",
			origin: func(o *originSide) {
				if _, err := o.next(); err == nil {
					o.write("HTTP/1.0 200 OK\r\n\r\nuntil close")
				}
			},
			run: func(t *testing.T, c *confClient) {
				resp, body := c.get("/")
				if resp.StatusCode != 200 || body != "until close" {
					t.Errorf("answer = %d %q, want 200 until close", resp.StatusCode, body)
				}
			},
		},
		{
			name:   "request body forwarded exactly: Content-Length",
			origin: answerAll(func(int) string { return okAnswer }),
			run: func(t *testing.T, c *confClient) {
				conn, br := c.dial()
				body := "hello\r\n world \x00\xff"
				raw := c.req("PUT", "unlisted.test", "/b", "Content-Length: "+strconv.Itoa(len(body))+"\r\n") + body
				if resp, _, err := c.roundTrip(conn, br, "PUT", raw); err != nil || resp.StatusCode != 200 {
					t.Fatalf("PUT: %v %v", resp, err)
				}
				r := c.origin.requests()[0]
				if r.body != body || fieldValues(r.head, "Content-Length")[0] != strconv.Itoa(len(body)) {
					t.Errorf("origin body = %q (head %q), want %q", r.body, r.head, body)
				}
			},
		},
		{
			name:   "framing kept whatever Connection names",
			origin: answerAll(func(int) string { return okAnswer }),
			run: func(t *testing.T, c *confClient) {
				conn, br := c.dial()
				raw := c.req("POST", "unlisted.test", "/b", "Connection: Content-Length, Host\r\nContent-Length: 4\r\n") + "data"
				if resp, _, err := c.roundTrip(conn, br, "POST", raw); err != nil || resp.StatusCode != 200 {
					t.Fatalf("POST: %v %v", resp, err)
				}
				r := c.origin.requests()[0]
				if cl := fieldValues(r.head, "Content-Length"); len(cl) != 1 || cl[0] != "4" || r.body != "data" {
					t.Errorf("origin Content-Length %q, body %q; want 4, data", cl, r.body)
				}
				if h := fieldValues(r.head, "Host"); len(h) != 1 {
					t.Errorf("origin Host = %q, want one", h)
				}
			},
		},
		{
			name:   "request body forwarded exactly: chunked with trailers",
			origin: answerAll(func(int) string { return okAnswer }),
			run: func(t *testing.T, c *confClient) {
				conn, br := c.dial()
				raw := c.req("POST", "unlisted.test", "/b", "Transfer-Encoding: chunked\r\nTrailer: X-Check\r\n") +
					"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Check: 42\r\n\r\n"
				if resp, _, err := c.roundTrip(conn, br, "POST", raw); err != nil || resp.StatusCode != 200 {
					t.Fatalf("POST: %v %v", resp, err)
				}
				r := c.origin.requests()[0]
				if !hasToken(fieldValues(r.head, "Transfer-Encoding"), "chunked") || len(fieldValues(r.head, "Content-Length")) > 0 {
					t.Errorf("origin head %q: want chunked framing", r.head)
				}
				data, trailer, err := decodeChunked(r.body)
				if err != nil || data != "hello world" || !strings.Contains(trailer, "X-Check: 42\r\n") {
					t.Errorf("origin body %q decodes to %q, trailer %q (%v); want hello world, X-Check: 42", r.body, data, trailer, err)
				}
			},
		},
		{
			name: "truncated chunked answer aborts the client's",
			origin: func(o *originSide) {
				if _, err := o.next(); err == nil {
					o.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
				}
			},
			run: func(t *testing.T, c *confClient) {
				conn, br := c.dial()
				resp, body, err := c.roundTrip(conn, br, "GET", c.req("GET", "unlisted.test", "/", ""))
				if resp == nil {
					return // aborted before the head: fine
				}
				if err == nil {
					t.Errorf("client read a complete answer %q from a truncated one", body)
				}
			},
		},
		{
			name: "short Content-Length answer aborts the client's",
			origin: func(o *originSide) {
				if _, err := o.next(); err == nil {
					o.write("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
				}
			},
			run: func(t *testing.T, c *confClient) {
				conn, br := c.dial()
				resp, body, err := c.roundTrip(conn, br, "GET", c.req("GET", "unlisted.test", "/", ""))
				if resp != nil && err == nil {
					t.Errorf("client read a complete answer %q from a short one", body)
				}
			},
		},
		{
			name: "client body cut short: origin connection not reused",
			origin: func(o *originSide) {
				for {
					rr, err := o.next()
					if err != nil {
						if rr.head == "" && o.seen == 0 {
							return
						}
						return
					}
					o.write(okAnswer)
				}
			},
			run: func(t *testing.T, c *confClient) {
				conn, _ := c.dial()
				io.WriteString(conn, c.req("POST", "unlisted.test", "/", "Content-Length: 100\r\n")+"only ten b")
				waitFor(t, "the origin connection", func() bool { return c.origin.accepted.Load() == 1 })
				time.Sleep(100 * time.Millisecond)
				conn.Close()
				resp, _ := c.get("/after")
				if resp.StatusCode != 200 {
					t.Fatalf("GET after = %d", resp.StatusCode)
				}
				if n := c.origin.accepted.Load(); n != 2 {
					t.Errorf("origin connections = %d, want 2 (the cut one not reused)", n)
				}
				for _, r := range c.origin.requests() {
					if r.conn == 1 {
						t.Errorf("origin took the cut request for a whole one: %q", r.head)
					}
				}
			},
		},
		{
			name: "HEAD, 204 and 304 without body, kept alive",
			origin: answerAll(func(i int) string {
				switch i {
				case 1:
					return "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
				case 2:
					return "HTTP/1.1 204 No Content\r\n\r\n"
				case 3:
					return "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"
				}
				return okAnswer
			}),
			run: func(t *testing.T, c *confClient) {
				conn, br := c.dial()
				steps := []struct {
					method string
					status int
				}{{"HEAD", 200}, {"GET", 204}, {"GET", 304}, {"GET", 200}}
				for _, s := range steps {
					resp, body, err := c.roundTrip(conn, br, s.method, c.req(s.method, "unlisted.test", "/", ""))
					if err != nil || resp.StatusCode != s.status {
						t.Fatalf("%s = %v %v, want %d", s.method, resp, err, s.status)
					}
					if s.status != 200 || s.method == "HEAD" {
						if body != "" {
							t.Errorf("%s %d: body %q, want none", s.method, s.status, body)
						}
					}
					if s.method == "HEAD" && resp.ContentLength != 1000 {
						t.Errorf("HEAD Content-Length = %d, want 1000", resp.ContentLength)
					}
				}
				if n := c.origin.accepted.Load(); n != 1 {
					t.Errorf("origin connections = %d, want 1", n)
				}
			},
		},
		{
			name: "pipelined requests over one kept-alive origin connection",
			origin: answerAll(func(i int) string {
				return fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n%d", i)
			}),
			run: func(t *testing.T, c *confClient) {
				conn, br := c.dial()
				io.WriteString(conn, c.req("GET", "unlisted.test", "/1", "")+c.req("GET", "unlisted.test", "/2", ""))
				for i := 1; i <= 2; i++ {
					resp, body, err := c.roundTrip(conn, br, "GET", "")
					if err != nil || resp.StatusCode != 200 || body != strconv.Itoa(i) {
						t.Fatalf("answer %d = %v %q %v", i, resp, body, err)
					}
				}
				if n := c.origin.accepted.Load(); n != 1 {
					t.Errorf("origin connections = %d, want 1", n)
				}
			},
		},
		{
			name: "WebSocket upgrade relays bytes both ways",
			origin: func(o *originSide) {
				rr, err := o.next()
				if err != nil {
					return
				}
				if !hasToken(fieldValues(rr.head, "Connection"), "upgrade") || len(fieldValues(rr.head, "Upgrade")) != 1 {
					o.write("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
					return
				}
				o.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\nhi")
				buf := make([]byte, 4)
				if _, err := io.ReadFull(o.br, buf); err != nil {
					return
				}
				o.write("pong:" + string(buf))
			},
			run: func(t *testing.T, c *confClient) {
				conn, br := c.dial()
				io.WriteString(conn, c.req("GET", "unlisted.test", "/ws", "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"))
				resp, err := http.ReadResponse(br, nil)
				if err != nil || resp.StatusCode != 101 || resp.Header.Get("Upgrade") != "websocket" {
					t.Fatalf("upgrade answer = %v %v", resp, err)
				}
				got := make([]byte, 2)
				if _, err := io.ReadFull(br, got); err != nil || string(got) != "hi" {
					t.Fatalf("origin's first bytes = %q %v", got, err)
				}
				io.WriteString(conn, "ping")
				got = make([]byte, 9)
				if _, err := io.ReadFull(br, got); err != nil || string(got) != "pong:ping" {
					t.Fatalf("relayed answer = %q %v", got, err)
				}
			},
		},
		{
			name:         "idle pool: global cap closes the oldest",
			explicitOnly: true, // names give distinct pool keys
			origin:       answerAll(func(int) string { return okAnswer }),
			run: func(t *testing.T, c *confClient) {
				c.e.p.origins.setLimits(0, 2, 0)
				for _, host := range []string{"a.test", "b.test", "c.test"} {
					conn, br := c.dial()
					if resp, _, err := c.roundTrip(conn, br, "GET", c.req("GET", host, "/", "")); err != nil || resp.StatusCode != 200 {
						t.Fatalf("GET %s: %v %v", host, resp, err)
					}
				}
				waitFor(t, "the oldest idle connection closed", func() bool { return c.origin.eofs.Load() == 1 })
				if n := c.e.p.origins.idleCount(); n != 2 {
					t.Errorf("idle connections = %d, want 2", n)
				}
			},
		},
		{
			name:         "idle pool: per-host cap",
			explicitOnly: true,
			origin: func(o *originSide) {
				if _, err := o.next(); err != nil {
					return
				}
				// Both requests in flight at once, then both answered.
				waitFor(o.s.t, "two origin connections", func() bool { return o.s.accepted.Load() == 2 })
				o.write(okAnswer)
				o.next()
			},
			run: func(t *testing.T, c *confClient) {
				c.e.p.origins.setLimits(1, 0, 0)
				var wg sync.WaitGroup
				for range 2 {
					conn, br := c.dial()
					wg.Add(1)
					go func() {
						defer wg.Done()
						c.roundTrip(conn, br, "GET", c.req("GET", "unlisted.test", "/", ""))
					}()
				}
				wg.Wait()
				waitFor(t, "one idle connection closed", func() bool { return c.origin.eofs.Load() == 1 })
				if n := c.e.p.origins.idleCount(); n != 1 {
					t.Errorf("idle connections = %d, want 1", n)
				}
			},
		},
		{
			name:   "idle pool: swept by its timer",
			origin: answerAll(func(int) string { return okAnswer }),
			run: func(t *testing.T, c *confClient) {
				c.e.p.origins.setLimits(0, 0, 300*time.Millisecond)
				resp, _ := c.get("/")
				if resp.StatusCode != 200 {
					t.Fatal(resp.Status)
				}
				start := time.Now()
				waitFor(t, "the idle connection closed without another request", func() bool { return c.origin.eofs.Load() == 1 })
				if d := time.Since(start); d < 200*time.Millisecond {
					t.Errorf("idle connection closed after %v, before its idle timeout", d)
				}
				if n := c.e.p.origins.idleCount(); n != 0 {
					t.Errorf("idle connections = %d, want 0", n)
				}
			},
		},
		{
			name:   "idle pool: closed with the proxy",
			origin: answerAll(func(int) string { return okAnswer }),
			run: func(t *testing.T, c *confClient) {
				c.get("/")
				c.e.p.Close()
				waitFor(t, "the idle connection closed", func() bool { return c.origin.eofs.Load() == 1 })
			},
		},
		{
			name:   "stale kept-alive connection: GET retried",
			origin: closeAfterFirst,
			run: func(t *testing.T, c *confClient) {
				c.get("/1")
				time.Sleep(300 * time.Millisecond)
				resp, body := c.get("/2")
				if resp.StatusCode != 200 || body != "ok" {
					t.Errorf("GET on a stale connection = %d %q, want 200 ok (retried)", resp.StatusCode, body)
				}
				if n := c.origin.accepted.Load(); n != 2 {
					t.Errorf("origin connections = %d, want 2", n)
				}
			},
		},
		{
			name:   "stale kept-alive connection: POST not retried",
			origin: closeAfterFirst,
			run: func(t *testing.T, c *confClient) {
				c.get("/1")
				time.Sleep(300 * time.Millisecond)
				conn, br := c.dial()
				resp, _, err := c.roundTrip(conn, br, "POST", c.req("POST", "unlisted.test", "/2", "Content-Length: 4\r\n")+"data")
				if err == nil && resp.StatusCode == 200 {
					t.Errorf("POST on a stale connection = 200: it was sent again")
				}
				if n := c.origin.accepted.Load(); n != 1 {
					t.Errorf("origin connections = %d, want 1 (no second attempt)", n)
				}
			},
		},
	}
}
