package config

import (
	"fmt"
	"math"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

func (p *parser) catalogSection(t *tbl) CatalogSection {
	t = p.orEmpty(t, "catalog")
	defer t.finish()
	cat := p.catalog()
	var c CatalogSection
	c.Disable, _ = t.strs("disable")
	for i, id := range c.Disable {
		if _, ok := cat.service(id); !ok {
			p.valueErr(fmt.Sprintf("catalog.disable[%d]", i), "unknown catalog service %q", id)
		}
	}
	c.Enable, _ = t.strs("enable")
	for i, id := range c.Enable {
		if s, ok := cat.service(id); !ok {
			p.valueErr(fmt.Sprintf("catalog.enable[%d]", i), "unknown catalog service %q", id)
		} else if !s.Optional {
			p.valueErr(fmt.Sprintf("catalog.enable[%d]", i), "service %q is listed unless disabled: only optional services need enable", id)
		}
	}
	c.ExtraDomains = t.boolean("extra_domains", false)
	c.SharedInfrastructure, _ = t.strs("shared_infrastructure")
	for i, id := range c.SharedInfrastructure {
		if _, ok := cat.service(id); !ok && id != "*" {
			p.valueErr(fmt.Sprintf("catalog.shared_infrastructure[%d]", i), "unknown catalog service %q", id)
		}
	}
	c.CategoriesOff, _ = t.strs("categories_off")
	for i, name := range c.CategoriesOff {
		if !cat.hasCategory(name) {
			p.valueErr(fmt.Sprintf("catalog.categories_off[%d]", i), "unknown category %q (one of %s)", name, strings.Join(cat.Categories, ", "))
		}
	}
	c.CopyleftEntries = t.boolean("copyleft_entries", false)
	c.UpdateURL = t.str("update_url", "")
	if c.UpdateURL != "" {
		if u, err := url.Parse(c.UpdateURL); err != nil || u.Scheme != "https" || u.Host == "" {
			p.valueErr("catalog.update_url", "invalid URL %q (want https://...: updates are fetched over https only)", c.UpdateURL)
		}
	}
	c.UpdateKey = strings.TrimSpace(t.str("update_key", ""))
	if c.UpdateKey != "" {
		if _, err := ParseUpdateKey(c.UpdateKey); err != nil {
			p.valueErr("catalog.update_key", "%v", err)
		}
	}
	switch {
	case c.UpdateURL != "" && c.UpdateKey == "":
		p.keyErr("catalog.update_url", "needs catalog.update_key, the publisher's minisign public key (unsigned catalogs are never applied)")
	case c.UpdateURL == "" && c.UpdateKey != "":
		p.warn("catalog.update_key", "ignored: catalog.update_url is not set")
	}
	c.UpdateInterval = t.duration("update_interval", 6*time.Hour)
	if c.UpdateInterval < time.Minute {
		p.valueErr("catalog.update_interval", "must be at least 1m")
	}
	return c
}

func (p *parser) proxySection(t *tbl) ProxySection {
	t = p.orEmpty(t, "proxy")
	defer t.finish()
	var c ProxySection
	c.Listen = p.listen(t, "listen", []string{"127.0.0.1:3128"})
	var ok bool
	if c.AllowedClients, ok = p.prefixes(t, "allowed_clients"); !ok {
		c.AllowedClients = loopback()
	}
	for i, pf := range c.AllowedClients {
		if pf.Bits() == 0 {
			p.valueErr(fmt.Sprintf("proxy.allowed_clients[%d]", i), "%s would make an open proxy; list the institution's networks", pf)
		}
	}
	c.ConnectPorts = p.ports(t, "connect_ports", []uint16{443})
	c.Resolver = t.str("resolver", "")
	if c.Resolver != "" {
		if err := checkHostPort(c.Resolver); err != nil {
			p.valueErr("proxy.resolver", "%v", err)
		}
	}
	c.IPLiterals = t.enum("ip_literals", "sni", "allow", "sni", "deny")
	if c.IPLiterals == "allow" {
		p.warn("proxy.ip_literals", `"allow" lets tunnels to IP addresses through without a server name; "sni" (the default) decides them on the name they carry`)
	}
	c.Parent = t.str("parent", "")
	c.ParentURL = p.checkURL("proxy.parent", c.Parent, "http")
	c.ParentCredentialsFile = p.pathKey(t, "parent_credentials_file", "")
	if c.ParentCredentialsFile != "" && c.Parent == "" {
		p.valueErr("proxy.parent_credentials_file", "set without proxy.parent")
	}
	c.PortalURL = t.str("portal_url", "")
	p.checkURL("proxy.portal_url", c.PortalURL, "http", "https")
	c.TransparentHTTP = p.listen(t, "transparent_http", nil)
	c.TransparentHTTPS = p.listen(t, "transparent_https", nil)
	c.TransparentMode = t.enum("transparent_mode", "redirect", "redirect", "tproxy")
	c.TPROXY = c.TransparentMode == "tproxy"
	c.NoSNI = t.enum("no_sni", "deny", "allow", "deny")
	c.AllowNoSNI = c.NoSNI == "allow"
	if c.NoSNI == "allow" {
		p.warn("proxy.no_sni", `"allow" lets TLS tunnels without a server name through on every port; list non-TLS ports in proxy.opaque_ports instead`)
	}
	c.OpaquePorts = p.ports(t, "opaque_ports", nil)
	for i, port := range c.OpaquePorts {
		if !slices.Contains(c.ConnectPorts, port) {
			p.valueErr(fmt.Sprintf("proxy.opaque_ports[%d]", i), "port %d is not in proxy.connect_ports", port)
		}
	}
	c.DialTimeout = t.duration("dial_timeout", 10*time.Second)
	c.IdleTimeout = t.duration("idle_timeout", 5*time.Minute)
	c.MaxTunnelLifetime = t.duration("max_tunnel_lifetime", 12*time.Hour)
	c.HeaderTimeout = t.duration("header_timeout", 10*time.Second)
	c.MaxHeaderBytes = t.integer("max_header_bytes", 65536, 1024, 1<<24)
	c.MaxTunnelsPerClient = t.integer("max_tunnels_per_client", 256, 0, math.MaxInt32)
	if c.MaxTunnelsPerClient == 0 {
		c.MaxTunnelsPerClient = -1 // the file's 0 is no cap
	}
	domains, _ := t.strs("direct_domains")
	for i, d := range domains {
		n, err := normalizeDomain(d)
		if err != nil {
			p.valueErr(fmt.Sprintf("proxy.direct_domains[%d]", i), "%v", err)
			continue
		}
		c.DirectDomains = append(c.DirectDomains, n)
	}
	c.DirectNetworks, _ = p.prefixes(t, "direct_networks")
	c.DenyDestinations, _ = p.prefixes(t, "deny_destinations")
	c.AllowDestinations, _ = p.prefixes(t, "allow_destinations")
	for i, pf := range c.AllowDestinations {
		p.warn(fmt.Sprintf("proxy.allow_destinations[%d]", i), "%s is exempt from the destinations the proxy always refuses (loopback, link-local...): workstations may reach it through the proxy", pf)
	}

	tt := p.orEmpty(t.sub("tls"), "proxy.tls")
	c.TLS.CACert = p.pathKey(tt, "ca_cert", "")
	c.TLS.CAKey = p.pathKey(tt, "ca_key", "")
	if (c.TLS.CACert == "") != (c.TLS.CAKey == "") {
		msg := "ca_key is required with ca_cert"
		if c.TLS.CACert == "" {
			msg = "ca_cert is required with ca_key"
		}
		p.keyErr("proxy.tls", "%s", msg)
	}
	c.TLS.LeafValidity = tt.duration("leaf_validity", 24*time.Hour)
	if c.TLS.LeafValidity < time.Hour && tt.has("leaf_validity") {
		p.valueErr("proxy.tls.leaf_validity", "must be at least 1h")
	}
	c.TLS.CertCacheSize = tt.integer("cert_cache_size", 1024, 1, math.MaxInt32)
	tt.finish()
	c.Auth = p.proxyAuthSection(t.sub("auth"), c.AllowedClients)
	c.ProxyProtocolFrom = p.proxyProtocolFrom(t, len(c.TransparentHTTP)+len(c.TransparentHTTPS) > 0)
	return c
}

func (p *parser) dnsSection(t *tbl) DNSSection {
	t = p.orEmpty(t, "dns")
	defer t.finish()
	var c DNSSection
	c.Listen = p.listen(t, "listen", []string{"127.0.0.1:5353"})
	c.Upstreams = p.upstreams(t, "upstreams", []string{"9.9.9.9:53", "149.112.112.112:53"})
	if len(c.Upstreams) == 0 && t.has("upstreams") {
		p.valueErr("dns.upstreams", "at least one upstream is required")
	}
	c.Timeout = t.duration("timeout", time.Second)
	if c.Timeout == 0 {
		p.valueErr("dns.timeout", "must be more than 0s")
		c.Timeout = time.Second
	}
	c.BlockResponse = t.enum("block_response", "nxdomain", "nxdomain", "refused", "null", "sinkhole")
	sinks, _ := t.strs("sinkhole")
	for i, s := range sinks {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			p.valueErr(fmt.Sprintf("dns.sinkhole[%d]", i), "invalid IP address %q", s)
			continue
		}
		c.Sinkhole = append(c.Sinkhole, a.Unmap())
	}
	if c.BlockResponse == "sinkhole" && len(sinks) == 0 {
		p.valueErr("dns.block_response", `"sinkhole" needs dns.sinkhole, the addresses of the block-page server`)
	}
	c.KeepECH = !t.boolean("strip_ech", true)
	c.CacheSize = t.integer("cache_size", 100000, 0, math.MaxInt32)
	if c.CacheSize == 0 {
		c.CacheSize = -1 // the file's 0 is no cache
	}
	c.MinTTL = t.duration("min_ttl", 0)
	c.MaxTTL = t.duration("max_ttl", 24*time.Hour)
	if c.MaxTTL < c.MinTTL {
		p.valueErr("dns.max_ttl", "is less than dns.min_ttl")
	}
	c.BlockedTTL = t.duration("blocked_ttl", time.Minute)
	c.NegativeTTL = t.duration("negative_ttl", time.Hour)
	c.DisableStale = !t.boolean("serve_stale", true)
	c.StaleTTL = t.duration("stale_ttl", 30*time.Second)
	c.StaleMaxAge = t.duration("stale_max_age", 24*time.Hour)
	rate := t.integer("rate_limit", 200, 0, math.MaxInt32)
	c.RateLimit = float64(rate)
	c.NoRateLimit = rate == 0
	c.RateBurst = t.integer("rate_burst", max(400, rate), 0, math.MaxInt32)
	if rate > 0 && c.RateBurst < rate {
		p.valueErr("dns.rate_burst", "must be at least dns.rate_limit (%d)", rate)
	}
	c.RateLimitExempt, _ = p.prefixes(t, "rate_limit_exempt")
	c.UDPSockets = t.integer("udp_sockets", 0, 0, 1024)
	var given bool
	c.AllowedClients, given = p.prefixes(t, "allowed_clients")
	if !given {
		c.AllowedClients = loopback()
		if addr, beyond := beyondLoopback(c.Listen); beyond {
			p.keyErr("dns.listen", "%s reaches beyond loopback: set dns.allowed_clients to the institution's networks (Balise is never an open resolver)", addr)
		}
	}
	for i, pf := range c.AllowedClients {
		if pf.Bits() == 0 {
			p.valueErr(fmt.Sprintf("dns.allowed_clients[%d]", i), "%s would make an open resolver; list the institution's networks", pf)
		}
	}
	c.MaxTCPPerClient = t.integer("max_tcp_per_client", 16, 1, math.MaxInt32)
	c.TCPIdleTimeout = t.duration("tcp_idle_timeout", 10*time.Second)
	if c.TCPIdleTimeout <= 0 {
		p.valueErr("dns.tcp_idle_timeout", "must be more than 0s")
		c.TCPIdleTimeout = 10 * time.Second
	}
	c.ForwardAny = !t.boolean("refuse_any", true)
	zones := map[string]string{}
	for _, ft := range t.tables("forward") {
		var f Forward
		z := ft.str("zone", "")
		if z == "" {
			p.keyErr(ft.path, "zone is required")
		} else if n, err := normalizeDomain(z); err != nil {
			p.valueErr(ft.key("zone"), "%v", err)
		} else if prev, dup := zones[n]; dup {
			p.valueErr(ft.key("zone"), "zone %q is already forwarded by %s", n, prev)
		} else {
			f.Zone = n
			zones[n] = ft.path
		}
		f.Upstreams = p.upstreams(ft, "upstreams", nil)
		if len(f.Upstreams) == 0 {
			p.keyErr(ft.path, "upstreams is required")
		}
		ft.finish()
		c.Forward = append(c.Forward, f)
	}
	return c
}

