package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

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
