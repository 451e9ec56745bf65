package main

import (
	"context"
	"fmt"
	"net"
	"reflect"
	"sort"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/balise-net/balise/config"
	"github.com/balise-net/balise/dnsfilter"
)

// startDNS starts the DNS filter on the [dns] listen addresses, reading
// the policy from rt.policy, and stops it when ctx ends. It returns an
// error when a listener cannot be bound. An empty listen array turns the
// filter off.
//
// A reload changes the policy the filter applies at once (it reads
// rt.policy on every query), and so do allowed_clients,
// max_tcp_per_client, tcp_idle_timeout and refuse_any (SetAccess). The
// other [dns] keys take effect at the next restart: the reload names those
// that changed in a warning.
func startDNS(ctx context.Context, rt *runtime) error {
	c := rt.cfg.DNS
	if len(c.Listen) == 0 {
		rt.onReload(func(nc *config.Config) { warnDNSRestart(rt, c, nc.DNS) })
		return nil
	}
	opts := dnsOptions(c, rt)
	if rt.identity != nil {
		opts.Identity = rt.identity.Bound
	}
	f, err := dnsfilter.New(opts)
	if err != nil {
		return err
	}
	if err := f.Start(ctx); err != nil {
		return err
	}
	rt.addListeners(f.Addrs()...)
	rt.addReady("dns-upstreams", f.Ready)
	if probe := selfProbe(f.Addrs()); probe != nil {
		rt.addLive("dns", probe)
	}
	rt.onReload(func(nc *config.Config) {
		f.SetAccess(dnsAccess(nc.DNS))
		warnDNSRestart(rt, c, nc.DNS)
	})
	rt.wg.Go(func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := f.Shutdown(sctx); err != nil {
			rt.log.Warn("dns shutdown", "error", err)
		}
	})
	return nil
}

// warnDNSRestart logs which [dns] keys changed between the running
// settings and the reloaded ones that apply only at the next restart.
func warnDNSRestart(rt *runtime, running, reloaded config.DNSSection) {
	keys := dnsRestartKeys(running, reloaded)
	if len(keys) == 0 {
		return
	}
	rt.log.Warn("[dns] changed: these keys take effect at the next restart; the new policy, allowed_clients, TCP limits and refuse_any are in force now",
		"keys", strings.Join(keys, ", "))
}

// dnsReloadFields maps each [dns] key a reload applies at once
// (SetAccess) to its field of config.DNSSection.
func dnsReloadFields() map[string]string {
	return map[string]string{
		"dns.allowed_clients":    "AllowedClients",
		"dns.max_tcp_per_client": "MaxTCPPerClient",
		"dns.tcp_idle_timeout":   "TCPIdleTimeout",
		"dns.refuse_any":         "ForwardAny",
	}
}

// dnsRestartFields maps each [dns] key that applies only at start to its
// field of config.DNSSection. With dnsReloadFields, it covers every field
// (a test checks it).
func dnsRestartFields() map[string]string {
	return map[string]string{
		"dns.listen":            "Listen",
		"dns.upstreams":         "Upstreams",
		"dns.timeout":           "Timeout",
		"dns.block_response":    "BlockResponse",
		"dns.sinkhole":          "Sinkhole",
		"dns.strip_ech":         "KeepECH",
		"dns.cache_size":        "CacheSize",
		"dns.min_ttl":           "MinTTL",
		"dns.max_ttl":           "MaxTTL",
		"dns.blocked_ttl":       "BlockedTTL",
		"dns.negative_ttl":      "NegativeTTL",
		"dns.serve_stale":       "DisableStale",
		"dns.stale_ttl":         "StaleTTL",
		"dns.stale_max_age":     "StaleMaxAge",
		"dns.rate_limit":        "RateLimit",
		"dns.rate_burst":        "RateBurst",
		"dns.rate_limit_exempt": "RateLimitExempt",
		"dns.udp_sockets":       "UDPSockets",
		"dns.forward":           "Forward",
	}
}

// dnsDerivedFields are the config.DNSSection fields computed from another
// key (NoRateLimit from rate_limit), which that key's entry covers.
func dnsDerivedFields() []string { return []string{"NoRateLimit"} }

// dnsRestartKeys returns, sorted, the [dns] keys whose value differs
// between a and b and that apply only at the next restart.
func dnsRestartKeys(a, b config.DNSSection) []string {
	return changedKeys(a, b, dnsRestartFields())
}

