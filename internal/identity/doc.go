// Package identity keeps what Balise knows about who is asking, apart
// from the directory: which user an address is bound to, and the keyed
// pseudonyms that stand for users in decision logs.
//
// Bindings ties an address to the user last authenticated from it, for a
// time-to-live; while exactly one user holds an address (fewer than
// SharedAfter distinct users within the time-to-live), the DNS filter,
// which sees no login, decides for that user. The read is lock-striped,
// cheap and allocation-free; memory is bounded. Bindings are never
// logged. Several replicas share bindings through a common store: OnBind
// feeds an Outbox (bounded, never blocking) that the store drains, and
// the store gives the other replicas' bindings to Apply.
//
// Pseudonyms turns a user name into a short stable token with
// HMAC-SHA256 and a secret key kept in a file (LoadOrCreateKey creates
// it, 0600, on first start). Only someone holding the key and a list of
// candidate names can turn a token back into a name (Match), which
// `balise identity reveal` does and records in the audit chain.
//
// The package imports only the standard library, reads no clock (callers
// pass the time) and keeps no global state.
package identity
