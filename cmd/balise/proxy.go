package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/balise-net/balise/config"
	"github.com/balise-net/balise/proxy"
)

// startProxy starts the explicit proxy on the [proxy] listen addresses
// and the transparent listeners (transparent_http, transparent_https),
// reading the policy from rt.policy, and stops them when ctx ends. It
// returns an error when a listener cannot be bound or the [proxy] section
// cannot be used (CA files, parent credentials).
//
// Listeners are independent: one that stops for good (an accept error
// that is not temporary) is logged by the proxy and turns /readyz red
// ("proxy: listener ADDR stopped: ..."); the others go on.
//
// Whenever the policy in force changes (a reload, a list update, a grant
// approved, revoked or ended) the proxy re-decides its open tunnels and
// kept-alive connections. A reload applies the rest of [proxy] too (see
// proxyRestartKeys for what waits for a restart); a [proxy.tls] CA that
// fails to load makes the reload fail.
func startProxy(ctx context.Context, rt *runtime) error {
	cfg := rt.cfg
	pc := cfg.Proxy
	rt.onPrepare(func(nc *config.Config) (func(), error) {
		if keys := proxyRestartKeys(cfg, nc); len(keys) > 0 {
			rt.log.Warn("[proxy] settings that take effect at the next restart changed; the rest of [proxy] is in force now",
				"keys", strings.Join(keys, ", "))
		}
		if len(cfg.Proxy.ProxyProtocolFrom) == 0 && len(nc.Proxy.ProxyProtocolFrom) > 0 {
			// Listeners started without it are not wrapped (no cost per
			// connection); later changes to a set list apply at once.
			rt.log.Warn("proxy.proxy_protocol_from set: the PROXY protocol takes effect at the next restart", "keys", "proxy.proxy_protocol_from")
		}
		return nil, nil
	})
	if len(pc.Listen)+len(pc.TransparentHTTP)+len(pc.TransparentHTTPS) == 0 {
		return nil
	}
	opts, err := proxyOptions(cfg, rt)
	if err != nil {
		return err
	}
	p, err := proxy.New(opts)
	if err != nil {
		return err
	}
	type bound struct {
		ln    net.Listener
		start func(context.Context, net.Listener) <-chan error
	}
	var lns []bound
	fail := func(err error) error {
		for _, b := range lns {
			b.ln.Close()
		}
		return fmt.Errorf("proxy: %w", err)
	}
	for _, addr := range pc.Listen {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fail(err)
		}
		lns = append(lns, bound{ln, p.Start})
	}
	for _, addr := range pc.TransparentHTTP {
		ln, err := p.ListenTransparent(ctx, addr)
		if err != nil {
			return fail(err)
		}
		lns = append(lns, bound{ln, p.StartTransparentHTTP})
	}
	for _, addr := range pc.TransparentHTTPS {
		ln, err := p.ListenTransparent(ctx, addr)
		if err != nil {
			return fail(err)
		}
		lns = append(lns, bound{ln, p.StartTransparentHTTPS})
	}
	var (
		mu      sync.Mutex
		stopped []string // "ADDR stopped: error" of listeners that failed
	)
	rt.addReady("proxy", func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(stopped) > 0 {
			return errors.New("listener " + strings.Join(stopped, "; listener "))
		}
		return nil
	})
	for _, b := range lns {
		done := b.start(ctx, b.ln)
		addr := b.ln.Addr().String()
		rt.wg.Go(func() {
			if err := <-done; err != nil {
				mu.Lock()
				stopped = append(stopped, addr+" stopped: "+err.Error())
				mu.Unlock()
			}
		})
	}
	changed := rt.watchPolicy()
	rt.wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-changed:
				p.SetServiceHosts(rt.config().ServiceHosts())
				p.Redecide()
			}
		}
	})
	rt.onPrepare(func(nc *config.Config) (func(), error) {
		o, err := proxyOptions(nc, rt)
		if err != nil {
			return nil, err
		}
		if (o.CA == nil) != (opts.CA == nil) {
			rt.log.Warn("[proxy.tls] added or removed: takes effect at the next restart; the CA in force is kept")
		}
		return func() {
			if err := p.Reconfigure(o); err != nil {
				rt.log.Error("[proxy] not applied; the running proxy settings are kept", "error", err)
			}
		}, nil
	})
	// The service hosts come from the compiled configuration in force
	// (config.ServiceHosts reads nothing): a reload, or a list update that
	// recompiled it, changes them.
	rt.onReload(func(c *config.Config) {
		p.SetServiceHosts(c.ServiceHosts())
	})
	return nil
}

