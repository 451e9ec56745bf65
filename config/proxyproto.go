package config

import (
	"fmt"
	"net/netip"
)

// podNetworks are the default pod networks of common Kubernetes
// distributions: a proxy.proxy_protocol_from range overlapping one may
// let any pod send a PROXY header naming any workstation.
var podNetworks = []struct {
	prefix netip.Prefix
	who    string
}{
	{netip.MustParsePrefix("10.244.0.0/16"), "kubeadm with Flannel, kind, AKS kubenet"},
	{netip.MustParsePrefix("10.42.0.0/16"), "k3s, RKE2"},
	{netip.MustParsePrefix("10.1.0.0/16"), "MicroK8s"},
	{netip.MustParsePrefix("10.128.0.0/14"), "OpenShift"},
}

// proxyProtocolFrom reads proxy.proxy_protocol_from: the load balancers
// whose PROXY protocol header Balise trusts. /0 is an error (anyone could
// name any client), as is the key with transparent listeners; a range
// wider than /24 (IPv4) or /64 (IPv6), or overlapping a default pod
// network, is a warning.
func (p *parser) proxyProtocolFrom(t *tbl, transparent bool) []netip.Prefix {
	from, _ := p.prefixes(t, "proxy_protocol_from")
	if len(from) == 0 {
		return nil
	}
	if transparent {
		p.keyErr("proxy.proxy_protocol_from", "cannot be used with proxy.transparent_http or proxy.transparent_https: "+
			"behind a load balancer a transparent listener loses where the workstation was going (the socket's original "+
			"destination would be Balise itself); let the gateway redirect to each node, or run transparent listeners on another instance")
	}
	for i, pf := range from {
		key := fmt.Sprintf("proxy.proxy_protocol_from[%d]", i)
		wide := 24
		if pf.Addr().Is6() {
			wide = 64
		}
		switch {
		case pf.Bits() == 0:
			p.valueErr(key, "%s would let any address name any client; list the load balancers' addresses", pf)
			continue
		case pf.Bits() < wide:
			p.warn(key, "%s is wider than /%d: every address in it may send a PROXY header and be taken for any workstation; list the load balancers' addresses", pf, wide)
		}
		for _, pn := range podNetworks {
			if pf.Overlaps(pn.prefix) {
				p.warn(key, "%s overlaps %s, the default pod network of %s: there, any pod could pose as the communications service (or any workstation); list the load balancers' own addresses", pf, pn.prefix, pn.who)
			}
		}
	}
	return from
}
