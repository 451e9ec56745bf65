// Command filteronly runs Balise's DNS filter alone, without the rest of
// `balise serve`, on a synthetic policy that blocks n domains
// (site0000000.com ...), to compare UDP socket settings with dnsperf:
//
//	filteronly -listen 127.0.0.1:5401 -upstream 127.0.0.1:5400 -sockets 2 [-nobatch] [-pprof 127.0.0.1:6060]
//
// The upstream can be tests/bench/dns/responder.
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
	listen := flag.String("listen", "127.0.0.1:5401", "UDP and TCP address")
	upstream := flag.String("upstream", "127.0.0.1:5400", "upstream resolver")
	n := flag.Int("n", 1000000, "number of blocked domains")
	sockets := flag.Int("sockets", 0, "SO_REUSEPORT UDP sockets (0: one per CPU)")
	nobatch := flag.Bool("nobatch", false, "one datagram per system call")
	pprof := flag.String("pprof", "", "address for net/http/pprof (empty: none)")
	flag.Parse()
	if *pprof != "" {
		go http.ListenAndServe(*pprof, nil)
	}
	doms := make([]string, *n)
	for i := range doms {
		doms[i] = fmt.Sprintf("site%07d.com", i)
	}
	p, err := policy.New(policy.Spec{DefaultAction: policy.Block, Services: []policy.Service{{ID: "bench", Category: "networking", Domains: doms}}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "filteronly:", err)
		os.Exit(1)
	}
	var ptr atomic.Pointer[policy.Policy]
	ptr.Store(p)
	f, err := dnsfilter.New(dnsfilter.Options{
		Listen: []string{*listen}, UDPSockets: *sockets, UDPNoBatch: *nobatch,
		Upstreams: []string{*upstream}, CacheSize: 100000, Policy: &ptr, NoRateLimit: true,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "filteronly:", err)
		os.Exit(1)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	if err := f.ListenAndServe(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "filteronly:", err)
		os.Exit(1)
	}
}
