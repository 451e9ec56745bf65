package main

import (
	"log/slog"
	"net/netip"
	"reflect"
	"testing"

	"github.com/balise-net/balise/config"
	"github.com/balise-net/balise/dnsfilter"
	"github.com/balise-net/balise/internal/policy"
	"github.com/balise-net/balise/proxy"
)

// proxyOptionKeys maps every field of proxy.Options to the configuration
// key it comes from, or to "" when no key sets it (wiring done by
// cmd/balise, or a field only library users set). A field missing here
// fails TestOptionDefaultsMatchConfig: a new option must be classified.
func proxyOptionKeys() map[string]string {
	return map[string]string{
		"Policy":                "",
		"Logger":                "",
		"Registerer":            "",
		"Decisions":             "",
		"Clock":                 "",
		"AllowedClients":        "proxy.allowed_clients",
		"ProxyProtocolFrom":     "proxy.proxy_protocol_from",
		"ConnectPorts":          "proxy.connect_ports",
		"IPLiterals":            "proxy.ip_literals",
		"OpaquePorts":           "proxy.opaque_ports",
		"Resolver":              "proxy.resolver",
		"DialTimeout":           "proxy.dial_timeout",
		"DenyDestinations":      "proxy.deny_destinations",
		"AllowDestinations":     "proxy.allow_destinations",
		"OwnListeners":          "",
		"Parent":                "proxy.parent",
		"ParentCredentialsFile": "proxy.parent_credentials_file",
		"IdleTimeout":           "proxy.idle_timeout",
		"MaxTunnelLifetime":     "proxy.max_tunnel_lifetime",
		"HeaderTimeout":         "proxy.header_timeout",
		"MaxHeaderBytes":        "proxy.max_header_bytes",
		"MaxTunnelsPerClient":   "proxy.max_tunnels_per_client",
		"PortalURL":             "proxy.portal_url",
		"PACProxy":              "",
		"ServiceHosts":          "", // derived from the compiled policy
		"DirectDomains":         "proxy.direct_domains",
		"DirectNetworks":        "proxy.direct_networks",
		"CA":                    "proxy.tls.ca_cert",
		"LeafValidity":          "proxy.tls.leaf_validity",
		"CertCacheSize":         "proxy.tls.cert_cache_size",
		"Institution":           "institution",
		"BlockMessage":          "block_message",
		"BlockMessageEN":        "block_message_en",
		"TPROXY":                "proxy.transparent_mode",
		"AllowNoSNI":            "proxy.no_sni",
		"OriginalDestination":   "",
		"Exceptions":            "",
		"Auth":                  "",
		"AuthClients":           "",
		"AuthAlways":            "",
	}
}

// dnsOptionKeys is proxyOptionKeys for dnsfilter.Options. Listen and
// Upstreams have config defaults but no front-end default (empty is an
// error), so they are not compared.
func dnsOptionKeys() map[string]string {
	return map[string]string{
		"Listen":          "",
		"UDPSockets":      "dns.udp_sockets",
		"UDPNoBatch":      "",
		"Upstreams":       "",
		"Forward":         "dns.forward",
		"Timeout":         "dns.timeout",
		"ClientTimeout":   "",
		"ProbeInterval":   "",
		"BlockResponse":   "dns.block_response",
		"Sinkhole":        "dns.sinkhole",
		"BlockedTTL":      "dns.blocked_ttl",
		"KeepECH":         "dns.strip_ech",
		"CacheSize":       "dns.cache_size",
		"MinTTL":          "dns.min_ttl",
		"MaxTTL":          "dns.max_ttl",
		"NegativeTTL":     "dns.negative_ttl",
		"DisableStale":    "dns.serve_stale",
		"StaleTTL":        "dns.stale_ttl",
		"StaleMaxAge":     "dns.stale_max_age",
		"RateLimit":       "dns.rate_limit",
		"NoRateLimit":     "dns.rate_limit",
		"RateBurst":       "dns.rate_burst",
		"RateLimitExempt": "dns.rate_limit_exempt",
		"Access":          "dns.allowed_clients, dns.max_tcp_per_client, dns.tcp_idle_timeout, dns.refuse_any",
		"Policy":          "",
		"Logger":          "",
		"Registerer":      "",
		"DecisionLog":     "",
		"Clock":           "",
		"Identity":        "",
	}
}

// dnsRuntimeDefaults are fields config leaves at zero on purpose because
// the default depends on the machine (one socket per CPU): they are
// compared after the front-end's defaults.
func dnsRuntimeDefaults() map[string]bool { return map[string]bool{"UDPSockets": true} }

// TestOptionDefaultsMatchConfig checks that config's defaults and the
// front-ends' zero-value defaults are one: for every option field with a
// configuration key, what proxyOptions and dnsOptions copy from an empty
// configuration file (every key at config's default) equals what the
// front-end gives the zero Options (WithDefaults). The embedded default
// file is not used: it sets some keys on purpose (block_message...).
func TestOptionDefaultsMatchConfig(t *testing.T) {
	empty, err := config.Parse("", nil)
	if err != nil {
		t.Fatalf("empty configuration: %v", err)
	}
	rt := newRuntime(empty, nil, newRegistry(), slog.New(slog.DiscardHandler), nil)
	po, err := proxyOptions(empty, rt)
	if err != nil {
		t.Fatalf("proxyOptions: %v", err)
	}
	compareDefaults(t, po, proxy.Options{}.WithDefaults(), po.WithDefaults(), proxyOptionKeys(), nil, nil)
	do := dnsOptions(empty.DNS, rt)
	compareDefaults(t, do, dnsfilter.Options{}.WithDefaults(), do.WithDefaults(), dnsOptionKeys(),
		nil, dnsRuntimeDefaults())
}

