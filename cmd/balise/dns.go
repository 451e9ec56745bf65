package main

import (
	"context"
	"reflect"
	"time"

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
	rt.addReady("dns-upstreams", f.Ready)
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
