package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"
)

// rawOrigin accepts connections and answers each request read on them
// with answer(n), n counting requests on that connection from 1; when
// answer returns "" the connection is closed without a response.
// It returns the port and the number of accepted connections.
func rawOrigin(t *testing.T, answer func(n int) string) (string, *atomic.Int32) {
	t.Helper()
	var accepted atomic.Int32
	_, port := acceptLoop(t, &accepted, 10*time.Second, func(_ int32, c net.Conn) {
		br := bufio.NewReader(c)
		for n := 1; ; n++ {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			a := answer(n)
			if a == "" {
				return
			}
			if _, err := io.WriteString(c, a); err != nil {
				return
			}
		}
	})
	return port, &accepted
}

// acceptLoop listens on loopback and runs handle on each connection (n
// counting them from 1 in accepted) with a deadline of within; the
// listener and the open connections close, and the goroutines end,
// when the test does.
func acceptLoop(t *testing.T, accepted *atomic.Int32, within time.Duration, handle func(n int32, c net.Conn)) (net.Listener, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := accepted.Add(1)
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(within))
				handle(n, c)
			}()
		}
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return ln, port
}

func proxyGet(t *testing.T, client *http.Client, method, url string) (int, string, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

func TestOriginPool(t *testing.T) {
	const ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Origin: raw\r\n\r\nok"
	tests := []struct {
		name         string
		answer       func(n int) string
		method       string
		requests     int
		wantStatus   int
		wantBody     string
		wantAccepted int32
	}{
		{"kept alive and reused", func(int) string { return ok }, "GET", 3, 200, "ok", 1},
		{"closed after each answer: retried on a new connection", func(n int) string {
			if n > 1 {
				return ""
			}
			return ok
		}, "GET", 3, 200, "ok", 3},
		{"Connection: close not reused", func(int) string {
			return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
		}, "GET", 2, 200, "ok", 2},
		{"informational answer skipped", func(int) string {
			return "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" + ok
		}, "GET", 2, 200, "ok", 1},
		{"chunked body", func(int) string {
			return "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"
		}, "GET", 2, 200, "abcde", 1},
		{"HEAD has no body", func(int) string {
			return "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
		}, "HEAD", 2, 200, "", 1},
		{"origin never answers", func(int) string { return "" }, "GET", 1, 502, "", 1},
		{"response head too large", func(int) string {
			return "HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("a", 300<<10) + "\r\nContent-Length: 2\r\n\r\nok"
		}, "GET", 1, 502, "", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := startEnv(t, testSpec(), nil)
			port, accepted := rawOrigin(t, tt.answer)
			client := e.client(nil, "")
			tr := client.Transport.(*http.Transport)
			tr.DisableKeepAlives = false // so that requests do not ask the origin to close
			defer tr.CloseIdleConnections()
			for i := range tt.requests {
				status, body, h := proxyGet(t, client, tt.method, "http://unlisted.test:"+port+"/")
				if status != tt.wantStatus || (status == 200 && body != tt.wantBody) {
					t.Fatalf("request %d: %s = %d %q, want %d %q", i+1, tt.method, status, body, tt.wantStatus, tt.wantBody)
				}
				if status == 200 && tt.method == "GET" && tt.wantBody == "ok" && h.Get("X-Origin") != "raw" && !strings.Contains(tt.name, "close") {
					t.Errorf("request %d: X-Origin = %q, want raw", i+1, h.Get("X-Origin"))
				}
			}
			if got := accepted.Load(); got != tt.wantAccepted {
				t.Errorf("origin connections = %d, want %d", got, tt.wantAccepted)
			}
		})
	}
}

// TestOriginPoolClientGone checks that an origin connection is cut when
// the client goes away, while waiting for the answer or while a long
// body streams.
func TestOriginPoolClientGone(t *testing.T) {
	for _, stream := range []bool{false, true} {
		t.Run(fmt.Sprintf("stream=%v", stream), func(t *testing.T) {
			e := startEnv(t, testSpec(), nil)
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			closed := make(chan struct{})
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				http.ReadRequest(bufio.NewReader(c))
				if stream {
					io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
					chunk := "1000\r\n" + strings.Repeat("x", 0x1000) + "\r\n"
					for {
						if _, err := io.WriteString(c, chunk); err != nil {
							break
						}
					}
				} else {
					io.Copy(io.Discard, c) // returns when the proxy closes
				}
				close(closed)
			}()
			_, port, _ := net.SplitHostPort(ln.Addr().String())
			c, err := net.Dial("tcp", e.addr)
			if err != nil {
				t.Fatal(err)
			}
			io.WriteString(c, "GET http://unlisted.test:"+port+"/ HTTP/1.1\r\nHost: unlisted.test:"+port+"\r\n\r\n")
			if stream {
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := io.ReadFull(c, make([]byte, 1000)); err != nil {
					t.Fatalf("reading the streamed answer: %v", err)
				}
			} else {
				time.Sleep(200 * time.Millisecond)
			}
			c.Close()
			select {
			case <-closed:
			case <-time.After(5 * time.Second):
				t.Fatal("origin connection still open 5s after the client left")
			}
		})
	}
}