// proxyRestartKeys names, sorted, the [proxy] keys that differ between
// the configuration the proxy started with and nc and that take effect
// only at the next restart: the listening addresses, the transparent
// mode, and what the dialer and the HTTP servers were built with.
func proxyRestartKeys(old, nc *config.Config) []string {
	return changedKeys(old.Proxy, nc.Proxy, proxyRestartFields())
}

// proxyRestartFields maps each [proxy] key that applies only at start
// to its field of config.ProxySection.
func proxyRestartFields() map[string]string {
	return map[string]string{
		"proxy.listen":                  "Listen",
		"proxy.transparent_http":        "TransparentHTTP",
		"proxy.transparent_https":       "TransparentHTTPS",
		"proxy.transparent_mode":        "TransparentMode",
		"proxy.resolver":                "Resolver",
		"proxy.parent":                  "Parent",
		"proxy.parent_credentials_file": "ParentCredentialsFile",
		"proxy.dial_timeout":            "DialTimeout",
		"proxy.idle_timeout":            "IdleTimeout",
		"proxy.header_timeout":          "HeaderTimeout",
		"proxy.max_header_bytes":        "MaxHeaderBytes",
		// Turning authentication on or off, or another service
		// principal, waits for a restart.
		"proxy.auth.mode":              "Auth.Mode",
		"proxy.auth.service_principal": "Auth.ServicePrincipal",
	}
}

// proxyReloadFields maps each [proxy] key a reload applies at once
// (proxy.Reconfigure, or the CA reload for [proxy.tls]) to its field of
// config.ProxySection. With proxyRestartFields and proxyDerivedFields,
// it covers every field (a test checks it). proxy.proxy_protocol_from is
// here: a changed or emptied list applies at once; only turning it on
// from empty waits for the next restart (startProxy warns).
func proxyReloadFields() map[string]string {
	return map[string]string{
		"proxy.allowed_clients":        "AllowedClients",
		"proxy.proxy_protocol_from":    "ProxyProtocolFrom",
		"proxy.connect_ports":          "ConnectPorts",
		"proxy.ip_literals":            "IPLiterals",
		"proxy.portal_url":             "PortalURL",
		"proxy.no_sni":                 "NoSNI",
		"proxy.opaque_ports":           "OpaquePorts",
		"proxy.max_tunnel_lifetime":    "MaxTunnelLifetime",
		"proxy.max_tunnels_per_client": "MaxTunnelsPerClient",
		"proxy.direct_domains":         "DirectDomains",
		"proxy.direct_networks":        "DirectNetworks",
		"proxy.deny_destinations":      "DenyDestinations",
		"proxy.allow_destinations":     "AllowDestinations",
		"proxy.tls":                    "TLS",
		// Clients and challenge apply at once; the keytab is re-read.
		"proxy.auth.clients":   "Auth.Clients",
		"proxy.auth.challenge": "Auth.Challenge",
		"proxy.auth.keytab":    "Auth.Keytab",
	}
}

// proxyDerivedFields are the config.ProxySection fields computed from
// another key (ParentURL from parent, TPROXY from transparent_mode,
// AllowNoSNI from no_sni), which that key's entry covers.
func proxyDerivedFields() []string { return []string{"ParentURL", "TPROXY", "AllowNoSNI"} }

