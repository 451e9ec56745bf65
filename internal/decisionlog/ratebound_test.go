package decisionlog

import (
	"testing"
	"time"
)

func TestRateBound(t *testing.T) {
	b := RateBound{Window: time.Minute, Burst: 3}
	t0 := time.Date(2026, 5, 12, 10, 0, 0, 0, time.UTC)
	for i := range 3 {
		if ok, left := b.Allow(t0.Add(time.Duration(i) * time.Second)); !ok || left != 0 {
			t.Fatalf("line %d: ok=%v left=%d, want allowed", i, ok, left)
		}
	}
	for i := range 5 {
		if ok, _ := b.Allow(t0.Add(10 * time.Second)); ok {
			t.Fatalf("line %d past the burst allowed", 3+i)
		}
	}
	if ok, left := b.Allow(t0.Add(time.Minute)); !ok || left != 5 {
		t.Fatalf("next window: ok=%v left=%d, want allowed with 5 left out", ok, left)
	}
	if ok, left := b.Allow(t0.Add(time.Minute + time.Second)); !ok || left != 0 {
		t.Fatalf("after the report: ok=%v left=%d, want 0 left out", ok, left)
	}
	var z RateBound // zero value: 100 a minute
	for i := range 100 {
		if ok, _ := z.Allow(t0); !ok {
			t.Fatalf("zero value refused line %d", i)
		}
	}
	if ok, _ := z.Allow(t0); ok {
		t.Fatal("zero value allowed a 101st line in the minute")
	}
}
