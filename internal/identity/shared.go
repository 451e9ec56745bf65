package identity

import (
	"net/netip"
	"sync"
	"time"
)

// Outbox holds the bindings this replica recorded (Bindings' OnBind) until
// a shared store takes them, so that the other replicas learn them. It is
// bounded and never blocks: Publish only updates a map under a short lock.
// Binds of one user from one address coalesce into the latest; one
// re-published within Refresh of the last one queued is skipped (the
// other replicas then see it at most Refresh older than it is). When the
// queue is full (the store is down), the binds queued first make room
// for new ones: they are dropped and counted. It is safe for concurrent
// use.
type Outbox struct {
	refresh int64
	max     int

	mu      sync.Mutex
	pending map[bindKey]int64 // waiting to be taken: the latest time of each
	order   []bindKey         // pending's keys, first queued first (from head)
	head    int
	cur     map[bindKey]int64 // queued in this refresh period
	prev    map[bindKey]int64 // queued in the previous one
	curFrom int64             // when the current period began
	dropped uint64
	skipped uint64
	ready   chan struct{}
}

type bindKey struct {
	addr netip.Addr
	user string
}

// OutboxOptions configures an Outbox. The zero value holds the defaults.
type OutboxOptions struct {
	// TTL is [identity] binding_ttl, from which Refresh's default
	// follows. Zero: 30 minutes.
	TTL time.Duration
	// Max bounds the bindings waiting; beyond it the first queued are
	// dropped (counted in OutboxStats.Dropped). Zero: 4096.
	Max int
	// Refresh is the shortest time between two publications of one user
	// on one address. Zero: TTL/60, between 1 s and 1 minute; negative:
	// every bind is published.
	Refresh time.Duration
}

// maxRecent bounds the bindings remembered per refresh period (beyond it
// binds are published again, which is harmless).
const maxRecent = 65536

// NewOutbox returns an empty Outbox.
func NewOutbox(o OutboxOptions) *Outbox {
	if o.TTL <= 0 {
		o.TTL = 30 * time.Minute
	}
	if o.Max <= 0 {
		o.Max = 4096
	}
	switch {
	case o.Refresh == 0:
		o.Refresh = min(max(o.TTL/60, time.Second), time.Minute)
	case o.Refresh < 0:
		o.Refresh = 0
	}
	return &Outbox{refresh: int64(o.Refresh), max: o.Max,
		pending: map[bindKey]int64{}, cur: map[bindKey]int64{}, prev: map[bindKey]int64{},
		ready: make(chan struct{}, 1)}
}

// Publish queues x for the other replicas; it is Bindings' OnBind. It
// never blocks. A nil Outbox ignores it.
func (q *Outbox) Publish(x Binding) {
	if q == nil {
		return
	}
	x.Addr = normalize(x.Addr)
	if !x.Addr.IsValid() || x.User == "" {
		return
	}
	k, at := bindKey{x.Addr, x.User}, nanos(x.At)
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.refresh > 0 {
		if at-q.curFrom >= q.refresh {
			q.prev, q.cur, q.curFrom = q.cur, make(map[bindKey]int64, len(q.cur)), at
		}
		last, ok := q.cur[k]
		if !ok {
			last, ok = q.prev[k]
		}
		if ok && at >= last && at-last < q.refresh {
			q.skipped++
			return
		}
	}
	if _, ok := q.pending[k]; !ok && len(q.pending) >= q.max {
		q.evict()
	}
	q.put(k, at)
	if q.refresh > 0 && len(q.cur) < maxRecent {
		q.cur[k] = at
	}
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// put adds k to pending or refreshes it there.
func (q *Outbox) put(k bindKey, at int64) {
	if old, ok := q.pending[k]; ok {
		q.pending[k] = max(old, at)
		return
	}
	q.pending[k] = at
	q.order = append(q.order, k)
}

// evict drops the binding queued first, so that it is published again at
// its user's next bind.
func (q *Outbox) evict() {
	k := q.order[q.head]
	q.order[q.head] = bindKey{}
	q.head++
	if q.head > len(q.order)/2 {
		q.order = append(q.order[:0], q.order[q.head:]...)
		q.head = 0
	}
	delete(q.pending, k)
	delete(q.cur, k)
	delete(q.prev, k)
	q.dropped++
}

// Ready receives (at most one pending value) when bindings were queued.
func (q *Outbox) Ready() <-chan struct{} { return q.ready }

// Take returns the bindings waiting (each user and address once, with its
// latest time) and empties the queue.
func (q *Outbox) Take() []Binding {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.pending) == 0 {
		return nil
	}
	out := make([]Binding, 0, len(q.pending))
	for _, k := range q.order[q.head:] {
		out = append(out, Binding{Addr: k.addr, User: k.user, At: time.Unix(0, q.pending[k])})
	}
	clear(q.pending)
	q.order, q.head = q.order[:0], 0
	return out
}

// Requeue puts back, ahead of the binds queued since, bindings that Take
// returned and the store could not take. Beyond the bound the first of
// them are dropped and counted (and published again at their user's next
// bind).
func (q *Outbox) Requeue(xs []Binding) {
	q.mu.Lock()
	defer q.mu.Unlock()
	type back struct {
		k  bindKey
		at int64
	}
	var add []back
	for _, x := range xs {
		k, at := bindKey{x.Addr, x.User}, nanos(x.At)
		if old, ok := q.pending[k]; ok {
			q.pending[k] = max(old, at)
			continue
		}
		add = append(add, back{k, at})
	}
	drop := max(len(add)-(q.max-len(q.pending)), 0)
	for _, b := range add[:drop] {
		q.dropped++
		delete(q.cur, b.k)
		delete(q.prev, b.k)
	}
	order := make([]bindKey, 0, len(add)-drop+len(q.order)-q.head)
	for _, b := range add[drop:] {
		q.pending[b.k] = b.at
		order = append(order, b.k)
	}
	q.order, q.head = append(order, q.order[q.head:]...), 0
}

// OutboxStats describes an Outbox for metrics; it never names an address
// or a user.
type OutboxStats struct {
	// Queued is the number of bindings waiting.
	Queued int
	// Dropped counts binds lost because the queue was full.
	Dropped uint64
	// Skipped counts binds not published again within Refresh.
	Skipped uint64
}

// Stats returns the current figures.
func (q *Outbox) Stats() OutboxStats {
	q.mu.Lock()
	defer q.mu.Unlock()
	return OutboxStats{Queued: len(q.pending), Dropped: q.dropped, Skipped: q.skipped}
}
