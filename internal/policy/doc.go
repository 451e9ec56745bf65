// Package policy is Balise's decision engine: a compiled, immutable policy
// that answers one question, allocation-free and safe for concurrent use —
// may this client, at this instant, reach this host?
//
// A Policy is built once from a Spec (New) and never changes; a reload
// compiles a new one and the front-ends swap an atomic pointer. Exception
// grants change every few seconds, so WithGrants returns a new Policy that
// shares the compiled domain matcher, groups, schedules and rules.
//
// Host names are normalized by NormalizeHost (Decide does it itself, into
// a stack buffer). Listed names are kept as fingerprints of their labels
// in an ordered open-addressing table, about 11 to 12 bytes per name; see
// matcher.go for the layout and the false-positive rate (7.7e-13 per
// lookup of an unlisted name). Windows are compiled into wall-clock
// intervals of the week and read through a precomputed table of the
// zone's UTC offsets, so Decide reads no clock and takes no lock.
//
// The package imports the standard library and golang.org/x/net/idna (for
// internationalized names).
package policy
