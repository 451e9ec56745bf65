// Package exceptions is Balise's register of exception requests: the
// requests employees send from the block page, the officer's decisions, the
// grants those decisions create, and a hash-chained audit log that proves the
// register's history was not edited.
//
// # Pieces
//
//   - Store is the storage interface (one write transaction at a time across
//     every process that opens the store). OpenSQLite implements it on an
//     embedded SQLite database in WAL mode with immediate transactions and
//     synchronous commits, so `balise serve` and `balise exceptions` share one
//     file safely.
//   - OpenPostgres implements it on a PostgreSQL database shared by several
//     Balise nodes: Updates are serialized by an advisory lock, the audit
//     chain is kept in the database (one chain for every node), every change
//     carries a commit-ordered change version and rings a LISTEN/NOTIFY
//     doorbell, and one node at a time (the holder of a session advisory
//     lock) writes expiry and retention events. Connection losses surface as
//     ErrUnavailable.
//   - Register is the register's logic: Submit, Approve, Deny, Revoke,
//     Refresh (grant expiry), Purge, Export, Verify and MigrateTo. Every
//     change appends one event line to the audit log inside the same store
//     transaction. Follow keeps a node's grants current (the doorbell, and a
//     periodic read of what changed since the last version seen); the grants
//     last read stay in force while the store is unreachable (Grants).
//   - Web renders the request form shown on block pages and answers the
//     reserved path /.balise/ where the form posts.
//
// # Audit log
//
// The audit log is a file of JSON lines, one per event (request_received,
// approved, denied, revoked, expired, purged, exported). Each line carries
// "seq" (1, 2, 3, …), "prev" (the hex SHA-256 of the previous line's bytes,
// 64 zeros for the first line) and, last, "hash" (the hex SHA-256 of the
// line's own bytes up to the hash field, closed with "}"). Editing a byte,
// deleting, inserting or reordering lines breaks the chain at the first line
// touched; Verify names that line (1-based).
//
// With PostgreSQL the lines are rows of audit_events (seq, prev, hash and
// the line itself, byte for byte as in the file) and the head is the row
// of audit_head, both written in the change's transaction: there is no
// file, no recovery to do, and Verify reads the rows (Line is then the
// event's seq). The rest of this section is about the file.
//
// Appending is serialized across processes: the chain head (seq, hash, the
// offset and size of the last line) is kept in the store, and an append runs
// inside the store's write transaction, under an exclusive flock on the log
// file. The line is written and fsynced before the transaction commits, and
// the transaction records the new head. A request is therefore durable in
// both the store and the log before the employee is told it was received.
//
// Recovery. A process may die between writing the line and committing. The
// store is then unchanged (the transaction rolled back) and the file holds
// bytes past the recorded head: either a torn partial line (no newline) or
// one complete line whose seq is head+1 and whose prev is the head's hash.
// That line describes a change that never happened (its request was never
// stored and nobody was told it was received; its id will be reused), so it
// is not adopted: the next writer, holding the same locks, moves those bytes
// to "<audit_log>.orphaned" and truncates the log back to the head. Anything
// else past the head, or a log shorter than the head, or a last line whose
// hash differs from the head's, is tampering or loss: writes are refused
// with an error until the officer investigates (Verify names the line).
//
// Personal data typed in the form (name, contact, justification) stays in
// the store; the log carries its SHA-256 digest ("digest"), so that Verify
// also proves the stored request was not edited, and Purge can remove the
// personal data at the end of the retention period while the log keeps the
// fact that a request existed.
package exceptions