// TestReadAnswer compares Balise's answer reader (readAnswer and
// originBody) with net/http's on well-formed answers, read through a
// reader that hands out one byte at a time, and checks that it refuses
// what it must.
func TestReadAnswer(t *testing.T) {
	good := []struct{ raw, method string }{
		{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello", "GET"},
		{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nX-Sum: 9\r\n\r\n", "GET"},
		{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "GET"},
		{"HTTP/1.1 204 No Content\r\n\r\n", "GET"},
		{"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n", "GET"},
		{"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", "HEAD"},
		{"HTTP/1.0 200 OK\r\n\r\nuntil the end", "GET"},
		{"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", "GET"},
		{"HTTP/1.1 404\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", "GET"},
		{"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", "GET"},
	}
	for _, tt := range good {
		want, err := http.ReadResponse(bufio.NewReader(strings.NewReader(tt.raw)), &http.Request{Method: tt.method})
		if err != nil {
			t.Fatalf("net/http on %q: %v", tt.raw, err)
		}
		wantBody, _ := io.ReadAll(want.Body)
		br := bufio.NewReaderSize(iotest.OneByteReader(strings.NewReader(tt.raw)), 16)
		h := http.Header{}
		a, err := readAnswer(br, h, tt.method == "HEAD", nil)
		if err != nil {
			t.Errorf("readAnswer(%q): %v", tt.raw, err)
			continue
		}
		b := originBody{br: br, chunked: a.chunked, toClose: a.length < 0 && !a.chunked}
		if a.length > 0 {
			b.left = a.length
		}
		var body []byte
		if a.length != 0 {
			body, err = io.ReadAll(&b)
			if err != nil {
				t.Errorf("body of %q: %v", tt.raw, err)
			}
		}
		if a.status != want.StatusCode || string(body) != string(wantBody) || a.close != want.Close {
			t.Errorf("%q: status %d body %q close %v; net/http: %d %q %v", tt.raw, a.status, body, a.close, want.StatusCode, wantBody, want.Close)
		}
		if want.ContentLength >= 0 && a.length != want.ContentLength && tt.method != "HEAD" {
			t.Errorf("%q: length %d, net/http %d", tt.raw, a.length, want.ContentLength)
		}
		for k, vs := range want.Header {
			if strings.Join(h[k], ",") != strings.Join(vs, ",") {
				t.Errorf("%q: %s = %q, net/http %q", tt.raw, k, h[k], vs)
			}
		}
		for k, vs := range want.Trailer {
			if strings.Join(b.trailer[k], ",") != strings.Join(vs, ",") {
				t.Errorf("%q: trailer %s = %q, net/http %q", tt.raw, k, b.trailer[k], vs)
			}
		}
	}
	bad := []string{
		"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",                             // obsolete folding
		"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", // conflicting lengths
		"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
		"HTTP/1.1 200 OK\r\nBad Name: 1\r\n\r\n",
		"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n",
		"HTTP/2 200 OK\r\n\r\n",
		"HTTP/1.1 2x0 OK\r\n\r\n",
		"HTTP/1.1 099 Low\r\n\r\n",
	}
	for _, raw := range bad {
		if _, err := readAnswer(bufio.NewReader(strings.NewReader(raw)), http.Header{}, false, nil); !errors.Is(err, errBadAnswer) {
			t.Errorf("readAnswer(%q) = %v, want errBadAnswer", raw, err)
		}
	}
	cut := []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX3\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
	}
	for _, raw := range cut {
		br := bufio.NewReader(strings.NewReader(raw))
		a, err := readAnswer(br, http.Header{}, false, nil)
		if err != nil {
			t.Fatalf("readAnswer(%q): %v", raw, err)
		}
		b := originBody{br: br, chunked: a.chunked, left: max(a.length, 0)}
		if _, err := io.ReadAll(&b); err == nil {
			t.Errorf("body of %q read whole, want an error", raw)
		}
	}
}

// scriptOrigin is a raw TCP origin: serve runs on each accepted
// connection.
type scriptOrigin struct {
	t        *testing.T
	ln       net.Listener
	port     string
	serve    func(o *originSide)
	accepted atomic.Int32
	eofs     atomic.Int32 // connections the proxy closed while the origin waited for a request

	mu   sync.Mutex
	reqs []rawRequest
}

// rawRequest is one request as the origin received it, byte for byte.
type rawRequest struct {
	conn int32 // connection number, from 1
	head string
	body string
}

// originSide is one origin connection.
type originSide struct {
	s    *scriptOrigin
	n    int32
	c    net.Conn
	br   *bufio.Reader
	seen int // requests read on this connection
}

func startScriptOrigin(t *testing.T, serve func(o *originSide)) *scriptOrigin {
	t.Helper()
	s := &scriptOrigin{t: t, serve: serve}
	s.ln, s.port = acceptLoop(t, &s.accepted, 15*time.Second, func(n int32, c net.Conn) {
		s.serve(&originSide{s: s, n: n, c: c, br: bufio.NewReader(c)})
	})
	return s
}

func (s *scriptOrigin) requests() []rawRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]rawRequest(nil), s.reqs...)
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// next reads one request, head and body by its framing, and records its
// raw bytes. A connection closed before a request counts in eofs.
func (o *originSide) next() (rawRequest, error) {
	var head strings.Builder
	for {
		line, err := o.br.ReadString('\n')
		head.WriteString(line)
		if err != nil {
			if head.Len() == 0 {
				o.s.eofs.Add(1)
			}
			return rawRequest{}, err
		}
		if line == "\r\n" {
			break
		}
	}
	rr := rawRequest{conn: o.n, head: head.String()}
	body, err := o.readBody(rr.head, false)
	rr.body = body
	if err == nil {
		o.s.mu.Lock()
		o.s.reqs = append(o.s.reqs, rr)
		o.s.mu.Unlock()
		o.seen++
	}
	return rr, err
}

