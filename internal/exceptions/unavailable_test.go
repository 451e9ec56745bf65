package exceptions

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
)

// downStore is a store whose database cannot be reached for writes.
type downStore struct{ Store }

func (downStore) Update(context.Context, func(Tx) error) error {
	return fmt.Errorf("%w: dial tcp 127.0.0.1:5432: %v", ErrUnavailable, syscall.ECONNREFUSED)
}

// While the store is unreachable the form says "temporarily unavailable",
// never "received", and the refusal is counted.
func TestWebUnavailable(t *testing.T) {
	w := newWebEnv(t, func(o *Options) { o.Store = downStore{o.Store} })
	v := w.formValues(t, "10.0.0.1")
	code, body := w.post(t, "10.0.0.1:51515", v.Encode())
	if code != 503 || !strings.Contains(body, "temporairement indisponible") || !strings.Contains(body, "Temporarily unavailable") ||
		strings.Contains(body, "reçue") || strings.Contains(body, "received") {
		t.Fatalf("POST with the store down = %d\n%s\nwant 503 temporarily unavailable in both languages", code, body)
	}
	if n := testCounter(w.reg.metrics.unavailable); n != 1 {
		t.Fatalf("balise_exceptions_store_unavailable_total = %v, want 1", n)
	}
}

// unreachable tells a lost database from the register's own errors.
func TestUnreachable(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("dial: %w", syscall.ECONNREFUSED), true},
		{context.DeadlineExceeded, true},
		{fmt.Errorf("read: %w", syscall.ECONNRESET), true},
		{ErrState, false},
		{&LimitError{Kind: "day", Limit: 10}, false},
		{&FieldError{Field: "name"}, false},
		{ErrNotFound, false},
	} {
		if got := unreachable(tc.err); got != tc.want {
			t.Errorf("unreachable(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
