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
//	       ├─ Decide(host) blocks ──▶ 403 block page (blockpage.go)
//	       └─ forward.go: bodyless GET/HEAD over the origin pool,
//	            the rest through http.Transport, upgrades through goproxy;
//	            all of them dial through the guarded dialer
//
// Every open tunnel and kept-alive connection is decided again when the
// policy in force changes (Redecide: a reload, a list update, a grant
// approved, revoked or denied) and at its decision's until, and closed
// when it is now blocked. Reconfigure applies a reloaded [proxy] section
// to the next request and connection.
//
// goproxy carries protocol upgrades (WebSocket) and transparent HTTP;
// Balise forwards explicit plain HTTP itself (forward.go) and hijacks
// CONNECT itself, so that the TLS gate, the tunnel limits and the splice
// relay see the raw connection.
//
// Requests addressed to the proxy itself are its portal: GET /proxy.pac
// and /wpad.dat, and GET / showing the caller what it may reach now.
package proxy
