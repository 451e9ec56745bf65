package dnsfilter

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"unsafe"

	"github.com/miekg/dns"
)

// Header flag bits of a DNS message.
const (
	flagQR = 0x8000
	flagAA = 0x0400
	flagTC = 0x0200
	flagRD = 0x0100
	flagRA = 0x0080
	flagAD = 0x0020
	flagCD = 0x0010

	headerLen = 12
	// maxQuery is the largest query Balise reads; a query is a header,
	// one question and an OPT record, far below this.
	maxQuery = 4096
	// ednsSize is the UDP payload size Balise advertises and the largest
	// UDP answer it sends (the 2020 DNS flag day value).
	ednsSize = 1232
)

// Outcomes of parsing a query.
type parseResult uint8

const (
	parseOK parseResult = iota
	// parseDrop: not worth an answer (too short for a header, or a
	// response).
	parseDrop
	// parseFormErr: a header was read but the message is malformed.
	parseFormErr
	// parseNotImp: an opcode other than QUERY.
	parseNotImp
	// parseBadVers: an EDNS version other than 0.
	parseBadVers
	// parseIrregular: legal but unusual shape (compressed question,
	// records in other sections, several additional records): the slow
	// path canonicalizes it with miekg/dns.
	parseIrregular
)

// query is a parsed question. It points into the packet and the scratch
// buffers it was parsed with.
type query struct {
	id      uint16
	flags   uint16
	qEnd    int // end of the question section in the packet
	qtype   uint16
	qclass  uint16
	edns    bool
	do      bool
	udpSize uint16
	// key is the lower-case wire name, type, class and DO/CD bits: the
	// cache key.
	key []byte
	// host is the lower-case presentation name without the final dot
	// ("" for the root). It may alias a scratch buffer: clone it before
	// keeping it.
	host string
	// nameLen is the wire length of the question name.
	nameLen int
}

// scratch holds a goroutine's reusable buffers.
type scratch struct {
	q       query
	keyBuf  [256 + 5]byte
	hostBuf [256 * 4]byte
	out     []byte
}

func newScratch() *scratch { return &scratch{out: make([]byte, 0, 4096)} }

