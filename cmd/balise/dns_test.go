package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/balise-net/balise/config"
	"github.com/balise-net/balise/dnsfilter"
	"github.com/balise-net/balise/internal/policy"
)

// The watchdog's self-probe is answered by the filter itself: it succeeds
// with every upstream unreachable, and fails once the filter stops.
func TestDNSSelfProbe(t *testing.T) {
	p, err := policy.New(policy.Spec{})
	if err != nil {
		t.Fatal(err)
	}
	var ptr atomic.Pointer[policy.Policy]
	ptr.Store(p)
	dead, err := net.ListenPacket("udp", "127.0.0.1:0") // an upstream that never answers
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	f, err := dnsfilter.New(dnsfilter.Options{
		Listen:     []string{"127.0.0.1:0"},
		Upstreams:  []string{dead.LocalAddr().String()},
		Policy:     &ptr,
		Logger:     slog.New(slog.NewTextHandler(io.Discard, nil)),
		Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := f.Start(ctx); err != nil {
		t.Fatal(err)
	}
	probe := selfProbe(f.Addrs())
	if probe == nil {
		t.Fatal("selfProbe found no UDP listener")
	}
	if err := probe(); err != nil {
		t.Fatalf("probe of a running filter: %v", err)
	}
	if err := f.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := probe(); err == nil {
		t.Fatal("probe of a stopped filter succeeded, want an error")
	}
	if selfProbe(nil) != nil {
		t.Error("selfProbe(nil) != nil")
	}
}

// Every field of [dns] is either applied by a reload or named by the
// restart warning, and the two sets do not overlap.
func TestDNSReloadFieldsCoverSection(t *testing.T) {
	checkFieldsCover(t, reflect.TypeOf(config.DNSSection{}), dnsRestartFields(), dnsReloadFields(), dnsDerivedFields())
}

// Every field of [proxy] is either applied by a reload or named by the
// restart warning (or derived from a key that is), and the two sets do
// not overlap.
func TestProxyReloadFieldsCoverSection(t *testing.T) {
	checkFieldsCover(t, reflect.TypeOf(config.ProxySection{}), proxyRestartFields(), proxyReloadFields(), proxyDerivedFields())
}

// checkFieldsCover fails unless every field of the section struct typ is
// in exactly one of restart and reload (key → field path), or in derived;
// a nested section may instead have each of its own fields covered.
func checkFieldsCover(t *testing.T, typ reflect.Type, restart, reload map[string]string, derived []string) {
	t.Helper()
	fields := map[string]string{}
	for key, f := range restart {
		fields[f] = key
	}
	for key, f := range reload {
		if prev, dup := fields[f]; dup {
			t.Errorf("field %s is both %s (restart) and %s (reload)", f, prev, key)
		}
		fields[f] = key
	}
	for _, f := range derived {
		fields[f] = "derived"
	}
	var walk func(typ reflect.Type, prefix string)
	walk = func(typ reflect.Type, prefix string) {
		for i := range typ.NumField() {
			f := typ.Field(i)
			path := prefix + f.Name
			if _, ok := fields[path]; ok {
				delete(fields, path)
				continue
			}
			if f.Type.Kind() == reflect.Struct && hasPrefixKey(fields, path+".") {
				walk(f.Type, path+".")
				continue
			}
			t.Errorf("config.%s field %s is neither reloadable nor in the restart warning", typ.Name(), path)
		}
	}
	walk(typ, "")
	for f, key := range fields {
		t.Errorf("%s names field %s, which config.%s lacks", key, f, typ.Name())
	}
}

// hasPrefixKey reports whether some key of m starts with prefix.
func hasPrefixKey(m map[string]string, prefix string) bool {
	for k := range m {
		if strings.HasPrefix(k, prefix) {
			return true
		}
	}
	return false
}

func TestDNSRestartKeys(t *testing.T) {
	base := config.Default().DNS
	tests := []struct {
		name string
		edit func(*config.DNSSection)
		want []string
	}{
		{"unchanged", func(*config.DNSSection) {}, nil},
		{"reloadable only", func(c *config.DNSSection) {
			c.AllowedClients = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
			c.MaxTCPPerClient = 2
			c.TCPIdleTimeout = time.Second
			c.ForwardAny = !c.ForwardAny
		}, nil},
		{"listen and timeout", func(c *config.DNSSection) {
			c.Listen = []string{"127.0.0.1:53"}
			c.Timeout = 2 * time.Second
			c.AllowedClients = nil
		}, []string{"dns.listen", "dns.timeout"}},
		{"udp sockets", func(c *config.DNSSection) { c.UDPSockets = 3 }, []string{"dns.udp_sockets"}},
	}
	for _, tt := range tests {
		c := base
		c.Listen = slices.Clone(base.Listen)
		tt.edit(&c)
		if got := dnsRestartKeys(base, c); !slices.Equal(got, tt.want) {
			t.Errorf("%s: dnsRestartKeys = %v, want %v", tt.name, got, tt.want)
		}
	}
	if a := dnsAccess(base); a.ForwardAny || a.MaxTCPPerClient != 16 || a.TCPIdleTimeout != 10*time.Second || len(a.AllowedClients) != 2 {
		t.Errorf("dnsAccess(default) = %+v, want refuse_any, 16 per client, 10s, loopback", a)
	}
}

// The self-probe counts a REFUSED answer as alive: with loopback outside
// dns.allowed_clients the watchdog must not restart a healthy filter.
func TestDNSSelfProbeRefused(t *testing.T) {
	p, err := policy.New(policy.Spec{})
	if err != nil {
		t.Fatal(err)
	}
	var ptr atomic.Pointer[policy.Policy]
	ptr.Store(p)
	f, err := dnsfilter.New(dnsfilter.Options{
		Listen:    []string{"127.0.0.1:0"},
		Upstreams: []string{"127.0.0.1:1"},
		Policy:    &ptr,
		Access:    dnsfilter.Access{AllowedClients: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer f.Shutdown(context.Background())
	if err := selfProbe(f.Addrs())(); err != nil {
		t.Fatalf("probe of a running filter that refuses loopback: %v", err)
	}
}
