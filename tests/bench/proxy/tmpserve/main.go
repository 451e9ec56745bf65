package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/balise-net/balise/internal/policy"
	"github.com/balise-net/balise/proxy"
)

func main() {
	var doms []string
	for i := range 1000000 {
		doms = append(doms, fmt.Sprintf("d%07d.bench-list.test", i))
	}
	pol, err := policy.New(policy.Spec{Location: time.UTC, DefaultAction: policy.Block, Services: []policy.Service{{ID: "bench", Category: "networking", Domains: doms}}})
	if err != nil {
		panic(err)
	}
	doms = nil
	var ap atomic.Pointer[policy.Policy]
	ap.Store(pol)
	p, err := proxy.New(proxy.Options{Policy: &ap, Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)), ConnectPorts: []uint16{18443, 18444}, MaxTunnelsPerClient: -1, IdleTimeout: time.Hour})
	if err != nil {
		panic(err)
	}
	panic(p.ListenAndServe(context.Background(), os.Args[1]))
}