// loopback is the default of proxy.allowed_clients and dns.allowed_clients,
// and of the front-ends' AllowedClients: 127.0.0.0/8 and ::1/128.
func loopback() []netip.Prefix {
	return []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
}

// ports reads an array of port numbers (def when the key is absent).
func (p *parser) ports(t *tbl, k string, def []uint16) []uint16 {
	v, ok := t.get(k)
	if !ok {
		return def
	}
	var out []uint16
	arr, isArr := v.([]any)
	if !isArr {
		t.typeErr(t.key(k), "an array of ports", v)
	}
	for i, e := range arr {
		n, isInt := e.(int64)
		if !isInt || n < 1 || n > 65535 {
			p.valueErr(fmt.Sprintf("%s[%d]", t.key(k), i), "must be a port number (1 to 65535)")
			continue
		}
		out = append(out, uint16(n))
	}
	return out
}

// beyondLoopback returns the first listen address that is not a
// loopback address (a wildcard, an interface address or a host name).
func beyondLoopback(listen []string) (string, bool) {
	for _, l := range listen {
		host, _, err := net.SplitHostPort(l)
		if err != nil {
			continue // reported by listen
		}
		if host == "localhost" {
			continue
		}
		a, err := netip.ParseAddr(host)
		if err != nil || !a.Unmap().IsLoopback() {
			return l, true
		}
	}
	return "", false
}

