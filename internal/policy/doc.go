// Package policy is Balise's decision engine: a compiled, immutable policy
// that answers one question, allocation-free and safe for concurrent use —
// may this client, at this instant, reach this host?
//
// A Policy is built once from a Spec (New) and never changes; a reload
// compiles a new one and the front-ends swap an atomic pointer. Exception
// grants change every few seconds, so WithGrants returns a new Policy that
// shares the compiled domain matcher, groups, schedules and rules.
//
// The package imports only the standard library.
package policy
