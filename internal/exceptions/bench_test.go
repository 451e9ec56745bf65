package exceptions

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkSubmit measures one durable request: an immediate transaction,
// one audit line written and fsynced, a synchronous commit.
func BenchmarkSubmit(b *testing.B) {
	e := newEnv(b, func(o *Options) { o.MaxPendingPerClient, o.MaxPerDayPerClient = -1, -1 })
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		s := sub(fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255), "facebook", fmt.Sprintf("Campagne de recrutement numéro %d", i))
		if _, err := e.reg.Submit(ctx, s); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerify measures checking a 10,000-line audit log.
func BenchmarkVerify(b *testing.B) {
	e := newEnv(b, nil)
	ctx := context.Background()
	const n = 10000
	var events []Event
	for i := 0; i < n; i++ {
		events = append(events, Event{Event: EventReceived, ID: FormatID(int64(i + 1)), Client: "10.0.0.1",
			Services: []string{"facebook"}, Host: "www.facebook.com", Duration: "4h", Digest: zeroHash})
	}
	if err := e.reg.update(ctx, func(Tx, time.Time) ([]Event, error) { return events, nil }); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		if err := Verify(e.log); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n), "lines/op")
}
