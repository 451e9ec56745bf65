package exceptions

import (
	"context"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/balise-net/balise/internal/exceptions/pgtest"
)

// BenchmarkSubmitPostgres is BenchmarkSubmit on PostgreSQL, with fsync and
// synchronous commits on as in production.
func BenchmarkSubmitPostgres(b *testing.B) {
	srv, err := pgtest.NewDurable()
	if err != nil {
		if srv == nil && os.Getenv("BALISE_E2E") != "1" {
			b.Skipf("PostgreSQL not available: %v", err)
		}
		b.Fatal(err)
	}
	defer srv.Close()
	n := openNodeB(b, srv.CreateDB(b))
	ctx := context.Background()
	for i := 0; b.Loop(); i++ {
		s := sub(fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255), "facebook", fmt.Sprintf("Campagne de recrutement numéro %d", i))
		if _, err := n.Submit(ctx, s); err != nil {
			b.Fatal(err)
		}
	}
}

func openNodeB(b *testing.B, url string) *Register {
	st, err := OpenPostgres(context.Background(), PGOptions{URL: url})
	if err != nil {
		b.Fatal(err)
	}
	r, err := Open(context.Background(), Options{Store: st, CloseStore: true, MaxPendingPerClient: -1, MaxPerDayPerClient: -1})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { r.Close() })
	return r
}

// TestPGPropagationLatency approves 100 requests on one node and measures
// how long each takes to reach the other node's grants (p50, p99 logged;
// every one within 2 s).
func TestPGPropagationLatency(t *testing.T) {
	srv := sharedPG(t)
	url := srv.CreateDB(t)
	clock := newClock()
	a, b := openNode(t, url, "node-a", clock), openNode(t, url, "node-b", clock)
	ctx := context.Background()
	const n = 100
	var ids []string
	for i := range n {
		rc, err := a.reg.Submit(ctx, sub(fmt.Sprintf("10.0.%d.%d", i/200, i%200+1), "facebook", justification(i)))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, rc.ID)
	}
	b.follow(t, time.Second)
	waitListening(t, srv, url, "node-b-listen")
	var lat []time.Duration
	for _, id := range ids {
		start := time.Now()
		if _, err := a.reg.Approve(ctx, id, Approval{By: "RSI", For: time.Hour}); err != nil {
			t.Fatal(err)
		}
		b.waitGrant(t, id, false, 2*time.Second)
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	t.Logf("approve on a → grant applied on b, %d approvals: p50 %s, p99 %s, max %s", n, lat[n/2], lat[n*99/100-1], lat[n-1])
}
