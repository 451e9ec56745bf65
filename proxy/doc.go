// Package proxy is Balise's HTTP(S) proxy front-end, built on goproxy.
//
// Workstations reach the web through it, configured by PAC/WPAD or group
// policy. Every request and CONNECT is decided by the policy engine
// (policy.Policy.Decide) on the host of the absolute-form URL or the
// CONNECT authority; the proxy holds no policy of its own. Unlisted hosts
// pass untouched and unlogged.
//
// Blocked plain-HTTP requests get the block page (403, French first,
// English second). Blocked HTTPS gets the block page too when the
// institution's CA is configured — only blocked connections are ever
// terminated, with short-lived ECDSA leaves — and otherwise a 403 with an
// RFC 9209 Proxy-Status header. Allowed tunnels are checked once more on
// the TLS ClientHello's server name, then spliced without a user-space
// buffer; they close when idle, when too old, and when their decision's
// until passes without being renewed (a break ends, a grant expires).
//
// Requests addressed to the proxy itself are its portal: GET /proxy.pac
// and /wpad.dat, and GET / showing the caller what it may reach now.
package proxy
