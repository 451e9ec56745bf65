package exceptions

import (
	"context"
	"os"
	"strings"
	"testing"
)

// A reveal is one chained line with the officer, the reason, the
// pseudonym and the count; Verify still holds; invalid reveals write
// nothing.
func TestRecordReveal(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	for _, bad := range []Reveal{
		{Reason: "enquête", Pseudonym: "u-abc"},
		{By: "rsi", Pseudonym: "u-abc"},
		{By: "rsi", Reason: "  ", Pseudonym: "u-abc"},
		{By: "rsi", Reason: "enquête"},
		{By: "rsi", Reason: "enquête", Pseudonym: "u-\x00"},
	} {
		if err := e.reg.RecordReveal(ctx, bad); err == nil {
			t.Errorf("RecordReveal(%+v) = nil, want an error", bad)
		}
	}
	if _, err := os.Stat(e.log); err == nil {
		if data, _ := os.ReadFile(e.log); len(data) > 0 {
			t.Fatalf("invalid reveals wrote %q", data)
		}
	}
	if err := e.reg.RecordReveal(ctx, Reveal{By: "rsi", Reason: "plainte 2026-114", Pseudonym: "u-aaaabbbbccccdddd", Found: 1}); err != nil {
		t.Fatal(err)
	}
	if err := e.reg.RecordReveal(ctx, Reveal{By: "rsi", Reason: "plainte 2026-115", Pseudonym: "u-zzzz"}); err != nil {
		t.Fatal(err)
	}
	if err := e.reg.Verify(ctx); err != nil {
		t.Fatalf("Verify after reveals: %v", err)
	}
	var got []Event
	if err := readEvents(e.log, func(_ int, ev Event) error { got = append(got, ev); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("events = %+v, want 2", got)
	}
	first := got[0]
	if first.Event != EventIdentityReveal || first.Actor != "rsi" || first.Reason != "plainte 2026-114" ||
		first.Subject != "u-aaaabbbbccccdddd" || first.Count == nil || *first.Count != 1 {
		t.Errorf("first reveal = %+v", first)
	}
	if got[1].Count == nil || *got[1].Count != 0 {
		t.Errorf("a reveal that found nothing records count 0: %+v", got[1])
	}
	data, _ := os.ReadFile(e.log)
	if !strings.Contains(string(data), `"count":0`) {
		t.Errorf("count 0 is not written: %s", data)
	}
}
