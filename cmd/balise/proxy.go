package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"

	"github.com/balise-net/balise/config"
	"github.com/balise-net/balise/proxy"
)

// startProxy starts the explicit proxy on the [proxy] listen addresses
// and the transparent listeners (transparent_http, transparent_https),
// reading the policy from rt.policy, and stops them when ctx ends. It
// returns an error when a listener cannot be bound or the [proxy] section
// cannot be used (CA files, parent credentials). Changes to [proxy] other
// than the policy take effect at the next restart.
func startProxy(ctx context.Context, rt *runtime) error {
	cfg := rt.cfg
	pc := cfg.Proxy
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
	for _, b := range lns {
		done := b.start(ctx, b.ln)
		go func() {
			if err := <-done; err != nil && !errors.Is(err, net.ErrClosed) {
				rt.log.Error("proxy stopped", "addr", b.ln.Addr().String(), "err", err)
			}
		}()
	}
	rt.onReload(func(c *config.Config) {
		p.SetServiceHosts(serviceHosts(c))
	})
	return nil
}

// proxyOptions maps the configuration onto proxy.Options.
func proxyOptions(cfg *config.Config, rt *runtime) (proxy.Options, error) {
	pc := cfg.Proxy
	o := proxy.Options{
		Policy:                &rt.policy,
		Logger:                rt.log,
		Registerer:            rt.reg,
		Decisions:             rt.decisions,
		Clock:                 rt.now,
		AllowedClients:        pc.AllowedClients,
		Resolver:              pc.Resolver,
		DialTimeout:           pc.DialTimeout,
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
		ServiceHosts:          serviceHosts(cfg),
		TPROXY:                pc.TransparentMode == "tproxy",
		AllowNoSNI:            pc.NoSNI == "allow",
	}
	if pc.MaxTunnelsPerClient == 0 {
		o.MaxTunnelsPerClient = -1 // config: 0 = unlimited
	}
	switch pc.IPLiterals {
	case "allow":
		o.IPLiterals = proxy.IPLiteralsAllow
	case "deny":
		o.IPLiterals = proxy.IPLiteralsDeny
	}
	for _, port := range pc.OpaquePorts {
		if port < 1 || port > 65535 {
			return o, fmt.Errorf("proxy: opaque_ports: %d is not a port", port)
		}
		o.OpaquePorts = append(o.OpaquePorts, uint16(port))
	}
	for _, port := range pc.ConnectPorts {
		if port < 1 || port > 65535 {
			return o, fmt.Errorf("proxy: connect_ports: %d is not a port", port)
		}
		o.ConnectPorts = append(o.ConnectPorts, uint16(port))
	}
	if pc.Parent != "" {
		u, err := url.Parse(pc.Parent)
		if err != nil {
			return o, fmt.Errorf("proxy: parent: %w", err)
		}
		o.Parent = u
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
	return o, nil
}

// serviceHosts maps each listed service to its first domain, so that the
// portal can show what a caller may reach.
func serviceHosts(cfg *config.Config) map[string]string {
	spec, err := cfg.Spec()
	if err != nil {
		return nil
	}
	m := make(map[string]string, len(spec.Services))
	for _, s := range spec.Services {
		if len(s.Domains) > 0 {
			m[s.ID] = s.Domains[0]
		}
	}
	return m
}