// readBody reads the raw body framed by head. With headOnly the body is
// not read (the origin answers first).
func (o *originSide) readBody(head string, headOnly bool) (string, error) {
	if headOnly {
		return "", nil
	}
	var b strings.Builder
	if hasToken(fieldValues(head, "Transfer-Encoding"), "chunked") {
		for {
			line, err := o.br.ReadString('\n')
			b.WriteString(line)
			if err != nil {
				return b.String(), err
			}
			size, err := strconv.ParseInt(strings.TrimSpace(strings.SplitN(line, ";", 2)[0]), 16, 64)
			if err != nil {
				return b.String(), err
			}
			if size == 0 {
				for {
					line, err := o.br.ReadString('\n')
					b.WriteString(line)
					if err != nil || line == "\r\n" {
						return b.String(), err
					}
				}
			}
			chunk := make([]byte, size+2)
			if _, err := io.ReadFull(o.br, chunk); err != nil {
				return b.String(), err
			}
			b.Write(chunk)
		}
	}
	if cl := fieldValues(head, "Content-Length"); len(cl) > 0 {
		n, _ := strconv.Atoi(cl[0])
		buf := make([]byte, n)
		k, err := io.ReadFull(o.br, buf)
		b.Write(buf[:k])
		return b.String(), err
	}
	return "", nil
}

func (o *originSide) write(s string) error {
	_, err := io.WriteString(o.c, s)
	return err
}

// answerAll answers every request on the connection with answer(i), i
// counting requests from 1.
func answerAll(answer func(i int) string) func(o *originSide) {
	return func(o *originSide) {
		for i := 1; ; i++ {
			if _, err := o.next(); err != nil {
				return
			}
			if err := o.write(answer(i)); err != nil {
				return
			}
		}
	}
}

// fieldValues returns the values of the field name in a raw head.
func fieldValues(head, name string) []string {
	var out []string
	for _, line := range strings.Split(head, "\r\n")[1:] {
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.EqualFold(strings.TrimSpace(k), name) {
			out = append(out, strings.TrimSpace(v))
		}
	}
	return out
}

// decodeChunked decodes a raw chunked body (without trailers).
func decodeChunked(raw string) (string, string, error) {
	br := bufio.NewReader(strings.NewReader(raw))
	var out strings.Builder
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return out.String(), "", err
		}
		size, err := strconv.ParseInt(strings.TrimSpace(line), 16, 64)
		if err != nil {
			return out.String(), "", err
		}
		if size == 0 {
			rest, _ := io.ReadAll(br)
			return out.String(), string(rest), nil
		}
		chunk := make([]byte, size+2)
		if _, err := io.ReadFull(br, chunk); err != nil {
			return out.String(), "", err
		}
		out.Write(chunk[:size])
	}
}

// closeAfterFirst answers one request, keeps the connection a moment (so
// that the proxy pools it) and closes it.
func closeAfterFirst(o *originSide) {
	if _, err := o.next(); err != nil {
		return
	}
	o.write(okAnswer)
	time.Sleep(100 * time.Millisecond)
}

// readHeadOnly reads a request head and records it (without its body).
func readHeadOnly(o *originSide) (string, error) {
	var head strings.Builder
	for {
		line, err := o.br.ReadString('\n')
		head.WriteString(line)
		if err != nil {
			return "", err
		}
		if line == "\r\n" {
			return head.String(), nil
		}
	}
}

// readRawHead reads a response head as bytes.
func readRawHead(t *testing.T, br *bufio.Reader) string {
	t.Helper()
	var b bytes.Buffer
	for {
		line, err := br.ReadString('\n')
		b.WriteString(line)
		if err != nil {
			t.Fatalf("reading the answer's head: %v (%q)", err, b.String())
		}
		if line == "\r\n" {
			return b.String()
		}
	}
}
