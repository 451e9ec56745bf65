package policy

import (
	"encoding/binary"
	"errors"
	"math/bits"
	"net/netip"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

const (
	// maxNameLen is the longest host name accepted, without its trailing
	// dot (RFC 1035: 255 octets on the wire, 253 in text).
	maxNameLen = 253
	// maxLabelLen is the longest label accepted.
	maxLabelLen = 63
	// nameBufLen is the size of the stack buffer a name is normalized
	// into: the longest name plus room for the matcher's 8-byte loads.
	nameBufLen = maxNameLen + 11
)

// hostBuf holds a normalized name, with a bit set in dots for each dot
// position so that the matcher finds the labels without a second scan.
type hostBuf struct {
	b    [nameBufLen]byte
	dots [(nameBufLen + 63) / 64]uint64
}

// prevDot returns the position of the last dot before e, or -1.
func (h *hostBuf) prevDot(e int) int {
	if e <= 0 {
		return -1
	}
	k := (e - 1) >> 6
	w := h.dots[k] & (^uint64(0) >> (63 - uint(e-1)&63))
	for {
		if w != 0 {
			return k<<6 + 63 - bits.LeadingZeros64(w)
		}
		if k == 0 {
			return -1
		}
		k--
		w = h.dots[k]
	}
}

// hostKind is what normalization found a host to be.
type hostKind uint8

const (
	hostName hostKind = iota
	hostIP
	hostInvalid
	hostNonASCII
)

var (
	errEmptyHost   = errors.New("empty host name")
	errHostTooLong = errors.New("host name longer than 253 characters")
	errEmptyLabel  = errors.New("host name has an empty label")
	errLabelLong   = errors.New("host name has a label longer than 63 characters")
	errHostChar    = errors.New("host name has a character outside letters, digits, '-', '_' and '.'")
	errNumericTLD  = errors.New("host name ends in a number but is not an IP address")
	errBracket     = errors.New("bracketed host is not an IPv6 address")
	errUTF8        = errors.New("host name is not valid UTF-8")
)

// hostClass has classBad for the bytes that cannot appear in a host name
// and classDot for the dot.
const (
	classBad = 1
	classDot = 2
)

var hostClass = func() (t [256]byte) {
	for c := range t {
		t[c] = classBad
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = 0, 0
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = 0
	}
	t['-'], t['_'], t['.'] = 0, 0, classDot
	return t
}()

// hostChars maps every byte to its lower-case form when it may appear in a
// host name, and to 0 otherwise.
var hostChars = func() (t [256]byte) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = byte(c)
		t[c-'a'+'A'] = byte(c)
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = byte(c)
	}
	t['-'], t['_'], t['.'] = '-', '_', '.'
	return t
}()

// idnaProfile converts Unicode names for lookup (UTS #46, non-transitional,
// with the Bidi and joiner rules). It does not apply the STD3 character
// rules nor the hyphen rules itself: the ASCII validation below decides
// which characters are allowed, identically for ASCII and Unicode input,
// so that names such as _dmarc.example.com stay valid.
var idnaProfile = idna.New(
	idna.MapForLookup(),
	idna.BidiRule(),
	idna.Transitional(false),
	idna.StrictDomainName(false),
	idna.CheckHyphens(false),
	idna.VerifyDNSLength(true),
)

// NormalizeHost returns the canonical form of a host name: lower case, one
// trailing dot removed, IDN converted to punycode; IP literals (bracketed
// or not) come back as netip's canonical text. It rejects invalid names.
//
// A valid name has 1 to 253 characters, labels of 1 to 63 characters made
// of ASCII letters, digits, '-' and '_' (underscores appear in real DNS
// names such as _dns.resolver.arpa), and a last label that is not all
// digits (such names are mistyped IPv4 addresses). A bracketed host must
// be an IPv6 address.
func NormalizeHost(host string) (string, error) {
	var buf hostBuf
	n, kind, err := normalizeASCII(&buf, host)
	switch kind {
	case hostName:
		if n == len(host) && host == string(buf.b[:n]) {
			return host, nil
		}
		return string(buf.b[:n]), nil
	case hostIP:
		return canonicalIP(host)
	case hostNonASCII:
		return normalizeUnicode(host)
	}
	return "", err
}

// canonicalIP returns the canonical text of an IP literal that
// normalizeASCII recognised.
func canonicalIP(host string) (string, error) {
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	a, err := netip.ParseAddr(host)
	if err != nil {
		return "", err
	}
	return a.String(), nil
}

// normalizeUnicode handles names with non-ASCII bytes: UTS #46 mapping to
// punycode, then the same validation as ASCII names.
func normalizeUnicode(host string) (string, error) {
	if strings.HasPrefix(host, "[") {
		return "", errBracket
	}
	if !utf8.ValidString(host) {
		return "", errUTF8
	}
	a, err := idnaProfile.ToASCII(host)
	if err != nil {
		return "", err
	}
	var buf hostBuf
	n, kind, err := normalizeASCII(&buf, a)
	if kind != hostName {
		if err == nil {
			// An IP literal spelled with Unicode digits or dots: reject
			// it, only ASCII IP literals are IP literals.
			err = errHostChar
		}
		return "", err
	}
	return string(buf.b[:n]), nil
}

