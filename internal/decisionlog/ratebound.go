package decisionlog

import (
	"sync"
	"time"
)

// RateBound bounds the rate of security-event lines (refusals): at most
// Burst lines per Window; the lines past it are counted, and the next
// allowed line reports how many were left out. The zero value allows
// 100 lines a minute. It is safe for concurrent use.
type RateBound struct {
	// Window and Burst: zero means one minute and 100 lines.
	Window time.Duration
	Burst  int

	mu      sync.Mutex
	start   time.Time
	n       int
	dropped int
}

// Allow reports whether a line may be written at now and, when it may,
// how many lines were left out since the last one written.
func (b *RateBound) Allow(now time.Time) (ok bool, leftOut int) {
	window, burst := b.Window, b.Burst
	if window <= 0 {
		window = time.Minute
	}
	if burst <= 0 {
		burst = 100
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if now.Sub(b.start) >= window {
		b.start, b.n = now, 0
	}
	if b.n >= burst {
		b.dropped++
		return false, 0
	}
	b.n++
	leftOut, b.dropped = b.dropped, 0
	return true, leftOut
}
