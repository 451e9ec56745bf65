package main

import (
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/balise-net/balise/config"
	"github.com/balise-net/balise/internal/policy"
)

// TestWatchPolicy checks that every way the policy changes (grants, a
// recompile, a reload) signals the watchers, that signals coalesce, and
// that applies from prepare run before the new policy is published.
func TestWatchPolicy(t *testing.T) {
	cfg, p := loadPolicy(t, testPolicy)
	rt := newRuntime(cfg, p, newRegistry(), slog.New(slog.DiscardHandler), nil)
	w := rt.watchPolicy()
	pending := func() bool {
		select {
		case <-w:
			return true
		default:
			return false
		}
	}
	if pending() {
		t.Fatal("a signal before any change")
	}
	rt.SetGrants([]policy.Grant{{ID: "1", Subject: netip.MustParsePrefix("10.0.0.1/32"), Services: []string{"*"}, NotAfter: time.Now().Add(time.Hour)}})
	rt.SetGrants(nil)
	if !pending() || pending() {
		t.Error("two grant snapshots: want exactly one pending signal")
	}
	_, p2 := loadPolicy(t, testPolicy)
	rt.setBase(p2)
	if !pending() {
		t.Error("no signal after a recompile")
	}
	cfg3, p3 := loadPolicy(t, testPolicy)
	before := rt.policy.Load()
	var seenOld bool
	rt.install(cfg3, p3, func() { seenOld = rt.policy.Load() == before && !pending() })
	if !seenOld || !pending() {
		t.Errorf("install: apply ran after the publication (%v) or no signal", seenOld)
	}
}

// TestPrepare checks that a failing prepare hook stops the reload and
// that the others' applies are returned in order.
func TestPrepare(t *testing.T) {
	cfg, p := loadPolicy(t, testPolicy)
	rt := newRuntime(cfg, p, newRegistry(), slog.New(slog.DiscardHandler), nil)
	var order []int
	rt.onPrepare(func(*config.Config) (func(), error) { return func() { order = append(order, 1) }, nil })
	rt.onPrepare(func(*config.Config) (func(), error) { return nil, nil })
	rt.onPrepare(func(*config.Config) (func(), error) { return func() { order = append(order, 2) }, nil })
	applies, err := rt.prepare(cfg)
	if err != nil || len(applies) != 2 {
		t.Fatalf("prepare = %d applies, %v", len(applies), err)
	}
	for _, a := range applies {
		a()
	}
	if !slices.Equal(order, []int{1, 2}) {
		t.Errorf("applies ran as %v, want [1 2]", order)
	}
	bad := errors.New("ca: no such file")
	rt.onPrepare(func(*config.Config) (func(), error) { return nil, bad })
	if _, err := rt.prepare(cfg); !errors.Is(err, bad) {
		t.Errorf("prepare with a failing hook = %v, want its error", err)
	}
}

func TestProxyRestartKeys(t *testing.T) {
	a := &config.Config{}
	a.Proxy.Listen = []string{"127.0.0.1:3128"}
	a.Proxy.AllowedClients = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	b := &config.Config{Proxy: a.Proxy}
	b.Proxy.AllowedClients = nil
	b.Proxy.PortalURL = "http://portal.example/"
	b.Proxy.Auth.Clients = []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}
	b.Proxy.Auth.Challenge = "always"
	if keys := proxyRestartKeys(a, b); len(keys) != 0 {
		t.Errorf("reloadable changes named as restart keys: %v", keys)
	}
	b.Proxy.Listen = []string{"0.0.0.0:3128"}
	b.Proxy.TransparentMode = "tproxy"
	b.Proxy.Resolver = "10.0.0.53:53"
	b.Proxy.Auth.Mode = "negotiate"
	if keys := proxyRestartKeys(a, b); !slices.Equal(keys, []string{"proxy.auth.mode", "proxy.listen", "proxy.resolver", "proxy.transparent_mode"}) {
		t.Errorf("proxyRestartKeys = %v", keys)
	}
}