// normalizeASCII writes the canonical form of host into buf when host is
// an ASCII name and returns its length. It never allocates. It reports
// hostNonASCII (and writes nothing useful) when host has a byte >= 0x80,
// and hostIP when host is an IP literal (buf is then unused).
func normalizeASCII(h *hostBuf, host string) (int, hostKind, error) {
	h.dots = [len(h.dots)]uint64{}
	buf := &h.b
	if host == "" {
		return 0, hostInvalid, errEmptyHost
	}
	if host[0] == '[' {
		for i := 0; i < len(host); i++ {
			if host[i] >= 0x80 {
				return 0, hostNonASCII, nil
			}
		}
		if len(host) < 2 || host[len(host)-1] != ']' {
			return 0, hostInvalid, errBracket
		}
		if a, ok := parseIPLiteral(host[1 : len(host)-1]); ok && a.Is6() {
			return 0, hostIP, nil
		}
		return 0, hostInvalid, errBracket
	}
	name := host
	if name[len(name)-1] == '.' {
		name = name[:len(name)-1]
	}
	if len(name) > maxNameLen {
		return 0, longName(host), errHostTooLong
	}
	if name == "" {
		return 0, hostInvalid, errEmptyHost
	}
	// Eight bytes at a time, then byte by byte: lower-case into buf,
	// set a bit in h.dots for each dot, note any byte that is not allowed.
	var bad uint8
	i := 0
	for ; i+8 <= len(name); i += 8 {
		w := load64(name, i)
		if w&swarHigh != 0 {
			bad = classBad
			break
		}
		// Per byte, x + (0x80-c)*o has bit 7 set when x >= c, and
		// ^((x ^ c*o) + 0x7f*o) when x == c: every byte is below 0x80,
		// so no sum carries into the next byte. Upper-case letters get
		// 0x20 added; ok marks the allowed bytes, dots the dots.
		const o = swarOnes
		upper := (w + (0x80-'A')*o) &^ (w + (0x80-'Z'-1)*o) & swarHigh
		l := w | upper>>2
		ok := (l + (0x80-'a')*o) &^ (l + (0x80-'z'-1)*o)
		ok |= (l + (0x80-'0')*o) &^ (l + (0x80-'9'-1)*o)
		ok |= (l + (0x80-'-')*o) &^ (l + (0x80-'.'-1)*o)
		ok |= ^((l ^ '_'*o) + 0x7f*o)
		if ok&swarHigh != swarHigh {
			bad = classBad
			break
		}
		dots := ^((l ^ '.'*o) + 0x7f*o) & swarHigh
		binary.LittleEndian.PutUint64(buf[i:i+8], l)
		h.dots[i>>6] |= ((dots >> 7) * swarGather) >> 56 << (uint(i) & 63)
	}
	for ; i < len(name) && bad == 0; i++ {
		c := name[i]
		buf[i] = hostChars[c]
		cls := hostClass[c]
		bad |= cls & classBad
		h.dots[i>>6] |= uint64(cls>>1) << (uint(i) & 63)
	}
	if bad&classBad != 0 {
		return 0, oddHost(host), errHostChar
	}
	// Check the labels' lengths from the dots: 1 to 63 each.
	n := len(name)
	dot := -1
	for k := 0; k <= (n-1)>>6; k++ {
		for w := h.dots[k]; w != 0; {
			p := k<<6 + bits.TrailingZeros64(w)
			w &= w - 1
			if gap := p - dot - 1; gap == 0 {
				return 0, hostInvalid, errEmptyLabel
			} else if gap > maxLabelLen {
				return 0, hostInvalid, errLabelLong
			}
			dot = p
		}
	}
	if gap := n - dot - 1; gap == 0 {
		return 0, hostInvalid, errEmptyLabel
	} else if gap > maxLabelLen {
		return 0, hostInvalid, errLabelLong
	}
	if c := buf[n-1]; c >= '0' && c <= '9' {
		allDigits := true
		for _, c := range buf[dot+1 : n] {
			if c < '0' || c > '9' {
				allDigits = false
				break
			}
		}
		if allDigits {
			if a, ok := parseIPLiteral(host); ok && a.Is4() {
				return 0, hostIP, nil
			}
			return 0, hostInvalid, errNumericTLD
		}
	}
	return n, hostName, nil
}

const (
	swarOnes   = 0x0101010101010101
	swarHigh   = 0x8080808080808080
	swarGather = 0x0102040810204080 // gathers bit 7 of each byte into the top byte
)

// load64 reads s[i:i+8] as a little-endian word (one load).
func load64(s string, i int) uint64 {
	s = s[i : i+8]
	return uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24 |
		uint64(s[4])<<32 | uint64(s[5])<<40 | uint64(s[6])<<48 | uint64(s[7])<<56
}

// longName classifies a host too long to be a valid ASCII name: it may be
// a Unicode name that is shorter once converted.
func longName(host string) hostKind {
	for i := 0; i < len(host); i++ {
		if host[i] >= 0x80 {
			return hostNonASCII
		}
	}
	return hostInvalid
}

// oddHost classifies a host with a byte that cannot appear in an ASCII
// name: an IP literal, a Unicode name, or an invalid name.
func oddHost(host string) hostKind {
	if _, ok := parseIPLiteral(host); ok {
		return hostIP
	}
	for i := 0; i < len(host); i++ {
		if c := host[i]; c >= 0x80 {
			return hostNonASCII
		} else if hostChars[c] == 0 {
			return hostInvalid
		}
	}
	return hostInvalid
}

// parseIPLiteral parses an IP address, with an optional zone, without
// allocating (netip interns zones, so the zone is checked apart).
func parseIPLiteral(s string) (netip.Addr, bool) {
	zone := ""
	if i := strings.IndexByte(s, '%'); i >= 0 {
		s, zone = s[:i], s[i+1:]
		if zone == "" {
			return netip.Addr{}, false
		}
		for i := 0; i < len(zone); i++ {
			if c := zone[i]; c <= ' ' || c >= 0x7f || c == '%' || c == ']' || c == '[' {
				return netip.Addr{}, false
			}
		}
	}
	a, err := netip.ParseAddr(s)
	if err != nil || (zone != "" && !a.Is6()) {
		return netip.Addr{}, false
	}
	return a, true
}