// parseQuery reads pkt's header and question into s.q without allocating.
func parseQuery(pkt []byte, s *scratch) parseResult {
	q := &s.q
	*q = query{}
	if len(pkt) < headerLen {
		return parseDrop
	}
	q.id = binary.BigEndian.Uint16(pkt)
	q.flags = binary.BigEndian.Uint16(pkt[2:])
	if q.flags&flagQR != 0 {
		return parseDrop
	}
	if (q.flags>>11)&0xF != dns.OpcodeQuery {
		return parseNotImp
	}
	qd := binary.BigEndian.Uint16(pkt[4:])
	an := binary.BigEndian.Uint16(pkt[6:])
	ns := binary.BigEndian.Uint16(pkt[8:])
	ar := binary.BigEndian.Uint16(pkt[10:])
	if qd != 1 {
		return parseFormErr
	}
	if an != 0 || ns != 0 || ar > 1 {
		return parseIrregular
	}
	// Question name: lower-case it into the key, and render it in
	// presentation format into hostBuf.
	p := headerLen
	k := 0
	h := 0
	for {
		if p >= len(pkt) {
			return parseFormErr
		}
		l := int(pkt[p])
		if l == 0 {
			s.keyBuf[k] = 0
			k++
			p++
			break
		}
		if l&0xC0 != 0 {
			return parseIrregular
		}
		if p+1+l > len(pkt) || k+1+l >= 255 {
			return parseFormErr
		}
		s.keyBuf[k] = byte(l)
		k++
		if h > 0 {
			s.hostBuf[h] = '.'
			h++
		}
		for _, c := range pkt[p+1 : p+1+l] {
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			s.keyBuf[k] = c
			k++
			h = appendEscaped(s.hostBuf[:], h, c)
		}
		p += 1 + l
	}
	q.nameLen = k
	if p+4 > len(pkt) {
		return parseFormErr
	}
	q.qtype = binary.BigEndian.Uint16(pkt[p:])
	q.qclass = binary.BigEndian.Uint16(pkt[p+2:])
	p += 4
	q.qEnd = p
	if ar == 1 {
		// Only an OPT record is handled here; anything else (TSIG...) is
		// irregular.
		if p+11 > len(pkt) {
			return parseFormErr
		}
		if pkt[p] != 0 || binary.BigEndian.Uint16(pkt[p+1:]) != dns.TypeOPT {
			return parseIrregular
		}
		q.edns = true
		q.udpSize = binary.BigEndian.Uint16(pkt[p+3:])
		version := pkt[p+6]
		q.do = pkt[p+7]&0x80 != 0
		rdlen := int(binary.BigEndian.Uint16(pkt[p+9:]))
		p += 11 + rdlen
		if p > len(pkt) {
			return parseFormErr
		}
		if version != 0 {
			return parseBadVers
		}
	}
	if p != len(pkt) {
		return parseIrregular
	}
	var bits byte
	if q.do {
		bits |= 1
	}
	if q.flags&flagCD != 0 {
		bits |= 2
	}
	s.keyBuf[k] = byte(q.qtype >> 8)
	s.keyBuf[k+1] = byte(q.qtype)
	s.keyBuf[k+2] = byte(q.qclass >> 8)
	s.keyBuf[k+3] = byte(q.qclass)
	s.keyBuf[k+4] = bits
	q.key = s.keyBuf[:k+5]
	if h == 0 {
		q.host = ""
	} else {
		// The host aliases hostBuf, which stays unchanged until the next
		// parse on this scratch; it is cloned wherever it is kept.
		q.host = unsafe.String(&s.hostBuf[0], h)
	}
	return parseOK
}

// appendEscaped writes c into b at i in presentation format and returns
// the new length.
func appendEscaped(b []byte, i int, c byte) int {
	switch {
	case c == '.' || c == '\\' || c == '(' || c == ')' || c == ';' || c == ' ' || c == '@' || c == '"' || c == '$':
		b[i] = '\\'
		b[i+1] = c
		return i + 2
	case c < 0x21 || c > 0x7e:
		b[i] = '\\'
		b[i+1] = '0' + c/100
		b[i+2] = '0' + c/10%10
		b[i+3] = '0' + c%10
		return i + 4
	}
	b[i] = c
	return i + 1
}

// canonicalize turns an irregular but decodable query into the regular
// shape (header, one question, optional OPT) parseQuery handles.
func canonicalize(pkt []byte) ([]byte, bool) {
	var m dns.Msg
	if err := m.Unpack(pkt); err != nil || len(m.Question) != 1 || m.Response || m.Opcode != dns.OpcodeQuery {
		return nil, false
	}
	c := new(dns.Msg)
	c.Id = m.Id
	c.RecursionDesired = m.RecursionDesired
	c.CheckingDisabled = m.CheckingDisabled
	c.Question = m.Question
	if opt := m.IsEdns0(); opt != nil {
		c.SetEdns0(opt.UDPSize(), opt.Do())
		c.Extra[0].(*dns.OPT).SetVersion(opt.Version())
	}
	c.Compress = false
	out, err := c.Pack()
	if err != nil {
		return nil, false
	}
	return out, true
}

// appendHeader appends a response header for q.
func appendHeader(out []byte, q *query, rcode int, qd, an, ns, ar uint16) []byte {
	flags := uint16(flagQR|flagRA) | q.flags&(flagRD|flagCD) | uint16(rcode&0xF)
	out = binary.BigEndian.AppendUint16(out, q.id)
	out = binary.BigEndian.AppendUint16(out, flags)
	out = binary.BigEndian.AppendUint16(out, qd)
	out = binary.BigEndian.AppendUint16(out, an)
	out = binary.BigEndian.AppendUint16(out, ns)
	return binary.BigEndian.AppendUint16(out, ar)
}

