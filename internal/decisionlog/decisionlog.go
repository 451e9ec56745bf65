package decisionlog

import (
	"context"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/balise-net/balise/internal/policy"
)

// Entry is one decision to log.
type Entry struct {
	// Front is the enforcement point: "dns", "http", "connect", "transparent".
	Front    string
	Client   netip.Addr
	User     string
	Host     string
	Decision policy.Decision
	// Groups are the configuration's groups the client belongs to (policy
	// names, not personal data), written as "groups". Zero: none shown.
	Groups policy.GroupSet
}

type key struct {
	client  netip.Addr
	user    string
	service string
	verdict policy.Verdict
	would   string // the report-mode rule, so a report is never folded into another line
}

type seen struct {
	first    time.Time
	repeats  int
	last     Entry
	lastTime time.Time
}

// Logger deduplicates and writes decision lines. The zero value is not
// usable; see New. It is safe for concurrent use.
type Logger struct {
	log    *slog.Logger
	window time.Duration
	max    int

	// decisions counts every decision passed to Log, before deduplication
	// (nil until Register).
	decisions *prometheus.CounterVec

	mu      sync.Mutex
	entries map[key]*seen
}

// Register creates balise_decisions_total{front,verdict,reason,category}
// on reg: every decision about a listed service, counted before
// deduplication. Its labels are bounded by the configuration (fronts,
// verdicts, reasons and categories are small fixed sets); no client, user
// or host ever is a label. Call it once, before the first Log.
func (l *Logger) Register(reg prometheus.Registerer) error {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "balise_decisions_total",
		Help: "Decisions about listed services by front-end (dns, http, connect, transparent), verdict, reason and category, counted before log deduplication.",
	}, []string{"front", "verdict", "reason", "category"})
	if err := reg.Register(c); err != nil {
		return err
	}
	l.decisions = c
	return nil
}

// New returns a Logger writing to log. window is the deduplication window
// (zero: one minute); max bounds the number of remembered keys (zero:
// 100,000), past which the oldest-window keys are flushed early.
func New(log *slog.Logger, window time.Duration, max int) *Logger {
	if window <= 0 {
		window = time.Minute
	}
	if max <= 0 {
		max = 100_000
	}
	return &Logger{log: log, window: window, max: max, entries: make(map[key]*seen)}
}

// Log records e at now. The first decision for a (client, user, service,
// verdict) in a window is written at once with repeats=0; the following
// ones in the same window are counted, and once the window has ended one
// summary line (the last of them, with repeats = how many were held back)
// is written by the next Log for that key or by Flush.
func (l *Logger) Log(now time.Time, e Entry) {
	if l == nil || !e.Decision.Listed() {
		return
	}
	if l.decisions != nil {
		l.decisions.WithLabelValues(e.Front, e.Decision.Verdict.String(), e.Decision.Reason.String(), e.Decision.Category).Inc()
	}
	k := key{client: e.Client.Unmap(), user: e.User, service: e.Decision.Service, verdict: e.Decision.Verdict, would: e.Decision.Report.Rule}
	l.mu.Lock()
	s, ok := l.entries[k]
	if ok && now.Sub(s.first) < l.window {
		s.repeats++
		s.last, s.lastTime = e, now
		l.mu.Unlock()
		return
	}
	var summary *seen
	if ok {
		if s.repeats > 0 {
			cp := *s
			summary = &cp
		}
		s.first, s.repeats = now, 0
	} else {
		if len(l.entries) >= l.max {
			l.flushLocked(now, true)
		}
		l.entries[k] = &seen{first: now}
	}
	l.mu.Unlock()
	if summary != nil {
		l.write(summary.lastTime, summary.last, summary.repeats)
	}
	l.write(now, e, 0)
}

// Flush writes a line for every key whose window has ended with decisions
// not yet reported, and forgets keys idle for a whole window. Call it
// periodically (Run does).
func (l *Logger) Flush(now time.Time) {
	l.mu.Lock()
	l.flushLocked(now, false)
	l.mu.Unlock()
}

func (l *Logger) flushLocked(now time.Time, all bool) {
	for k, s := range l.entries {
		if !all && now.Sub(s.first) < l.window {
			continue
		}
		if s.repeats > 0 {
			l.write(s.lastTime, s.last, s.repeats)
		}
		delete(l.entries, k)
	}
}

// Run flushes every window until ctx ends, then flushes everything.
func (l *Logger) Run(ctx context.Context, clock func() time.Time) {
	t := time.NewTicker(l.window / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			l.mu.Lock()
			l.flushLocked(clock(), true)
			l.mu.Unlock()
			return
		case <-t.C:
			l.Flush(clock())
		}
	}
}

func (l *Logger) write(at time.Time, e Entry, repeats int) {
	d := e.Decision
	until := ""
	if !d.Until.IsZero() {
		until = d.Until.Format(time.RFC3339)
	}
	would := ""
	if d.Report.Rule != "" {
		would = d.Report.Action.String()
	}
	l.log.LogAttrs(context.Background(), slog.LevelInfo, "decision",
		slog.Time("at", at),
		slog.String("front", e.Front),
		slog.String("client", e.Client.Unmap().String()),
		slog.String("user", e.User),
		slog.Any("groups", groupNames(e.Groups)),
		slog.String("host", e.Host),
		slog.String("service", d.Service),
		slog.String("category", d.Category),
		slog.String("verdict", d.Verdict.String()),
		slog.String("reason", d.Reason.String()),
		slog.String("rule", d.Rule),
		slog.String("grant", d.Grant),
		slog.String("until", until),
		slog.String("would", would),
		slog.String("would_rule", d.Report.Rule),
		slog.Int("repeats", repeats),
	)
}

// groupNames is the "groups" value of a line: an empty list rather than
// null when the client is in no group.
func groupNames(g policy.GroupSet) []string {
	if n := g.Names(); n != nil {
		return n
	}
	return []string{}
}
