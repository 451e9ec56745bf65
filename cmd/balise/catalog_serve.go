package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/balise-net/balise/config"
)

// withSavedCatalog returns the configuration at path read against the last
// good catalog update kept on disk, when there is one that still verifies
// against update_key and is newer than the embedded catalog; else cfg as
// it is (read against the embedded catalog). log may be nil.
func withSavedCatalog(path string, cfg *config.Config, log *slog.Logger) *config.Config {
	if path == "" || cfg.Catalog.UpdateURL == "" {
		return cfg
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	saved, err := config.LoadSavedCatalog(cfg)
	switch {
	case err != nil:
		log.Warn("the saved catalog update is refused; using the embedded catalog", "dir", cfg.Catalog.UpdateDir, "error", err.Error())
		return cfg
	case saved == nil:
		return cfg
	}
	if err := saved.NewerThan(config.EmbeddedCatalog()); err != nil {
		log.Info("the saved catalog update is not newer than the embedded catalog; using the embedded one", "error", err.Error())
		return cfg
	}
	withSaved, err := config.LoadWith(path, saved)
	if err == nil {
		_, err = withSaved.Compile()
	}
	if err != nil {
		log.Warn("the configuration does not load with the saved catalog update; using the embedded catalog", "version", saved.Version(), "error", problemText(err))
		return cfg
	}
	log.Info("using the saved catalog update", "version", saved.Version(), "serial", saved.Serial())
	return withSaved
}

// catalogRequest asks the serve loop to put a catalog update in force.
type catalogRequest struct {
	cat  *config.ServiceCatalog
	done chan error
}

// applyCatalog reads the configuration again against cat, compiles it and
// swaps it in like a reload (on the serve loop). On error nothing changes.
func (s *server) applyCatalog(ctx context.Context, cat *config.ServiceCatalog) error {
	start := time.Now()
	cfg, err := config.LoadWith(s.path, cat)
	if err != nil {
		return fmt.Errorf("the configuration does not load with catalog %s: %s", cat.Version(), problemText(err))
	}
	p, err := cfg.Compile()
	if err != nil {
		return fmt.Errorf("the configuration does not compile with catalog %s: %v", cat.Version(), err)
	}
	applies, err := s.rt.prepare(cfg)
	if err != nil {
		return err
	}
	s.rt.install(cfg, p, applies...)
	swapped := time.Since(start)
	s.markLoaded(cfg, p)
	s.stopFetcher()
	s.startFetcher(ctx, cfg)
	s.log.Info("catalog swapped", "version", cat.Version(), "serial", cat.Serial(), "services", len(p.ServiceIDs()),
		"domains", p.DomainCount(), "swap_ms", float64(swapped.Microseconds())/1000)
	return nil
}

// startUpdater runs the catalog updater of cfg (none without
// update_url) until stopUpdater.
func (s *server) startUpdater(ctx context.Context, cfg *config.Config) {
	u := config.NewCatalogUpdater(cfg, s.updateClient, s.log, s.cfgm)
	if u == nil {
		return
	}
	uctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	s.updateStop, s.updateDone = stop, done
	go func() {
		defer close(done)
		u.Run(uctx, func() *config.ServiceCatalog { return s.rt.config().CatalogInUse() },
			func(cat *config.ServiceCatalog) error {
				req := catalogRequest{cat: cat, done: make(chan error, 1)}
				select {
				case s.catalogs <- req:
				case <-uctx.Done():
					return uctx.Err()
				}
				select {
				case err := <-req.done:
					return err
				case <-uctx.Done():
					return uctx.Err()
				}
			})
	}()
}

// stopUpdater stops the running catalog updater and waits for it.
func (s *server) stopUpdater() {
	if s.updateStop == nil {
		return
	}
	s.updateStop()
	<-s.updateDone
	s.updateStop, s.updateDone = nil, nil
}