// proxyOptions copies the configuration onto proxy.Options: config holds
// every value as proxy.Options wants it (defaults, parsed ports and URLs,
// 0 = no cap already mapped), so nothing is converted here but
// proxy.ip_literals, a name mapped to its constant. The only file read is
// the [proxy.tls] CA.
func proxyOptions(cfg *config.Config, rt *runtime) (proxy.Options, error) {
	pc := cfg.Proxy
	o := proxy.Options{
		Policy:                &rt.policy,
		Logger:                rt.log,
		Registerer:            rt.reg,
		Decisions:             rt.decisions,
		Clock:                 rt.now,
		AllowedClients:        pc.AllowedClients,
		ProxyProtocolFrom:     pc.ProxyProtocolFrom,
		ConnectPorts:          pc.ConnectPorts,
		OpaquePorts:           pc.OpaquePorts,
		Resolver:              pc.Resolver,
		DialTimeout:           pc.DialTimeout,
		Parent:                pc.ParentURL,
		ParentCredentialsFile: pc.ParentCredentialsFile,
		IdleTimeout:           pc.IdleTimeout,
		MaxTunnelLifetime:     pc.MaxTunnelLifetime,
		HeaderTimeout:         pc.HeaderTimeout,
		MaxHeaderBytes:        pc.MaxHeaderBytes,
		MaxTunnelsPerClient:   pc.MaxTunnelsPerClient,
		PortalURL:             pc.PortalURL,
		DirectDomains:         pc.DirectDomains,
		DirectNetworks:        pc.DirectNetworks,
		LeafValidity:          pc.TLS.LeafValidity,
		CertCacheSize:         pc.TLS.CertCacheSize,
		Institution:           cfg.Institution,
		BlockMessage:          cfg.BlockMessage,
		BlockMessageEN:        cfg.BlockMessageEN,
		ServiceHosts:          cfg.ServiceHosts(),
		TPROXY:                pc.TPROXY,
		AllowNoSNI:            pc.AllowNoSNI,
		DenyDestinations:      pc.DenyDestinations,
		AllowDestinations:     pc.AllowDestinations,
		OwnListeners:          rt.ownListeners(),
	}
	switch pc.IPLiterals {
	case "allow":
		o.IPLiterals = proxy.IPLiteralsAllow
	case "deny":
		o.IPLiterals = proxy.IPLiteralsDeny
	}
	if pc.TLS.CACert != "" || pc.TLS.CAKey != "" {
		ca, err := proxy.LoadCA(pc.TLS.CACert, pc.TLS.CAKey)
		if err != nil {
			return o, fmt.Errorf("proxy: [proxy.tls]: %w", err)
		}
		o.CA = ca
	}
	if ex, ok := rt.exceptions.(proxy.Exceptions); ok && ex != nil {
		o.Exceptions = ex
	}
	if rt.identity != nil && pc.Auth.Mode == "negotiate" {
		o.Auth = rt.identity
		o.AuthClients = pc.Auth.Clients
		o.AuthAlways = pc.Auth.Challenge == "always"
	}
	return o, nil
}

// addListeners records addresses Balise listens on (DNS, metrics...), so
// that the proxy, started after them, never connects to them.
func (rt *runtime) addListeners(addrs ...net.Addr) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	for _, a := range addrs {
		var ip net.IP
		var port int
		switch v := a.(type) {
		case *net.TCPAddr:
			ip, port = v.IP, v.Port
		case *net.UDPAddr:
			ip, port = v.IP, v.Port
		default:
			continue
		}
		if x, ok := netip.AddrFromSlice(ip); ok && port > 0 && port < 65536 {
			rt.listeners = append(rt.listeners, netip.AddrPortFrom(x.Unmap(), uint16(port)))
		}
	}
}

// ownListeners returns the addresses recorded by addListeners.
func (rt *runtime) ownListeners() []netip.AddrPort {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return slices.Clone(rt.listeners)
}