// changedKeys returns, sorted, the keys of fields (key → field of the
// section struct, "Auth.Mode" for a field of a nested section) whose
// values differ between sections a and b, of the same struct type. Both
// front-ends' restart warnings use it, with a test per section proving
// their field maps cover the struct.
func changedKeys[S any](a, b S, fields map[string]string) []string {
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	var keys []string
	for key, field := range fields {
		if !reflect.DeepEqual(fieldAt(va, field).Interface(), fieldAt(vb, field).Interface()) {
			keys = append(keys, key)
		}
	}
	sort.Strings(keys)
	return keys
}

// fieldAt returns the field of struct v at path ("Name" or "Name.Sub").
func fieldAt(v reflect.Value, path string) reflect.Value {
	for name := range strings.SplitSeq(path, ".") {
		v = v.FieldByName(name)
	}
	return v
}

// dnsAccess copies the reloadable [dns] keys onto the filter's Access
// (config holds them as Access wants them).
func dnsAccess(c config.DNSSection) dnsfilter.Access {
	return dnsfilter.Access{
		AllowedClients:  c.AllowedClients,
		MaxTCPPerClient: c.MaxTCPPerClient,
		TCPIdleTimeout:  c.TCPIdleTimeout,
		ForwardAny:      c.ForwardAny,
	}
}

// dnsOptions copies [dns] onto the filter's options: config holds every
// value as dnsfilter.Options wants it (defaults, booleans in the option's
// sense, 0 = no cache already mapped), so nothing is converted here.
func dnsOptions(c config.DNSSection, rt *runtime) dnsfilter.Options {
	var fwd []dnsfilter.Forward // nil when there is no [[dns.forward]], as in the zero Options
	for _, z := range c.Forward {
		fwd = append(fwd, dnsfilter.Forward(z))
	}
	return dnsfilter.Options{
		Listen:          c.Listen,
		UDPSockets:      c.UDPSockets,
		Upstreams:       c.Upstreams,
		Forward:         fwd,
		Timeout:         c.Timeout,
		BlockResponse:   c.BlockResponse,
		Sinkhole:        c.Sinkhole,
		BlockedTTL:      c.BlockedTTL,
		KeepECH:         c.KeepECH,
		CacheSize:       c.CacheSize,
		MinTTL:          c.MinTTL,
		MaxTTL:          c.MaxTTL,
		NegativeTTL:     c.NegativeTTL,
		DisableStale:    c.DisableStale,
		StaleTTL:        c.StaleTTL,
		StaleMaxAge:     c.StaleMaxAge,
		RateLimit:       c.RateLimit,
		NoRateLimit:     c.NoRateLimit,
		RateBurst:       c.RateBurst,
		RateLimitExempt: c.RateLimitExempt,
		Access:          dnsAccess(c),
		Policy:          &rt.policy,
		Logger:          rt.log,
		Registerer:      rt.reg,
		DecisionLog:     rt.decisions,
		Clock:           rt.now,
	}
}

// selfProbe returns a liveness check that asks the filter's first UDP
// listener for _dns.resolver.arpa, a name the filter answers itself
// without any upstream: it proves the serving loop still answers, whatever
// the upstreams do. A REFUSED answer counts (when loopback or the
// listener's own address is outside dns.allowed_clients, the probe is
// refused and counted like any outsider). Nil when no UDP listener is
// bound.
func selfProbe(addrs []net.Addr) func() error {
	for _, a := range addrs {
		u, ok := a.(*net.UDPAddr)
		if !ok {
			continue
		}
		ip := u.IP
		if ip.IsUnspecified() {
			if ip.To4() != nil {
				ip = net.IPv4(127, 0, 0, 1)
			} else {
				ip = net.IPv6loopback
			}
		}
		target := net.JoinHostPort(ip.String(), fmt.Sprint(u.Port))
		c := &dns.Client{Net: "udp", Timeout: 3 * time.Second}
		return func() error {
			m := new(dns.Msg)
			m.SetQuestion("_dns.resolver.arpa.", dns.TypeSVCB)
			r, _, err := c.Exchange(m, target)
			if err != nil {
				return fmt.Errorf("self-query to %s: %w", target, err)
			}
			// REFUSED proves the serving loop as well: the probe's source
			// address may be outside dns.allowed_clients.
			if r.Rcode != dns.RcodeSuccess && r.Rcode != dns.RcodeRefused {
				return fmt.Errorf("self-query to %s: %s", target, dns.RcodeToString[r.Rcode])
			}
			return nil
		}
	}
	return nil
}