// compareDefaults compares, field by field, got (copied from config) with
// want (the zero options with the front-end's defaults). Fields in
// runtime are compared as gotDefaulted (got with the front-end's defaults)
// instead.
func compareDefaults[O any](t *testing.T, got, want, gotDefaulted O, keys, known map[string]string, runtime map[string]bool) {
	t.Helper()
	g, w, gd := reflect.ValueOf(got), reflect.ValueOf(want), reflect.ValueOf(gotDefaulted)
	typ := g.Type()
	for i := range typ.NumField() {
		f := typ.Field(i)
		key, classified := keys[f.Name]
		if !classified {
			t.Errorf("%s.%s: not in the option-key table of this test: name its configuration key, or \"\" when it has none", typ, f.Name)
			continue
		}
		if key == "" {
			continue
		}
		gv := g.Field(i)
		if runtime[f.Name] {
			gv = gd.Field(i)
		}
		same := equalValue(gv, w.Field(i))
		if why, ok := known[f.Name]; ok {
			if same {
				t.Errorf("%s.%s (%s): config and the zero value now agree; remove it from the known disagreements", typ, f.Name, why)
			}
			continue
		}
		if !same {
			t.Errorf("%s.%s (%s) = %v from config, but the zero value's default is %v",
				typ, f.Name, key, gv.Interface(), w.Field(i).Interface())
		}
	}
	for name := range keys {
		if _, ok := typ.FieldByName(name); !ok {
			t.Errorf("%s has no field %s any more: remove it from the option-key table", typ, name)
		}
	}
}

// equalValue is reflect.DeepEqual, except that a nil and an empty slice
// are equal (both mean "none" in every option).
func equalValue(a, b reflect.Value) bool {
	if a.Kind() == reflect.Slice && a.Len() == 0 && b.Len() == 0 {
		return true
	}
	return reflect.DeepEqual(a.Interface(), b.Interface())
}

// TestOptionOffValues checks the keys whose 0 means "off" in the file:
// config hands the front-end the value that means "off" there too.
func TestOptionOffValues(t *testing.T) {
	cfg, err := config.Parse("", []byte("[proxy]\nmax_tunnels_per_client = 0\n[dns]\ncache_size = 0\nrate_limit = 0\nserve_stale = false\nstrip_ech = false\nrefuse_any = false\n"))
	if err != nil {
		t.Fatal(err)
	}
	rt := newRuntime(cfg, nil, newRegistry(), slog.New(slog.DiscardHandler), nil)
	po, err := proxyOptions(cfg, rt)
	if err != nil {
		t.Fatal(err)
	}
	if n := po.WithDefaults().MaxTunnelsPerClient; n >= 0 {
		t.Errorf("max_tunnels_per_client = 0: MaxTunnelsPerClient = %d after defaults, want negative (no cap)", n)
	}
	do := dnsOptions(cfg.DNS, rt).WithDefaults()
	if do.CacheSize >= 0 {
		t.Errorf("cache_size = 0: CacheSize = %d after defaults, want negative (no cache)", do.CacheSize)
	}
	if dd := do.WithDefaults(); dd.RateLimit != 0 || !do.NoRateLimit {
		t.Errorf("rate_limit = 0: RateLimit = %v after defaults, NoRateLimit %v, want 0 and true (no limit)", dd.RateLimit, do.NoRateLimit)
	}
	if !do.DisableStale || !do.KeepECH || !do.Access.ForwardAny {
		t.Errorf("serve_stale, strip_ech, refuse_any = false: DisableStale %v, KeepECH %v, ForwardAny %v, want true", do.DisableStale, do.KeepECH, do.Access.ForwardAny)
	}
}

// The proxy's service hosts come from the compile that built the policy
// in force: every service of the policy has one, read from config without
// building the spec again.
func TestProxyServiceHostsFromCompile(t *testing.T) {
	cfg := config.Default()
	p, err := cfg.Compile()
	if err != nil {
		t.Fatal(err)
	}
	rt := newRuntime(cfg, p, newRegistry(), slog.New(slog.DiscardHandler), nil)
	o, err := proxyOptions(cfg, rt)
	if err != nil {
		t.Fatal(err)
	}
	ids := p.ServiceIDs()
	if len(ids) == 0 || len(o.ServiceHosts) != len(ids) {
		t.Fatalf("ServiceHosts has %d services, the policy %d", len(o.ServiceHosts), len(ids))
	}
	for _, id := range ids {
		host := o.ServiceHosts[id]
		if d := p.Decide(policy.Query{Host: host, Client: netip.MustParseAddr("127.0.0.1")}); d.Service != id {
			t.Errorf("service %q: host %q is classified as %q", id, host, d.Service)
		}
	}
}
