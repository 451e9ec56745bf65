package proxy

import (
	"errors"
	"io"
	"net"
	"time"
)

// ClientHello is what Balise reads from a TLS ClientHello without
// decrypting anything: enough to decide on the name the client asks for.
type ClientHello struct {
	// ServerName is the server_name (SNI) host name, "" when the client
	// sent none. It is returned as sent; callers normalize it.
	ServerName string
	// ALPN lists the application protocols the client offers.
	ALPN []string
	// ECH is true when the hello carries an encrypted_client_hello
	// extension: the real name may be hidden behind ServerName.
	ECH bool
	// SSLv2 is true for an SSL 2.0-format ClientHello (which OpenSSL
	// still accepts to negotiate TLS): it cannot carry a server name.
	SSLv2 bool
}

var (
	// ErrIncomplete means the bytes seen so far are a valid prefix of a
	// ClientHello; more are needed.
	ErrIncomplete = errors.New("incomplete tls client hello")
	// ErrNotTLS means the bytes are not a TLS ClientHello.
	ErrNotTLS = errors.New("not a tls client hello")
)

// The first flight Balise reads is the intersection of what TLS servers
// accept, so that whenever a server would act on a hello, Balise read the
// same server name in it, or refused the connection:
//
//   - records of type handshake (22) or alert (21), record version 3.x
//     (OpenSSL refuses any other major version; crypto/tls takes < 16.0),
//     at most 2^14 bytes of payload (both refuse more);
//   - the ClientHello split over any number of records, or sharing its
//     last record with what follows;
//   - warning alerts (2 bytes, level 1, not close_notify) before or between
//     the hello's records, skipped as crypto/tls (16) and OpenSSL (4)
//     skip them; empty handshake records, which OpenSSL skips (crypto/tls
//     refuses them); at most maxSkippedRecords in all;
//   - a hello body up to OpenSSL's limit (131396 bytes; crypto/tls stops
//     at 65536);
//   - an SSL 2.0-format ClientHello as the very first record (OpenSSL):
//     no extensions, so no server name.
//
// Everything else is refused, including change_cipher_spec or
// application data before the hello (both stacks refuse them).
const (
	recordHeaderLen    = 5
	maxRecordPayload   = 1 << 14 // TLSPlaintext.length limit (RFC 8446 5.1)
	maxHelloLen        = 131396  // OpenSSL's CLIENT_HELLO_MAX_LENGTH
	maxSkippedRecords  = 32      // warning alerts and empty records skipped in all
	recordHandshake    = 22
	recordAlert        = 21
	handshakeHello     = 1
	alertLevelWarning  = 1
	alertCloseNotify   = 0
	ssl2HelloMinLen    = 9 // msg_type, version, three lengths
	maxSSL2SessionID   = 16
	maxSSL2Challenge   = 32
	minSSL2Challenge   = 16
	maxServerNameBytes = 255 // OpenSSL's TLSEXT_MAXLEN_host_name

	extServerName = 0
	extALPN       = 16
	extECH        = 0xfe0d
)

// helloReader reads a first flight incrementally: feed is called with
// every byte received so far and resumes where it stopped, so a hello
// trickled in byte by byte costs linear time.
type helloReader struct {
	off     int    // bytes of data consumed (whole records)
	msg     []byte // handshake bytes reassembled so far
	own     bool   // msg is a copy (records were joined)
	skipped int    // alerts and empty records skipped
	records int    // records consumed
}

// ParseClientHello parses the start of a TLS stream. The handshake
// message may be split across several records and data may arrive in
// pieces: while data is a valid but unfinished prefix it returns
// ErrIncomplete; anything that cannot be a ClientHello is ErrNotTLS or
// another error. It never reads past the ClientHello and never panics.
func ParseClientHello(data []byte) (ClientHello, error) {
	var h helloReader
	return h.feed(data)
}