// appendOPT appends an OPT record answering q, with an Extended DNS Error
// when code >= 0. rcode's upper bits go in the extended RCODE.
func appendOPT(out []byte, q *query, rcode int, code int, text string) []byte {
	out = append(out, 0)
	out = binary.BigEndian.AppendUint16(out, dns.TypeOPT)
	out = binary.BigEndian.AppendUint16(out, ednsSize)
	out = append(out, byte(rcode>>4), 0)
	var f uint16
	if q.do {
		f = 0x8000
	}
	out = binary.BigEndian.AppendUint16(out, f)
	if code < 0 {
		return binary.BigEndian.AppendUint16(out, 0)
	}
	if len(text) > 200 {
		text = text[:200]
	}
	out = binary.BigEndian.AppendUint16(out, uint16(4+2+len(text)))
	out = binary.BigEndian.AppendUint16(out, dns.EDNS0EDE)
	out = binary.BigEndian.AppendUint16(out, uint16(2+len(text)))
	out = binary.BigEndian.AppendUint16(out, uint16(code))
	return append(out, text...)
}

// errorResponse appends a response with rcode and no records, echoing the
// question when the query's was read.
func errorResponse(out []byte, pkt []byte, q *query, rcode int) []byte {
	if q.qEnd == 0 {
		// Nothing but the header was understood.
		h := *q
		h.flags &= flagRD | flagCD
		out = appendHeader(out, &h, rcode, 0, 0, 0, 0)
		binary.BigEndian.PutUint16(out[2:], binary.BigEndian.Uint16(out[2:])|uint16(pkt[2]>>3&0xF)<<11)
		return out
	}
	var ar uint16
	if q.edns {
		ar = 1
	}
	out = appendHeader(out, q, rcode, 1, 0, 0, ar)
	out = append(out, pkt[headerLen:q.qEnd]...)
	if q.edns {
		out = appendOPT(out, q, rcode, -1, "")
	}
	return out
}

// soaRDATA is the synthesized SOA's MNAME and RNAME, used as the authority
// of blocked NXDOMAIN and NODATA answers so that clients cache them no
// longer than the TTL Balise chose (RFC 2308).
var soaNames = []byte("\x06balise\x07invalid\x00\x0ahostmaster\x06balise\x07invalid\x00")

// synthesize appends an answer to q made of addresses (those of q's type)
// and, when soa is set, an SOA in the authority section whose TTL and
// MINIMUM are ttl. When ede >= 0 and the query has EDNS, the OPT carries
// that Extended DNS Error with text.
func synthesize(out []byte, pkt []byte, q *query, rcode int, addrs []netip.Addr, ttl uint32, soa bool, ede int, text string) []byte {
	var an, ns, ar uint16
	for _, a := range addrs {
		if (q.qtype == dns.TypeA && a.Is4()) || (q.qtype == dns.TypeAAAA && a.Is6()) {
			an++
		}
	}
	if soa {
		ns = 1
	}
	if q.edns {
		ar = 1
	}
	out = appendHeader(out, q, rcode, 1, an, ns, ar)
	out = append(out, pkt[headerLen:q.qEnd]...)
	for _, a := range addrs {
		var typ uint16
		switch {
		case q.qtype == dns.TypeA && a.Is4():
			typ = dns.TypeA
		case q.qtype == dns.TypeAAAA && a.Is6():
			typ = dns.TypeAAAA
		default:
			continue
		}
		out = append(out, 0xC0, headerLen)
		out = binary.BigEndian.AppendUint16(out, typ)
		out = binary.BigEndian.AppendUint16(out, dns.ClassINET)
		out = binary.BigEndian.AppendUint32(out, ttl)
		b := a.AsSlice()
		out = binary.BigEndian.AppendUint16(out, uint16(len(b)))
		out = append(out, b...)
	}
	if soa {
		out = append(out, 0xC0, headerLen)
		out = binary.BigEndian.AppendUint16(out, dns.TypeSOA)
		out = binary.BigEndian.AppendUint16(out, dns.ClassINET)
		out = binary.BigEndian.AppendUint32(out, ttl)
		out = binary.BigEndian.AppendUint16(out, uint16(len(soaNames)+20))
		out = append(out, soaNames...)
		out = binary.BigEndian.AppendUint32(out, 1)     // serial
		out = binary.BigEndian.AppendUint32(out, 3600)  // refresh
		out = binary.BigEndian.AppendUint32(out, 600)   // retry
		out = binary.BigEndian.AppendUint32(out, 86400) // expire
		out = binary.BigEndian.AppendUint32(out, ttl)   // minimum
	}
	if q.edns {
		out = appendOPT(out, q, rcode, ede, text)
	}
	return out
}

