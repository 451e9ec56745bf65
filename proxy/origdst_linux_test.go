//go:build linux

package proxy

import (
	"encoding/binary"
	"net/netip"
	"syscall"
	"testing"
)

// sockaddr builds the bytes the kernel writes for SO_ORIGINAL_DST.
func sockaddr(ap netip.AddrPort) []byte {
	if ap.Addr().Is4() {
		b := make([]byte, 16)
		binary.NativeEndian.PutUint16(b[0:2], syscall.AF_INET)
		binary.BigEndian.PutUint16(b[2:4], ap.Port())
		a := ap.Addr().As4()
		copy(b[4:8], a[:])
		return b
	}
	b := make([]byte, 28)
	binary.NativeEndian.PutUint16(b[0:2], syscall.AF_INET6)
	binary.BigEndian.PutUint16(b[2:4], ap.Port())
	a := ap.Addr().As16()
	copy(b[8:24], a[:])
	return b
}

func TestDecodeSockaddr(t *testing.T) {
	for _, s := range []string{"198.51.100.7:443", "10.0.0.1:80", "[2001:db8::7]:443", "[::1]:8443"} {
		ap := netip.MustParseAddrPort(s)
		got, err := decodeSockaddr(sockaddr(ap))
		if err != nil || got != ap {
			t.Errorf("decodeSockaddr(%v) = %v, %v, want %v", s, got, err, ap)
		}
	}
	// A v4-mapped IPv6 original destination comes back as IPv4.
	m := netip.AddrPortFrom(netip.AddrFrom16(netip.MustParseAddr("192.0.2.1").As16()), 443)
	if got, err := decodeSockaddr(sockaddr(m)); err != nil || got != netip.MustParseAddrPort("192.0.2.1:443") {
		t.Errorf("decodeSockaddr(v4-mapped) = %v, %v, want 192.0.2.1:443", got, err)
	}
	bad := [][]byte{nil, {2}, sockaddr(netip.MustParseAddrPort("10.0.0.1:80"))[:6], sockaddr(netip.MustParseAddrPort("[::1]:80"))[:20], make([]byte, 16)}
	for _, b := range bad {
		if got, err := decodeSockaddr(b); err == nil {
			t.Errorf("decodeSockaddr(%x) = %v, want an error", b, got)
		}
	}
}

func FuzzDecodeSockaddr(f *testing.F) {
	f.Add(sockaddr(netip.MustParseAddrPort("198.51.100.7:443")))
	f.Add(sockaddr(netip.MustParseAddrPort("[2001:db8::7]:443")))
	f.Add([]byte{0, 2, 1, 187})
	f.Fuzz(func(t *testing.T, b []byte) {
		ap, err := decodeSockaddr(b)
		if err != nil {
			return
		}
		if !ap.IsValid() {
			t.Fatalf("decodeSockaddr(%x) = invalid address without error", b)
		}
		if got, err := decodeSockaddr(sockaddr(ap)); err != nil || got != ap {
			t.Fatalf("round trip of %v = %v, %v", ap, got, err)
		}
	})
}
