package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"

	"github.com/balise-net/balise/dnsfilter"
	"github.com/balise-net/balise/internal/policy"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:5401", "")
	up := flag.String("up", "127.0.0.1:5400", "")
	n := flag.Int("n", 1000000, "")
	sockets := flag.Int("sockets", 2, "")
	nobatch := flag.Bool("nobatch", false, "")
	flag.Parse()
	go http.ListenAndServe("127.0.0.1:6060", nil)
	doms := make([]string, *n)
	for i := range doms {
		doms[i] = fmt.Sprintf("site%07d.com", i)
	}
	p, err := policy.New(policy.Spec{DefaultAction: policy.Block, Services: []policy.Service{{ID: "bench", Category: "social", Domains: doms}}})
	if err != nil {
		panic(err)
	}
	doms = nil
	var ptr atomic.Pointer[policy.Policy]
	ptr.Store(p)
	f, err := dnsfilter.New(dnsfilter.Options{Listen: []string{*listen}, UDPSockets: *sockets, UDPNoBatch: *nobatch, Upstreams: []string{*up}, CacheSize: 100000, Policy: &ptr, Logger: slog.Default()})
	if err != nil {
		panic(err)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	f.ListenAndServe(ctx)
	_ = os.Stdout
}
