package config

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// proxy.proxy_protocol_from: off by default; listed balancers parsed; /0,
// a bad CIDR and the transparent combination are errors at file:line:key;
// wide ranges and pod networks are warnings.
func TestProxyProtocolFrom(t *testing.T) {
	d, err := Parse("d.toml", nil)
	if err != nil || d.Proxy.ProxyProtocolFrom != nil {
		t.Fatalf("default: %v, %v; want off", d.Proxy.ProxyProtocolFrom, err)
	}
	c, err := Parse("p.toml", []byte("[proxy]\nproxy_protocol_from = [\"10.9.0.5\", \"10.9.1.0/28\", \"2001:db8::10/126\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{netip.MustParsePrefix("10.9.0.5/32"), netip.MustParsePrefix("10.9.1.0/28"), netip.MustParsePrefix("2001:db8::10/126")}
	if !slices.Equal(c.Proxy.ProxyProtocolFrom, want) || len(c.Warnings) != 0 {
		t.Errorf("parsed %v (warnings %v), want %v and no warning", c.Proxy.ProxyProtocolFrom, c.Warnings, want)
	}

	for _, tc := range []struct{ src, want string }{
		{"[proxy]\nproxy_protocol_from = [\"10.9.0.5\", \"0.0.0.0/0\"]\n", "e.toml:2:36: proxy.proxy_protocol_from[1]: 0.0.0.0/0 would let any address name any client"},
		{"[proxy]\nproxy_protocol_from = [\"10.9.0.5/8\"]\n", "e.toml:2:24: proxy.proxy_protocol_from[0]: invalid CIDR"},
		{"[proxy]\ntransparent_https = [\"0.0.0.0:8443\"]\nproxy_protocol_from = [\"10.9.0.5\"]\n", "e.toml:3:1: proxy.proxy_protocol_from: cannot be used with proxy.transparent_http or proxy.transparent_https"},
	} {
		_, err := Parse("e.toml", []byte(tc.src))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want %q", tc.src, err, tc.want)
		}
	}

	w, err := Parse("w.toml", []byte("[proxy]\nproxy_protocol_from = [\"10.9.0.0/16\", \"2001:db8::/48\", \"10.244.3.7\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	wantW := []string{
		"w.toml:2:24: warning: proxy.proxy_protocol_from[0]: 10.9.0.0/16 is wider than /24",
		"w.toml:2:39: warning: proxy.proxy_protocol_from[1]: 2001:db8::/48 is wider than /64",
		"w.toml:2:56: warning: proxy.proxy_protocol_from[2]: 10.244.3.7/32 overlaps 10.244.0.0/16, the default pod network of kubeadm with Flannel, kind, AKS kubenet: there, any pod could pose as the communications service",
	}
	if len(w.Warnings) != len(wantW) {
		t.Fatalf("warnings = %v, want %d", w.Warnings, len(wantW))
	}
	for i, p := range wantW {
		if got := w.Warnings[i].String(); !strings.HasPrefix(got, p) {
			t.Errorf("warning %d = %q, want prefix %q", i, got, p)
		}
	}
}
