package exceptions

import "context"

// Store keeps requests, grants and the audit log's chain head. One
// deployment has one store; every process that opens it (the server and
// the officer's command line) sees the same data.
//
// Implementations must serialize Update across goroutines and processes:
// two Updates never run at the same time, and an Update sees every change
// committed before it started. Changes made through a Tx commit, durably,
// only when fn returns nil.
type Store interface {
	// Update runs fn in one write transaction.
	Update(ctx context.Context, fn func(Tx) error) error
	// View runs fn in a read transaction (a consistent snapshot).
	View(ctx context.Context, fn func(ReadTx) error) error
	// Close releases the store.
	Close() error
}

// ReadTx reads the store.
type ReadTx interface {
	// Request returns the request with this id, or ErrNotFound.
	Request(id string) (Request, error)
	// Requests returns the requests matching f, oldest first.
	Requests(f Filter) ([]Request, error)
	// Head returns the audit log's chain head (zero for an empty log).
	Head() (Head, error)
}

// Tx reads and writes the store inside Update.
type Tx interface {
	ReadTx
	// NextID allocates a new request id, never returned before.
	NextID() (string, error)
	// PutRequest inserts or replaces the request with r.ID.
	PutRequest(r Request) error
	// DeleteRequest removes the request (no error when absent).
	DeleteRequest(id string) error
	// SetHead records the audit log's new chain head.
	SetHead(h Head) error
}
