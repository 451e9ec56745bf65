package main

import (
	"context"
	"fmt"
	"net"
	"reflect"
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
// rt.policy on every query); changes to [dns] itself take effect at the
// next restart, and the reload says so in the log.
func startDNS(ctx context.Context, rt *runtime) error {
	c := rt.cfg.DNS
	if len(c.Listen) == 0 {
		return nil
	}
	f, err := dnsfilter.New(dnsOptions(c, rt))
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
		if !reflect.DeepEqual(nc.DNS, c) {
			rt.log.Warn("[dns] changed: the new settings take effect at the next restart; the new policy is in force now")
		}
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

// dnsOptions maps [dns] onto the filter's options.
func dnsOptions(c config.DNSSection, rt *runtime) dnsfilter.Options {
	fwd := make([]dnsfilter.Forward, 0, len(c.Forward))
	for _, z := range c.Forward {
		fwd = append(fwd, dnsfilter.Forward{Zone: z.Zone, Upstreams: z.Upstreams})
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
		KeepECH:         !c.StripECH,
		CacheSize:       c.CacheSize,
		MinTTL:          c.MinTTL,
		MaxTTL:          c.MaxTTL,
		NegativeTTL:     c.NegativeTTL,
		DisableStale:    !c.ServeStale,
		StaleTTL:        c.StaleTTL,
		StaleMaxAge:     c.StaleMaxAge,
		RateLimit:       float64(c.RateLimit),
		RateBurst:       c.RateBurst,
		RateLimitExempt: c.RateLimitExempt,
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
// the upstreams do. Nil when no UDP listener is bound.
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
			if r.Rcode != dns.RcodeSuccess {
				return fmt.Errorf("self-query to %s: %s", target, dns.RcodeToString[r.Rcode])
			}
			return nil
		}
	}
	return nil
}
