// Package dnsfilter is Balise's DNS front-end: a caching, forwarding
// resolver that every workstation uses and that enforces the policy for
// listed services on every query.
//
// A Filter listens on UDP and TCP, answers from its cache or forwards to an
// ordered pool of upstream resolvers (plain DNS with TCP retry on
// truncation, or DNS over TLS), and applies the decision of
// (*policy.Policy).Decide, loaded from an atomic pointer for every query so
// that a reload takes effect at once without restarting anything. The
// package holds no policy of its own; its only protocol-level behaviours
// are:
//
//   - _dns.resolver.arpa (DDR, RFC 9462) is answered NODATA, so that
//     clients do not discover and upgrade to an encrypted resolver that
//     bypasses Balise;
//   - ECH parameters are removed from HTTPS and SVCB answers unless
//     Options.KeepECH is set, so that TLS keeps a readable SNI for the proxy;
//   - a CNAME chain is checked link by link (Query.CNAMETarget), so that an
//     allowed name cloaking a blocked service is blocked.
//
// The filter is never an open resolver: a query from outside
// Access.AllowedClients (loopback by default) gets REFUSED before the
// cache or an upstream is touched. ANY queries get the RFC 8482 answer.
// DNS over TCP is bounded per client, by an idle timeout and in total,
// with the longest-idle connection of the busiest client giving way to a
// newcomer when every slot is taken (see tcp.go). These access settings
// change while serving (SetAccess); refusals are counted in
// balise_dns_refusals_total{reason} and logged at a bounded rate.
//
// The cache stores upstream answers per (name, type, class, DO and CD
// bits), never per client: the decision is applied after the cache, for
// each client, so an answer cannot leak from one group to another. Cached
// answers are kept as packed wire messages and served by patching the
// message ID, the question's letter case (0x20) and the TTLs, which keeps
// the hot path free of message parsing. Answers about listed names never
// carry a TTL beyond the decision's Until, so that a break that starts or
// ends reaches workstations within seconds.
//
// An entry in use is refreshed in the background during the last tenth of
// its lifetime, so that popular names do not expire. When every upstream
// fails, expired answers are served for up to Options.StaleMaxAge with a
// short TTL and the Extended DNS Error "Stale Answer" (RFC 8767); a client
// waits at most Options.ClientTimeout (1.8 s) for an answer, stale or
// SERVFAIL.
//
// On Linux each UDP address is served by several SO_REUSEPORT sockets (one
// per CPU by default) whose goroutines read and write datagrams in batches
// (recvmmsg, sendmmsg); answers that need an upstream are completed by a
// goroutine of their own, so a slow upstream never holds up cached
// answers.
package dnsfilter
