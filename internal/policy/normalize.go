package policy

import (
	"errors"
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
	var buf [nameBufLen]byte
	n, kind, err := normalizeASCII(&buf, host)
	switch kind {
	case hostName:
		if n == len(host) && host == string(buf[:n]) {
			return host, nil
		}
		return string(buf[:n]), nil
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
	var buf [nameBufLen]byte
	n, kind, err := normalizeASCII(&buf, a)
	if kind != hostName {
		if err == nil {
			// An IP literal spelled with Unicode digits or dots: reject
			// it, only ASCII IP literals are IP literals.
			err = errHostChar
		}
		return "", err
	}
	return string(buf[:n]), nil
}

// normalizeASCII writes the canonical form of host into buf when host is
// an ASCII name and returns its length. It never allocates. It reports
// hostNonASCII (and writes nothing useful) when host has a byte >= 0x80,
// and hostIP when host is an IP literal (buf is then unused).
func normalizeASCII(buf *[nameBufLen]byte, host string) (int, hostKind, error) {
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
	dot := -1 // index of the last dot seen
	for i := 0; i < len(name); i++ {
		c := name[i]
		m := hostChars[c]
		buf[i] = m
		if m == '.' {
			if i-dot == 1 {
				return 0, hostInvalid, errEmptyLabel
			}
			if i-dot > maxLabelLen+1 {
				return 0, hostInvalid, errLabelLong
			}
			dot = i
		} else if m == 0 {
			return 0, oddHost(host), errHostChar
		}
	}
	n := len(name)
	if n-dot == 1 {
		return 0, hostInvalid, errEmptyLabel
	}
	if n-dot > maxLabelLen+1 {
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