// upstreams reads resolver addresses: "host:port" with an IP host (port
// 53 when left out), or "tls://host[:port][#servername]" (port 853).
// They come back in canonical form.
func (p *parser) upstreams(t *tbl, k string, def []string) []string {
	ss, ok := t.strs(k)
	if !ok {
		return def
	}
	out := make([]string, 0, len(ss))
	for i, s := range ss {
		u, err := canonicalUpstream(s)
		if err != nil {
			p.valueErr(fmt.Sprintf("%s[%d]", t.key(k), i), "%v", err)
			continue
		}
		out = append(out, u)
	}
	return out
}

func canonicalUpstream(s string) (string, error) {
	bad := fmt.Errorf("unknown upstream syntax %q (want \"IP:53\" or \"tls://host:853#servername\")", s)
	if rest, ok := strings.CutPrefix(s, "tls://"); ok {
		hostport, name, _ := strings.Cut(rest, "#")
		host, port, err := net.SplitHostPort(hostport)
		if err != nil {
			host, port = strings.Trim(hostport, "[]"), "853"
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || host == "" {
			return "", bad
		}
		if _, err := netip.ParseAddr(host); err != nil {
			if _, err := normalizeDomain(host); err != nil {
				return "", bad
			}
			if name == "" {
				name = host
			}
		}
		if name != "" {
			if _, err := normalizeDomain(name); err != nil {
				return "", bad
			}
		}
		out := "tls://" + net.JoinHostPort(host, port)
		if name != "" {
			out += "#" + name
		}
		return out, nil
	}
	if strings.Contains(s, "://") {
		return "", bad
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		host, port = strings.Trim(s, "[]"), "53"
	}
	a, err := netip.ParseAddr(host)
	if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 1 || n > 65535 {
		return "", bad
	}
	return net.JoinHostPort(a.Unmap().String(), port), nil
}

func (p *parser) exceptionsSection(t *tbl) *ExceptionsSection {
	defer t.finish()
	c := &ExceptionsSection{}
	if store := t.str("store", "balise-data/balise.db"); IsPostgresURL(store) {
		c.Store = store
		p.checkStoreURL(store)
	} else {
		c.Store = p.resolve(store)
	}
	c.StorePasswordFile = p.pathKey(t, "store_password_file", "")
	if c.StorePasswordFile != "" && !c.Postgres() {
		p.warn("exceptions.store_password_file", "ignored: exceptions.store is a file, not a postgres:// URL")
	}
	c.AuditLog = p.pathKey(t, "audit_log", "balise-data/exceptions.jsonl")
	c.StateDir = p.pathKey(t, "state_dir", "balise-data")
	ds, ok := t.strs("durations")
	if !ok {
		ds = []string{"1h", "4h", "1d", "7d", "30d"}
	}
	for i, s := range ds {
		d, err := parseDuration(s)
		if err == nil && d < time.Minute {
			err = fmt.Errorf("duration %q is shorter than 1m", s)
		}
		if err != nil {
			p.valueErr(fmt.Sprintf("exceptions.durations[%d]", i), "%v", err)
			continue
		}
		c.Durations = append(c.Durations, d)
	}
	if ok && len(ds) == 0 {
		p.valueErr("exceptions.durations", "at least one duration is required")
	}
	c.MaxPendingPerClient = t.integer("max_pending_per_client", 3, 1, math.MaxInt32)
	c.MaxPerDayPerClient = t.integer("max_per_day_per_client", 10, 1, math.MaxInt32)
	c.GrantPoll = t.duration("grant_poll", time.Second)
	if c.GrantPoll < 100*time.Millisecond {
		p.valueErr("exceptions.grant_poll", "must be at least 100ms")
		c.GrantPoll = time.Second
	}
	c.NotifyURL = t.str("notify_url", "")
	p.checkURL("exceptions.notify_url", c.NotifyURL, "http", "https")
	c.NotifyFormat = t.enum("notify_format", "json", "json", "slack", "teams")
	c.NotifyTimeout = t.duration("notify_timeout", 5*time.Second)
	c.PendingAlertAfter = t.duration("pending_alert_after", 24*time.Hour)
	c.Retention = t.duration("retention", 365*24*time.Hour)
	return c
}
