package main

import (
	"context"
	"fmt"

	"github.com/balise-net/balise/config"
	"github.com/balise-net/balise/internal/directory"
	"github.com/balise-net/balise/internal/identity"
	"github.com/balise-net/balise/internal/negotiate"
)

// startIdentity builds who-is-asking when [proxy.auth] mode is
// "negotiate" or a [directory] is configured: the Kerberos verifier
// (keytab; negotiate only), the directory client ([directory],
// optional), the address bindings (shared with the other nodes through a
// PostgreSQL register) and the pseudonym key (created when missing). The
// proxy (with negotiate) and the DNS filter then find it in rt.identity;
// without it (the default) every decision is by address. A DNS-only node
// with a [directory] and a PostgreSQL register decides for the users the
// proxy nodes authenticated. A reload re-reads the keytab (after a
// password change of the service account); the rest of [directory],
// [proxy.auth] and [identity] waits for a restart.
func startIdentity(ctx context.Context, rt *runtime) error {
	cfg := rt.cfg
	if cfg.Proxy.Auth.Mode != "negotiate" && cfg.Directory == nil {
		return nil
	}
	svc, closeAll, err := newIdentity(cfg, rt)
	if err != nil {
		return err
	}
	rt.identity = svc
	if rt.bindingShare != nil {
		rt.wg.Go(func() { rt.bindingShare.Run(ctx, svc.Bindings()) })
	}
	rt.onReload(func(*config.Config) {
		if err := svc.ReloadKeytab(); err != nil {
			rt.log.Warn("proxy.auth.keytab: reload failed, the keytab in force is kept", "error", err)
		}
	})
	rt.wg.Go(func() {
		<-ctx.Done()
		closeAll()
	})
	return nil
}

// newIdentity builds the identity service of cfg and the function that
// releases it.
func newIdentity(cfg *config.Config, rt *runtime) (*identity.Service, func(), error) {
	a := cfg.Proxy.Auth
	var v *negotiate.Verifier
	if a.Mode == "negotiate" {
		var err error
		if v, err = negotiate.New(negotiate.Options{Keytab: a.Keytab, ServicePrincipal: a.ServicePrincipal}); err != nil {
			return nil, nil, fmt.Errorf("proxy.auth: %w", err)
		}
	}
	var err error
	var dir *directory.Directory
	if d := cfg.Directory; d != nil {
		dc := directoryConfig(d)
		dc.Registerer = rt.reg
		dir, err = directory.New(dc)
		if err != nil {
			return nil, nil, fmt.Errorf("directory: %w", err)
		}
	}
	ps, err := loadPseudonyms(cfg)
	if err != nil {
		if dir != nil {
			dir.Close()
		}
		return nil, nil, err
	}
	bo := identity.Options{TTL: cfg.Identity.BindingTTL, SharedAfter: cfg.Identity.SharedAfter}
	if rt.bindingShare != nil {
		bo.OnBind = rt.bindingShare.Publish
	}
	b := identity.NewBindings(bo)
	svc, err := identity.NewService(identity.ServiceOptions{Verifier: v, Directory: dir, Bindings: b, Pseudonyms: ps, Registerer: rt.reg})
	if err != nil {
		return nil, nil, err
	}
	return svc, func() {
		if dir != nil {
			dir.Close()
		}
	}, nil
}

// directoryConfig copies [directory] onto the directory client's Config
// (config holds every value as the client wants it).
func directoryConfig(d *config.DirectorySection) directory.Config {
	return directory.Config{
		URL: d.URL, StartTLS: d.StartTLS, CAFile: d.CAFile,
		BindDN: d.BindDN, BindPassword: d.BindPassword.Value(), BaseDN: d.BaseDN,
		Kind: d.Kind, UserAttribute: d.UserAttribute, CacheTTL: d.CacheTTL, Timeout: d.Timeout,
	}
}