// feed parses data, every byte received so far (a prefix of the stream
// that grows between calls).
func (h *helloReader) feed(data []byte) (ClientHello, error) {
	for {
		rest := data[h.off:]
		if h.records == 0 && len(rest) > 0 && rest[0]&0x80 != 0 {
			return parseSSL2Hello(rest)
		}
		if len(rest) < recordHeaderLen {
			if len(rest) > 0 && rest[0] != recordHandshake && rest[0] != recordAlert {
				return ClientHello{}, ErrNotTLS
			}
			if len(rest) > 1 && rest[1] != 3 {
				return ClientHello{}, ErrNotTLS
			}
			return ClientHello{}, ErrIncomplete
		}
		typ, n := rest[0], int(rest[3])<<8|int(rest[4])
		if (typ != recordHandshake && typ != recordAlert) || rest[1] != 3 || n > maxRecordPayload {
			return ClientHello{}, ErrNotTLS
		}
		if len(rest)-recordHeaderLen < n {
			return ClientHello{}, ErrIncomplete
		}
		frag := rest[recordHeaderLen : recordHeaderLen+n]
		h.off += recordHeaderLen + n
		h.records++
		if typ == recordAlert || n == 0 {
			if typ == recordAlert && (n != 2 || frag[0] != alertLevelWarning || frag[1] == alertCloseNotify) {
				return ClientHello{}, ErrNotTLS
			}
			if h.skipped++; h.skipped > maxSkippedRecords {
				return ClientHello{}, ErrNotTLS
			}
			continue
		}
		switch {
		case h.msg == nil:
			h.msg = frag
		case !h.own:
			h.msg = append(append(make([]byte, 0, 2*(len(h.msg)+len(frag))), h.msg...), frag...)
			h.own = true
		default:
			h.msg = append(h.msg, frag...)
		}
		if h.msg[0] != handshakeHello {
			return ClientHello{}, ErrNotTLS
		}
		if len(h.msg) < 4 {
			continue
		}
		l := int(h.msg[1])<<16 | int(h.msg[2])<<8 | int(h.msg[3])
		if l > maxHelloLen || l < 38 {
			return ClientHello{}, ErrNotTLS
		}
		if len(h.msg)-4 < l {
			continue
		}
		// What follows the hello in its record is the next message:
		// servers read the name before they look at it.
		ch, err := parseHelloBody(h.msg[4 : 4+l])
		if err != nil {
			return ClientHello{}, err
		}
		return ch, nil
	}
}

// parseSSL2Hello reads an SSL 2.0-format ClientHello (a two-byte record
// header with the high bit set, then msg_type 1) the way OpenSSL does:
// the record must be exactly the hello. It has no server name.
func parseSSL2Hello(data []byte) (ClientHello, error) {
	if len(data) >= 3 && data[2] != handshakeHello {
		return ClientHello{}, ErrNotTLS
	}
	if len(data) < 2 {
		return ClientHello{}, ErrIncomplete
	}
	n := int(data[0]&0x7f)<<8 | int(data[1])
	if n < ssl2HelloMinLen {
		return ClientHello{}, ErrNotTLS
	}
	if len(data)-2 < n {
		return ClientHello{}, ErrIncomplete
	}
	r := reader{b: data[3 : 2+n]}
	if r.u8() != 3 { // version major: SSL 3 or TLS
		return ClientHello{}, errMalformedHello
	}
	r.u8()
	cs, sid, chal := r.u16(), r.u16(), r.u16()
	if cs == 0 || cs%3 != 0 || sid > maxSSL2SessionID || chal < minSSL2Challenge || chal > maxSSL2Challenge {
		return ClientHello{}, errMalformedHello
	}
	r.bytes(cs)
	r.bytes(sid)
	r.bytes(chal)
	if r.bad || len(r.b) != 0 {
		return ClientHello{}, errMalformedHello
	}
	return ClientHello{SSLv2: true}, nil
}

// reader walks a byte slice; every read checks bounds.
type reader struct {
	b   []byte
	bad bool
}

func (r *reader) u8() int {
	if len(r.b) < 1 {
		r.bad = true
		return 0
	}
	v := int(r.b[0])
	r.b = r.b[1:]
	return v
}

func (r *reader) u16() int {
	if len(r.b) < 2 {
		r.bad = true
		return 0
	}
	v := int(r.b[0])<<8 | int(r.b[1])
	r.b = r.b[2:]
	return v
}