// hinfoRFC8482 is the RDATA of the HINFO answered to ANY queries: CPU
// "RFC8482", OS "" (RFC 8482 section 4.2).
var hinfoRFC8482 = []byte("\x07RFC8482\x00")

// appendRFC8482 appends the answer to an ANY query q of RFC 8482: one
// HINFO record "RFC8482" "" for the question's name, with ttl.
func appendRFC8482(out []byte, pkt []byte, q *query, ttl uint32) []byte {
	var ar uint16
	if q.edns {
		ar = 1
	}
	out = appendHeader(out, q, dns.RcodeSuccess, 1, 1, 0, ar)
	out = append(out, pkt[headerLen:q.qEnd]...)
	class := q.qclass
	if class == dns.ClassANY || class == dns.ClassNONE {
		class = dns.ClassINET
	}
	out = append(out, 0xC0, headerLen)
	out = binary.BigEndian.AppendUint16(out, dns.TypeHINFO)
	out = binary.BigEndian.AppendUint16(out, class)
	out = binary.BigEndian.AppendUint32(out, ttl)
	out = binary.BigEndian.AppendUint16(out, uint16(len(hinfoRFC8482)))
	out = append(out, hinfoRFC8482...)
	if q.edns {
		out = appendOPT(out, q, dns.RcodeSuccess, -1, "")
	}
	return out
}

var errWire = errors.New("malformed message")

// skipName returns the offset after the name at p.
func skipName(msg []byte, p int) (int, error) {
	for {
		if p >= len(msg) {
			return 0, errWire
		}
		l := int(msg[p])
		switch {
		case l == 0:
			return p + 1, nil
		case l&0xC0 == 0xC0:
			if p+2 > len(msg) {
				return 0, errWire
			}
			return p + 2, nil
		case l&0xC0 != 0:
			return 0, errWire
		}
		p += 1 + l
	}
}

// ttlOffsets returns the offsets of the TTL of every record of a packed
// message, OPT excepted.
func ttlOffsets(msg []byte) ([]uint16, error) {
	if len(msg) < headerLen {
		return nil, errWire
	}
	qd := int(binary.BigEndian.Uint16(msg[4:]))
	rr := int(binary.BigEndian.Uint16(msg[6:])) + int(binary.BigEndian.Uint16(msg[8:])) + int(binary.BigEndian.Uint16(msg[10:]))
	p := headerLen
	var err error
	for range qd {
		if p, err = skipName(msg, p); err != nil {
			return nil, err
		}
		p += 4
	}
	offs := make([]uint16, 0, rr)
	for range rr {
		if p, err = skipName(msg, p); err != nil {
			return nil, err
		}
		if p+10 > len(msg) || p > 0xFFFF {
			return nil, errWire
		}
		if binary.BigEndian.Uint16(msg[p:]) != dns.TypeOPT {
			offs = append(offs, uint16(p+4))
		}
		p += 10 + int(binary.BigEndian.Uint16(msg[p+8:]))
	}
	if p != len(msg) {
		return nil, errWire
	}
	return offs, nil
}
