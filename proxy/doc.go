// Package proxy is Balise's HTTP(S) proxy front-end, built on goproxy.
//
// Workstations reach the web through it, configured by PAC/WPAD or group
// policy, or redirected to its transparent listeners by the gateway.
// Every request and tunnel is decided by the policy engine
// (policy.Policy.Decide) on the host of the absolute-form URL, the
// CONNECT authority, the Host header or the TLS server name; the proxy
// holds no policy of its own. Unlisted hosts pass untouched and unlogged.
//
// The path of a connection:
//
//	accept (retryListener: temporary errors back off, a dead listener
//	  │     turns readiness red and leaves the others running)
//	  ├─ client outside AllowedClients ─────────────▶ 403, refusal counted
//	  ├─ CONNECT host:port (explicit) / redirected 443 (transparent)
//	  │    ├─ port not allowed, Balise itself ──────▶ 403 / refused
//	  │    ├─ Decide(host) blocks ──▶ block page over TLS (CA: only that
//	  │    │                          name) or 403 / access_denied
//	  │    ├─ dial through the guarded dialer (destinations.go) ──▶ 403
//	  │    │    destination_ip_prohibited when every address is refused
//	  │    └─ TLS gate (clienthello.go): the first flight must be a
//	  │         ClientHello read as servers read it (opaque ports aside);
//	  │         unreadable, silent, nameless, or a bare IP literal ──▶
//	  │         closed, counted, logged; its server name is decided too
//	  │         ──▶ tunnel (tunnel.go: splice, idle, lifetime, until)
//	  └─ plain HTTP (explicit absolute-form / transparent Host header)
//	       ├─ Via carries Balise's pseudonym ───────────▶ 508 loop
//	       ├─ Decide(host) blocks ──▶ 403 block page (blockpage.go)
//	       └─ forward.go, the one forwarder (explicit and transparent,
//	            bodies, 100-continue, trailers, upgrades):
//	            ├─ request head rewritten: hop-by-hop fields out, Via in,
//	            │    origin form (absolute form to the parent proxy)
//	            ├─ origin connection: an idle one from the pool
//	            │    (origins.go: per-host and global caps, idle timeout
//	            │    swept by a timer) or dialled through the guarded
//	            │    dialer (destinations.go) ──▶ 403 / 502
//	            ├─ answer: hop-by-hop fields out, Via in, body streamed,
//	            │    trailers; cut short ──▶ client answer aborted
//	            ├─ 101 to an upgrade (WebSocket) ──▶ byte relay both ways
//	            └─ exchange ended cleanly ──▶ connection back to the pool
//
// Every open tunnel and kept-alive connection is decided again when the
// policy in force changes (Redecide: a reload, a list update, a grant
// approved, revoked or denied) and at its decision's until, and closed
// when it is now blocked. Reconfigure applies a reloaded [proxy] section
// to the next request and connection.
//
// What each piece does. net/http's server reads the client's requests
// on every HTTP listener (header timeout and size, keep-alive, the
// connection tracking that re-decisions use). goproxy routes the
// explicit listener's CONNECT requests to Balise's hijack (connect.go),
// which keeps the raw connection so that the TLS gate, the tunnel
// limits and the splice relay see it. Plain HTTP does not go through
// goproxy's handler, which forwards through http.Transport without
// Balise's RFC 9110 handling: Balise's forwarder (forward.go) carries it
// over the origin connections it keeps itself (origins.go), one
// request at a time on the client's own goroutine (a second one only
// for a request body, and for the other direction of an upgrade).
//
// Requests addressed to the proxy itself are its portal: GET /proxy.pac
// and /wpad.dat, and GET / showing the caller what it may reach now.
package proxy
