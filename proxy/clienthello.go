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
}

var (
	// ErrIncomplete means the bytes seen so far are a valid prefix of a
	// ClientHello; more are needed.
	ErrIncomplete = errors.New("incomplete tls client hello")
	// ErrNotTLS means the bytes are not a TLS ClientHello.
	ErrNotTLS = errors.New("not a tls client hello")
)

const (
	recordHeaderLen  = 5
	maxRecordPayload = 16384 + 2048 // plaintext limit plus slack some stacks use
	maxHelloLen      = 1 << 16      // far above any real ClientHello (post-quantum shares included)

	extServerName = 0
	extALPN       = 16
	extECH        = 0xfe0d
)

// ParseClientHello parses the start of a TLS stream. The handshake
// message may be split across several records and data may arrive in
// pieces: while data is a valid but unfinished prefix it returns
// ErrIncomplete; anything that cannot be a ClientHello is ErrNotTLS or
// another error. It never reads past the ClientHello and never panics.
func ParseClientHello(data []byte) (ClientHello, error) {
	var msg []byte // reassembled handshake bytes (only allocated when split)
	single := true
	off := 0
	for {
		if len(data)-off < recordHeaderLen {
			if off == 0 && len(data) > 0 && data[0] != 22 {
				return ClientHello{}, ErrNotTLS
			}
			if off == 0 && len(data) > 1 && data[1] != 3 {
				return ClientHello{}, ErrNotTLS
			}
			return ClientHello{}, ErrIncomplete
		}
		h := data[off : off+recordHeaderLen]
		if h[0] != 22 || h[1] != 3 {
			return ClientHello{}, ErrNotTLS
		}
		n := int(h[3])<<8 | int(h[4])
		if n == 0 || n > maxRecordPayload {
			return ClientHello{}, ErrNotTLS
		}
		if len(data)-off-recordHeaderLen < n {
			return ClientHello{}, ErrIncomplete
		}
		frag := data[off+recordHeaderLen : off+recordHeaderLen+n]
		off += recordHeaderLen + n
		if single && msg == nil {
			msg = frag
		} else {
			if single {
				msg = append([]byte(nil), msg...)
				single = false
			}
			msg = append(msg, frag...)
		}
		if len(msg) >= 1 && msg[0] != 1 {
			return ClientHello{}, ErrNotTLS
		}
		if len(msg) < 4 {
			continue
		}
		l := int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3])
		if l > maxHelloLen || l < 38 {
			return ClientHello{}, ErrNotTLS
		}
		if len(msg)-4 < l {
			continue
		}
		ch, err := parseHelloBody(msg[4 : 4+l])
		if err != nil {
			return ClientHello{}, err
		}
		return ch, nil
	}
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
	el := r.u16()
	ext := reader{b: r.bytes(el)}
	if r.bad {
		return ch, errMalformedHello
	}
	var seen [3]bool
	for len(ext.b) > 0 {
		typ := ext.u16()
		data := ext.bytes(ext.u16())
		if ext.bad {
			return ch, errMalformedHello
		}
		switch typ {
		case extServerName:
			if seen[0] {
				return ch, errMalformedHello
			}
			seen[0] = true
			name, err := parseSNI(data)
			if err != nil {
				return ch, err
			}
			ch.ServerName = name
		case extALPN:
			if seen[1] {
				return ch, errMalformedHello
			}
			seen[1] = true
			lr := reader{b: data}
			list := reader{b: lr.bytes(lr.u16())}
			if lr.bad || len(lr.b) != 0 {
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
			if seen[2] {
				return ch, errMalformedHello
			}
			seen[2] = true
			ch.ECH = true
		}
	}
	return ch, nil
}

func parseSNI(data []byte) (string, error) {
	r := reader{b: data}
	list := reader{b: r.bytes(r.u16())}
	if r.bad || len(r.b) != 0 {
		return "", errMalformedHello
	}
	name := ""
	for len(list.b) > 0 {
		typ := list.u8()
		v := list.bytes(list.u16())
		if list.bad {
			return "", errMalformedHello
		}
		if typ != 0 { // only host_name is defined
			continue
		}
		if name != "" || len(v) == 0 || len(v) > 255 {
			return "", errMalformedHello
		}
		for _, c := range v {
			if c <= ' ' || c >= 0x7f {
				return "", errMalformedHello
			}
		}
		name = string(v)
	}
	return name, nil
}

// readClientHello reads from c until the bytes form a complete
// ClientHello, are not TLS, or limit bytes have been read; it returns
// every byte read, initial included (to replay towards the origin). The deadline bounds
// the whole read; it is cleared before returning.
func readClientHello(c net.Conn, initial []byte, deadline time.Time, limit int) ([]byte, ClientHello, error) {
	if err := c.SetReadDeadline(deadline); err != nil {
		return nil, ClientHello{}, err
	}
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, len(initial), max(2048, 2*len(initial)))
	copy(buf, initial)
	for {
		if len(buf) == cap(buf) {
			if len(buf) >= limit {
				return buf, ClientHello{}, errMalformedHello
			}
			nb := make([]byte, len(buf), min(2*cap(buf), limit))
			copy(nb, buf)
			buf = nb
		}
		n, err := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if n > 0 {
			ch, perr := ParseClientHello(buf)
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

// errorsIsNotTLS reports errors that mean "no server name to read" rather
// than a connection problem.
func errorsIsNotTLS(err error) bool {
	return errors.Is(err, ErrNotTLS) || errors.Is(err, errMalformedHello)
}
