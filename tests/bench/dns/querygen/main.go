// Command querygen writes the realistic DNS query mix of the efficiency
// benchmark (tests/bench/efficiency): a dnsperf query file whose names
// are drawn from a universe of -universe names with a Zipf-like
// popularity (weight of rank k proportional to 1/k^s), a share -blocked
// of the queries naming hosts under listed domains, and optionally the
// list of those domains.
//
//	querygen -n 1000000 -seed 2 -queries q.txt [-list list.txt]
//
// The universe has two parts ranked separately: allowed names
// (wNNN.siteNNN.test, 1-blocked of the universe) and names under listed
// domains (www.benchNNNNNNN.example, the rest). Each query first draws
// its part (blocked with probability -blocked), then a rank in that part.
// The list holds -list-size domains benchNNNNNNN.example; the blocked
// names are spread over it. The same flags and -seed give the same file.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"log"
	"math"
	"math/rand/v2"
	"os"
	"sort"
)

func main() {
	n := flag.Int("n", 1000000, "queries to write")
	universe := flag.Int("universe", 1000000, "distinct names in the universe")
	blocked := flag.Float64("blocked", 0.3, "share of queries under listed domains")
	s := flag.Float64("s", 0.9, "Zipf exponent of the popularity of names")
	seed := flag.Uint64("seed", 1, "random seed")
	listSize := flag.Int("list-size", 1000000, "domains in the list (-list)")
	queries := flag.String("queries", "", "query file to write (dnsperf format)")
	list := flag.String("list", "", "list of domains to write (empty: none)")
	flag.Parse()
	if *queries == "" || *universe < 2 || *blocked < 0 || *blocked > 1 || *listSize < 1 {
		log.Fatal("usage: querygen -queries FILE [-n N] [-universe N] [-blocked 0.3] [-s 0.9] [-seed N] [-list FILE -list-size N]")
	}
	nBlocked := int(float64(*universe) * *blocked)
	nAllowed := *universe - nBlocked
	allowed := newZipf(nAllowed, *s)
	listed := newZipf(nBlocked, *s)
	r := rand.New(rand.NewPCG(*seed, 20261204))

	f, err := os.Create(*queries)
	if err != nil {
		log.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	for range *n {
		if nBlocked > 0 && r.Float64() < *blocked {
			k := listed.rank(r)
			// Spread the popular blocked names over the list: a
			// multiplier coprime with the list size is a bijection.
			fmt.Fprintf(w, "www.bench%07d.example A\n", spread(k, *listSize))
		} else {
			k := allowed.rank(r)
			fmt.Fprintf(w, "w%d.site%d.test A\n", k, k/7)
		}
	}
	if err := w.Flush(); err != nil {
		log.Fatal(err)
	}
	if err := f.Close(); err != nil {
		log.Fatal(err)
	}
	if *list == "" {
		return
	}
	f, err = os.Create(*list)
	if err != nil {
		log.Fatal(err)
	}
	w = bufio.NewWriterSize(f, 1<<20)
	for i := range *listSize {
		fmt.Fprintf(w, "bench%07d.example\n", i)
	}
	if err := w.Flush(); err != nil {
		log.Fatal(err)
	}
	if err := f.Close(); err != nil {
		log.Fatal(err)
	}
}

// spread maps rank k to a list index, distinct ranks to distinct indexes
// while k < size.
func spread(k, size int) int {
	const mult = 7919 // prime
	if size%mult == 0 {
		return k % size
	}
	return (k * mult) % size
}

// zipf draws ranks 0..n-1 with weight 1/(k+1)^s by inverse transform over
// the cumulative weights (s may be below 1, unlike math/rand's Zipf).
type zipf struct {
	cdf []float64
}

func newZipf(n int, s float64) *zipf {
	z := &zipf{cdf: make([]float64, n)}
	sum := 0.0
	for k := range n {
		sum += 1 / math.Pow(float64(k+1), s)
		z.cdf[k] = sum
	}
	for k := range z.cdf {
		z.cdf[k] /= sum
	}
	return z
}

func (z *zipf) rank(r *rand.Rand) int {
	u := r.Float64()
	k := sort.SearchFloat64s(z.cdf, u)
	return min(k, len(z.cdf)-1)
}
