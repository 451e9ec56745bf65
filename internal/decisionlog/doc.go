// Package decisionlog writes Balise's one structured line per decision about
// a listed service, deduplicated per (client, service, verdict) per window,
// so that the log stays proportionate: an employee who reloads a blocked
// page fifty times in a minute produces one line and a repeat count, and
// unlisted browsing is never logged at all (the caller never passes it).
//
// The line's keys are fixed and documented in the README: msg "decision",
// front, client, user, host, service, category, verdict, reason, rule,
// grant, until, would, would_rule, repeats. would is the action ("allow"
// or "block") of the first rule in report mode that matched before the
// rule that decided, would_rule its name; both are "" when none did.
//
// RateBound bounds the other kind of line the front-ends write about a
// connection: refusals (security events: a client outside the allowed
// networks, an unreadable ClientHello, a forbidden destination), at most
// so many a minute, with the count of those left out.
package decisionlog
