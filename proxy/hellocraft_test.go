package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// This file crafts first flights (records, alerts, hellos with chosen
// extensions) and runs them through crypto/tls's server side, for the
// differential tests of the ClientHello reader.

// helloParts is a ClientHello message cut into its fixed part (version,
// random, session id, cipher suites, compression methods) and its
// extensions, so that tests can rebuild it with other extensions.
type helloParts struct {
	fixed []byte
	exts  []helloExt
}

type helloExt struct {
	typ  uint16
	data []byte
}

// splitHello cuts a single-record hello captured from a client.
func splitHello(t testing.TB, rec []byte) helloParts {
	t.Helper()
	msg := rec[recordHeaderLen:]
	body := msg[4:]
	r := reader{b: body}
	r.bytes(2 + 32)
	r.bytes(r.u8())
	r.bytes(r.u16())
	r.bytes(r.u8())
	fixed := body[:len(body)-len(r.b)]
	ext := reader{b: r.bytes(r.u16())}
	if r.bad || len(r.b) != 0 {
		t.Fatalf("splitHello: not a single-record hello")
	}
	var hp helloParts
	hp.fixed = append([]byte(nil), fixed...)
	for len(ext.b) > 0 {
		typ := ext.u16()
		data := ext.bytes(ext.u16())
		hp.exts = append(hp.exts, helloExt{uint16(typ), append([]byte(nil), data...)})
	}
	return hp
}

// with returns a copy whose extension typ has data (added at the front
// when missing; removed when data is nil).
func (hp helloParts) with(typ uint16, data []byte) helloParts {
	out := helloParts{fixed: hp.fixed}
	found := false
	for _, e := range hp.exts {
		if e.typ == typ {
			found = true
			if data != nil {
				out.exts = append(out.exts, helloExt{typ, data})
			}
			continue
		}
		out.exts = append(out.exts, e)
	}
	if !found && data != nil {
		out.exts = append([]helloExt{{typ, data}}, out.exts...)
	}
	return out
}

// plus returns a copy with e appended at the end of the extensions (just
// before pre_shared_key would be; Go's hellos here carry none).
func (hp helloParts) plus(e ...helloExt) helloParts {
	out := helloParts{fixed: hp.fixed, exts: append(append([]helloExt(nil), hp.exts...), e...)}
	return out
}

// msg returns the handshake message (type, length, body), with extra
// bytes after the extensions block (inside the message) when given.
func (hp helloParts) msg(extra ...byte) []byte {
	var exts []byte
	for _, e := range hp.exts {
		exts = append(exts, byte(e.typ>>8), byte(e.typ), byte(len(e.data)>>8), byte(len(e.data)))
		exts = append(exts, e.data...)
	}
	body := append(append([]byte(nil), hp.fixed...), byte(len(exts)>>8), byte(len(exts)))
	body = append(append(body, exts...), extra...)
	return append([]byte{1, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}, body...)
}

// sniData builds a server_name extension body from (type, name) entries.
func sniData(entries ...any) []byte {
	var list []byte
	for i := 0; i+1 < len(entries); i += 2 {
		typ, name := entries[i].(int), entries[i+1].(string)
		list = append(list, byte(typ), byte(len(name)>>8), byte(len(name)))
		list = append(list, name...)
	}
	return append([]byte{byte(len(list) >> 8), byte(len(list))}, list...)
}

// record frames payload as one TLS record of type typ, version 3.minor.
func record(typ, minor byte, payload []byte) []byte {
	return append([]byte{typ, 3, minor, byte(len(payload) >> 8), byte(len(payload))}, payload...)
}

// records frames a handshake message into records of at most size bytes.
func records(msg []byte, size int) []byte {
	var out []byte
	for len(msg) > 0 {
		n := min(size, len(msg))
		out = append(out, record(22, 1, msg[:n])...)
		msg = msg[n:]
	}
	return out
}

func concat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// warningAlert is a warning-level alert record (user_canceled).
var warningAlert = record(21, 3, []byte{1, 90})

// memConn is a net.Conn reading a fixed first flight and discarding
// writes: what a TLS server sees of a client that sent data then waited.
type memConn struct{ r *bytes.Reader }

func (c memConn) Read(b []byte) (int, error)       { return c.r.Read(b) }
func (c memConn) Write(b []byte) (int, error)      { return len(b), nil }
func (c memConn) Close() error                     { return nil }
func (c memConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c memConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c memConn) SetDeadline(time.Time) error      { return nil }
func (c memConn) SetReadDeadline(time.Time) error  { return nil }
func (c memConn) SetWriteDeadline(time.Time) error { return nil }

var errNameSeen = errors.New("name seen")

// goServerName feeds data to crypto/tls's server side and reports whether
// it got as far as choosing a configuration for the client (served), and
// for which server name.
func goServerName(data []byte) (name string, served bool) {
	cfg := &tls.Config{
		GetConfigForClient: func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
			name, served = chi.ServerName, true
			return nil, errNameSeen
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tls.Server(memConn{bytes.NewReader(data)}, cfg).HandshakeContext(ctx)
	return name, served
}

// ssl2Hello builds an SSL 2.0-format ClientHello offering TLS 1.2 and
// the given 3-byte cipher specs.
func ssl2Hello(specs ...[3]byte) []byte {
	var cs []byte
	for _, s := range specs {
		cs = append(cs, s[:]...)
	}
	challenge := bytes.Repeat([]byte{0x42}, 16)
	body := []byte{1, 3, 3, byte(len(cs) >> 8), byte(len(cs)), 0, 0, 0, byte(len(challenge))}
	body = append(append(body, cs...), challenge...)
	return append([]byte{0x80 | byte(len(body)>>8), byte(len(body))}, body...)
}

// TestGoServerNameOracle checks the oracle itself on a plain hello.
func TestGoServerNameOracle(t *testing.T) {
	hello := captureHello(t, &tls.Config{ServerName: "oracle.test"})
	if name, served := goServerName(hello); !served || name != "oracle.test" {
		t.Fatalf("goServerName = %q, %v; want oracle.test, true", name, served)
	}
	if _, served := goServerName([]byte("GET / HTTP/1.1\r\n\r\n")); served {
		t.Fatalf("goServerName(HTTP) served")
	}
	_ = io.EOF
}
