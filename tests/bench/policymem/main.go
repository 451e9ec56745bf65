package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/balise-net/balise/internal/policy"
	"github.com/balise-net/balise/internal/policy/synth"
)

func main() {
	n := flag.Int("n", 1_000_000, "number of synthetic domains")
	services := flag.Int("services", 150, "number of catalog-shaped services")
	flag.Parse()

	list := synth.Domains(*n, 1)
	chars := 0
	for _, d := range list {
		chars += len(d)
	}
	spec := synth.Spec(*services, list)

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start := time.Now()
	p, err := policy.New(spec)
	load := time.Since(start)
	if err != nil {
		fmt.Fprintln(os.Stderr, "policymem:", err)
		os.Exit(1)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	heap := int64(after.HeapAlloc) - int64(before.HeapAlloc)

	fmt.Printf("domains            %d (average %.1f characters)\n", len(list), float64(chars)/float64(len(list)))
	fmt.Printf("compiled entries   %d\n", p.DomainCount())
	fmt.Printf("load time          %v\n", load.Round(time.Millisecond))
	fmt.Printf("heap held          %d bytes\n", heap)
	fmt.Printf("heap per domain    %.2f bytes\n", float64(heap)/float64(len(list)))
	runtime.KeepAlive(list)
	runtime.KeepAlive(spec)
	runtime.KeepAlive(p)
}