func (r *reader) bytes(n int) []byte {
	if n < 0 || len(r.b) < n {
		r.bad = true
		r.b = nil
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

var errMalformedHello = errors.New("malformed tls client hello")

// parseHelloBody reads a ClientHello body strictly: every length must
// match (crypto/tls and OpenSSL both refuse trailing bytes), no extension
// may appear twice (crypto/tls refuses any duplicate).
func parseHelloBody(body []byte) (ClientHello, error) {
	var ch ClientHello
	r := reader{b: body}
	if r.u8() != 3 { // legacy_version major
		return ch, errMalformedHello
	}
	r.u8()
	r.bytes(32) // random
	if sid := r.u8(); sid > 32 {
		return ch, errMalformedHello
	} else {
		r.bytes(sid)
	}
	cs := r.u16()
	if cs < 2 || cs%2 != 0 {
		return ch, errMalformedHello
	}
	r.bytes(cs)
	cm := r.u8()
	if cm < 1 {
		return ch, errMalformedHello
	}
	r.bytes(cm)
	if r.bad {
		return ch, errMalformedHello
	}
	if len(r.b) == 0 {
		return ch, nil // no extensions at all: no SNI
	}
	ext := reader{b: r.bytes(r.u16())}
	if r.bad || len(r.b) != 0 {
		return ch, errMalformedHello
	}
	seen := make(map[int]bool, 24)
	for len(ext.b) > 0 {
		typ := ext.u16()
		data := ext.bytes(ext.u16())
		if ext.bad || seen[typ] {
			return ch, errMalformedHello
		}
		seen[typ] = true
		switch typ {
		case extServerName:
			name, err := parseSNI(data)
			if err != nil {
				return ch, err
			}
			ch.ServerName = name
		case extALPN:
			lr := reader{b: data}
			list := reader{b: lr.bytes(lr.u16())}
			if lr.bad || len(lr.b) != 0 || len(list.b) == 0 {
				return ch, errMalformedHello
			}
			for len(list.b) > 0 {
				p := list.bytes(list.u8())
				if list.bad || len(p) == 0 {
					return ch, errMalformedHello
				}
				ch.ALPN = append(ch.ALPN, string(p))
			}
		case extECH:
			ch.ECH = true
		}
	}
	return ch, nil
}

// parseSNI reads a server_name extension that holds exactly one
// host_name. crypto/tls skips entries of other types and refuses two
// host_names; OpenSSL reads only the first entry, refuses it when it is
// not a host_name and ignores what follows: a list of one host_name is
// the only form both read the same way.
func parseSNI(data []byte) (string, error) {
	r := reader{b: data}
	list := reader{b: r.bytes(r.u16())}
	typ := list.u8()
	v := list.bytes(list.u16())
	if r.bad || len(r.b) != 0 || list.bad || len(list.b) != 0 || typ != 0 {
		return "", errMalformedHello
	}
	if len(v) == 0 || len(v) > maxServerNameBytes {
		return "", errMalformedHello
	}
	for _, c := range v {
		if c <= ' ' || c >= 0x7f {
			return "", errMalformedHello
		}
	}
	return string(v), nil
}

// errHelloTooLarge means the first flight grew past the read limit
// before a ClientHello was complete.
var errHelloTooLarge = errors.New("tls client hello too large")

// readClientHello reads from c until the bytes form a complete
// ClientHello, are not TLS, or limit bytes have been read; it returns
// every byte read, initial included (to replay towards the origin). The
// deadline bounds the whole read; it is cleared before returning.
func readClientHello(c net.Conn, initial []byte, deadline time.Time, limit int) ([]byte, ClientHello, error) {
	var h helloReader
	if len(initial) > 0 {
		ch, err := h.feed(initial)
		if err != ErrIncomplete {
			return initial, ch, err
		}
	}
	if err := c.SetReadDeadline(deadline); err != nil {
		return initial, ClientHello{}, err
	}
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, len(initial), max(2048, 2*len(initial)))
	copy(buf, initial)
	for {
		if len(buf) == cap(buf) {
			if len(buf) >= limit {
				return buf, ClientHello{}, errHelloTooLarge
			}
			nb := make([]byte, len(buf), min(2*cap(buf), limit))
			copy(nb, buf)
			buf = nb
		}
		n, err := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if n > 0 {
			ch, perr := h.feed(buf)
			if perr != ErrIncomplete {
				return buf, ch, perr
			}
		}
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return buf, ClientHello{}, err
		}
	}
}

// isUnreadableHello reports errors that mean the first flight is not a
// ClientHello Balise can read (as opposed to a connection problem).
func isUnreadableHello(err error) bool {
	return errors.Is(err, ErrNotTLS) || errors.Is(err, errMalformedHello) || errors.Is(err, errHelloTooLarge)
}
