package exceptions

import (
	"context"
	"fmt"
	"time"
)

// chainTx is a Tx whose store keeps the audit chain itself (PostgreSQL):
// the lines go into the store, in the same transaction as the change.
type chainTx interface {
	// AppendEvent stores one audit line with its seq, prev and hash.
	AppendEvent(seq int64, prev, hash string, line []byte) error
	// EventHash returns the stored hash of the line with this seq ("" when
	// there is none).
	EventHash(seq int64) (string, error)
}

// chainReadTx reads a stored audit chain.
type chainReadTx interface {
	// Events calls fn with every line at or after seq from, in seq order.
	Events(from int64, fn func(seq int64, hash string, line []byte) error) error
}

// versionedReadTx is a ReadTx whose changes carry a commit-ordered
// version, so that a node reads only what changed since it last looked.
type versionedReadTx interface {
	// ChangeVersion returns the version of the last committed change.
	ChangeVersion() (int64, error)
	// RequestsSince returns the requests written after version v.
	RequestsSince(v int64) ([]Request, error)
}

// sharedStore is a store several nodes share: one of them, the leader,
// writes expiry and retention events; a doorbell tells of changes.
type sharedStore interface {
	Leader(ctx context.Context) bool
	Doorbell() <-chan struct{}
	Listen(ctx context.Context, retry time.Duration)
}

// keepsChain reports whether st keeps the audit chain (no audit file).
func keepsChain(st Store) bool {
	_, ok := st.(*PGStore)
	return ok
}

// chainName names a stored chain in a ChainError's Path.
const chainName = "audit_events"

// appendStored appends events after head h to the store's chain and
// records the new head. Appends hold the head row's lock (and the store's
// update lock), and seq is the table's primary key: the chain cannot fork.
//
// Like the file's reconcile, it first checks that the head row still names
// the last stored line: if the database was edited, writes are refused
// (ErrAudit) until the officer investigates.
func appendStored(ct chainTx, h Head, events []Event, now time.Time) error {
	tx := ct.(Tx)
	if h.Seq > 0 {
		got, err := ct.EventHash(h.Seq)
		if err != nil {
			return err
		}
		if got != h.Hash {
			return fmt.Errorf("%w: the register's audit head (seq %d) does not match its stored event: the database was edited; run verify", ErrAudit, h.Seq)
		}
	}
	for _, e := range events {
		e.Time = formatTime(now)
		e.Seq, e.Prev = h.Seq+1, h.Hash
		line, err := encodeLine(e)
		if err != nil {
			return err
		}
		hash := lineHash(line)
		if err := ct.AppendEvent(e.Seq, e.Prev, hash, line); err != nil {
			return err
		}
		h = Head{Seq: e.Seq, Hash: hash}
	}
	return tx.SetHead(h)
}

// checkStoredHead is Repair for a stored chain: the head row must name
// the last stored line.
func (r *Register) checkStoredHead(ctx context.Context) error {
	return r.opt.Store.View(ctx, func(tx ReadTx) error {
		h, err := tx.Head()
		if err != nil {
			return err
		}
		last := Head{Hash: zeroHash}
		err = tx.(chainReadTx).Events(h.Seq, func(seq int64, hash string, _ []byte) error {
			last = Head{Seq: seq, Hash: hash}
			return nil
		})
		if err != nil {
			return err
		}
		if last != (Head{Seq: h.Seq, Hash: h.Hash}) {
			return fmt.Errorf("%w: the register's audit head (seq %d) does not match its last stored event (seq %d): the database was edited; run verify", ErrAudit, h.Seq, last.Seq)
		}
		return nil
	})
}

// eachEvent calls fn for every audit event, from the file or the store,
// with its line number (1-based). The chain is not checked here.
func (r *Register) eachEvent(ctx context.Context, fn func(line int, e Event) error) error {
	if !keepsChain(r.opt.Store) {
		return readEvents(r.opt.AuditLog, fn)
	}
	return r.opt.Store.View(ctx, func(tx ReadTx) error {
		n := 0
		return tx.(chainReadTx).Events(1, func(_ int64, _ string, line []byte) error {
			n++
			e, err := checkLine(line)
			if err != nil {
				return &ChainError{chainName, n, err.Error()}
			}
			return fn(n, e)
		})
	})
}

// verifyStored is Verify for a stored chain: every line checks on its
// own, follows the previous one (seq and prev), matches its hash column;
// the chain ends at the head row; every request matches its digest.
func (r *Register) verifyStored(ctx context.Context) error {
	return r.opt.Store.View(ctx, func(tx ReadTx) error {
		head := Head{Hash: zeroHash}
		digests := map[string]digestAt{}
		n := 0
		err := tx.(chainReadTx).Events(1, func(seq int64, hash string, line []byte) error {
			n++
			e, cerr := checkLine(line)
			switch {
			case cerr != nil:
				return &ChainError{chainName, n, cerr.Error()}
			case e.Seq != head.Seq+1 || seq != e.Seq:
				return &ChainError{chainName, n, fmt.Sprintf("seq %d, want %d (an event was removed, inserted or moved)", e.Seq, head.Seq+1)}
			case e.Prev != head.Hash:
				return &ChainError{chainName, n, "prev does not match the previous event (an event was removed, inserted or moved)"}
			case lineHash(line) != hash:
				return &ChainError{chainName, n, "the stored hash differs from the event's (the row was edited)"}
			}
			head = Head{Seq: e.Seq, Hash: hash}
			if e.Event == EventReceived {
				digests[e.ID] = digestAt{e.Digest, n}
			}
			return nil
		})
		if err != nil {
			return err
		}
		stored, err := tx.Head()
		if err != nil {
			return err
		}
		switch {
		case head.Seq < stored.Seq:
			return &ChainError{chainName, int(head.Seq) + 1, fmt.Sprintf("missing: the chain ends at seq %d but the register recorded seq %d (events were removed at the end)", head.Seq, stored.Seq)}
		case head.Seq > stored.Seq:
			return &ChainError{chainName, int(stored.Seq) + 1, fmt.Sprintf("seq %d was never recorded as the head (added by hand)", stored.Seq+1)}
		case head.Hash != stored.Hash:
			return &ChainError{chainName, int(stored.Seq), "differs from the last event the register recorded (the chain was rewritten)"}
		}
		reqs, err := tx.Requests(Filter{})
		if err != nil {
			return err
		}
		return checkDigests(chainName, reqs, digests)
	})
}

// digestAt is a request's digest as a request_received line recorded it.
type digestAt struct {
	digest string
	line   int
}

// checkDigests checks that every request matches its recorded digest.
func checkDigests(path string, reqs []Request, digests map[string]digestAt) error {
	for _, q := range reqs {
		d, ok := digests[q.ID]
		if !ok {
			return fmt.Errorf("%s: request %s is in the register but the log has no request_received line for it", path, q.ID)
		}
		if d.digest != q.Digest() {
			return &ChainError{path, d.line, fmt.Sprintf("request %s in the register differs from what this line recorded (the register was edited)", q.ID)}
		}
	}
	return nil
}
