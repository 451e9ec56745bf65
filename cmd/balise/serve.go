package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/balise-net/balise/config"
	"github.com/balise-net/balise/internal/policy"
)

// runServe runs `balise serve`.
func runServe(args []string, stdout, stderr io.Writer, env serveEnv) int {
	if env.getenv == nil {
		env.getenv = os.Getenv
	}
	if env.exists == nil {
		env.exists = func(name string) bool { _, err := os.Stat(name); return err == nil }
	}
	fs := newFlagSet("serve", stderr)
	path := fs.String("config", "", "configuration `FILE` (default: the embedded default, loopback only)")
	format := fs.String("log-format", "", "log `format`, json or text (default json under systemd or in a container, else text)")
	levelFlag := fs.String("log-level", "info", "log `level`: debug, info, warn or error")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: balise serve [--config FILE] [--log-format json|text] [--log-level LEVEL]")
		fs.PrintDefaults()
	}
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	if *format == "" {
		*format = defaultLogFormat(env.getenv, env.exists)
	}
	level, err := parseLevel(*levelFlag)
	if err != nil {
		fmt.Fprintf(stderr, "balise serve: %v\n", err)
		return exitUsage
	}
	log, err := newLogger(stderr, *format, level)
	if err != nil {
		fmt.Fprintf(stderr, "balise serve: %v\n", err)
		return exitUsage
	}

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)

	s := &server{
		path:   *path,
		log:    log,
		notify: newNotifier(env.getenv),
		getenv: env.getenv,
	}
	return s.run(context.Background(), sigs)
}

// server is one `balise serve` process.
type server struct {
	// path is the configuration file ("" = the embedded default).
	path   string
	log    *slog.Logger
	notify *notifier
	getenv func(string) string
	// now is the clock (nil: time.Now).
	now func() time.Time

	rt      *runtime
	metrics *serveMetrics
	cfgm    *config.Metrics
	reg     *prometheus.Registry

	fetchStop context.CancelFunc
	fetchDone chan struct{}
	changed   chan struct{} // a URL list changed: recompile

	// updateClient fetches catalog updates (nil: a default client).
	updateClient *http.Client
	updateStop   context.CancelFunc
	updateDone   chan struct{}
	catalogs     chan catalogRequest // a verified catalog update to put in force
}

// load reads the configuration (the embedded default when path is "")
// against the catalog in force (the embedded one before the first load).
func (s *server) load() (*config.Config, error) {
	if s.path == "" {
		return config.Default(), nil
	}
	if s.rt == nil {
		return config.Load(s.path)
	}
	return config.LoadWith(s.path, s.rt.config().CatalogInUse())
}

// run starts everything, serves until SIGINT or SIGTERM arrives on sigs
// (SIGHUP reloads), shuts down and returns the exit code.
func (s *server) run(parent context.Context, sigs <-chan os.Signal) int {
	log := s.log
	if s.now == nil {
		s.now = time.Now
	}
	cfgName := s.path
	if cfgName == "" {
		cfgName = "(default)"
	}
	cfg, err := s.load()
	var p *policy.Policy
	if err == nil {
		cfg = withSavedCatalog(s.path, cfg, log)
		p, err = cfg.Compile()
	}
	if err != nil {
		log.Error("invalid configuration", "config", cfgName, "error", problemText(err))
		return exitInvalid
	}

	s.reg = newRegistry()
	s.metrics = newServeMetrics(s.reg)
	s.cfgm = config.NewMetrics(s.reg)
	s.rt = newRuntime(cfg, p, s.reg, log, s.now)
	s.markLoaded(cfg, p)
	logWarnings(log, cfg)
	log.Info("configuration loaded", "config", cfgName, "services", len(p.ServiceIDs()), "domains", p.DomainCount(),
		"groups", len(cfg.Groups), "rules", len(cfg.Rules), "version", buildVersion(),
		"catalog", cfg.CatalogInUse().Version(), "catalog_source", cfg.CatalogInUse().Source())

	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	var wg sync.WaitGroup

	servers, err := listenHTTP("metrics", cfg.Metrics.Listen, metricsHandler(s.rt, s.reg, log), log)
	if err != nil {
		log.Error("cannot listen", "service", "metrics", "error", err)
		return exitInvalid
	}
	for _, sv := range servers {
		s.rt.addListeners(sv.ln.Addr())
	}
	wg.Go(func() { serveHTTP(ctx, servers, log) })
	wg.Go(func() { s.rt.decisions.Run(ctx, s.now) })

	starts := []struct {
		name  string
		start func(context.Context, *runtime) error
	}{
		{"exceptions", startExceptions},
		{"identity", startIdentity},
		{"console", startConsole},
		{"dns", startDNS},
		{"proxy", startProxy},
	}
	for _, st := range starts {
		if err := st.start(ctx, s.rt); err != nil {
			log.Error("cannot start", "service", st.name, "error", err)
			cancel()
			s.waitStopped(&wg)
			return exitInvalid
		}
	}

	s.rt.started.Store(true)
	s.changed = make(chan struct{}, 1)
	s.catalogs = make(chan catalogRequest)
	s.startFetcher(ctx, cfg)
	s.startUpdater(ctx, cfg)

	if err := s.notify.ready("serving"); err != nil {
		log.Warn("systemd notification failed", "error", err)
	}
	if iv, ok := watchdogInterval(s.getenv, os.Getpid()); ok && s.notify != nil {
		wg.Go(func() {
			s.notify.runWatchdog(ctx, iv, s.rt.liveness, func(err error) {
				log.Error("liveness check failed: withholding the watchdog ping", "error", err)
			})
		})
	}
	log.Info("started", "config", cfgName)

loop:
	for {
		select {
		case <-parent.Done():
			break loop
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				s.reload(ctx)
				continue
			}
			log.Info("stopping", "signal", sig.String())
			break loop
		case <-s.changed:
			s.recompile()
		case req := <-s.catalogs:
			req.done <- s.applyCatalog(ctx, req.cat)
		}
	}

	s.notify.stopping()
	cancel()
	s.stopUpdater()
	s.stopFetcher()
	s.waitStopped(&wg)
	log.Info("stopped")
	return exitOK
}

// waitStopped waits, at most 15 s, for wg and the front-ends' goroutines
// (rt.wg) once the context they run under has ended.
func (s *server) waitStopped(wg *sync.WaitGroup) {
	done := make(chan struct{})
	go func() { wg.Wait(); s.rt.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		s.log.Warn("shutdown timed out; exiting anyway")
	}
}

// markLoaded updates the metrics after a configuration (cfg, compiled
// into p) was put in force.
//
// Compiling a large list leaves its input (every domain as a string) as
// garbage several times the size of the compiled matcher; it is returned
// to the operating system at once rather than whenever the runtime gets
// to it, so that the resident size operators see reflects what Balise
// keeps (about 11 bytes per listed domain), not the last reload.
func (s *server) markLoaded(cfg *config.Config, p *policy.Policy) {
	debug.FreeOSMemory()
	s.metrics.lastOK.Set(1)
	s.metrics.lastOKTime.Set(float64(s.now().UnixNano()) / 1e9)
	s.cfgm.SetConfig(cfg)
	s.cfgm.SetPolicy(p)
}

// logWarnings logs the configuration's warnings, one line each.
func logWarnings(log *slog.Logger, cfg *config.Config) {
	for _, w := range cfg.Warnings {
		log.Warn("configuration warning", "warning", w.String())
	}
}

// reload re-reads the configuration file (SIGHUP). A configuration that
// fails to load or compile, or that a front-end refuses (a [proxy.tls] CA
// that does not load), leaves the running one in place.
func (s *server) reload(ctx context.Context) {
	s.notify.reloading()
	defer s.notify.ready("serving")
	cfg, err := s.load()
	var p *policy.Policy
	if err == nil {
		p, err = cfg.Compile()
	}
	var applies []func()
	if err == nil {
		applies, err = s.rt.prepare(cfg)
	}
	if err != nil {
		s.metrics.reloadFailure.Inc()
		s.metrics.lastOK.Set(0)
		s.log.Error("reload failed; keeping the running configuration", "config", s.path, "error", problemText(err))
		return
	}
	if old := s.rt.config(); !slices.Equal(old.Metrics.Listen, cfg.Metrics.Listen) {
		s.log.Warn("[metrics] listen changed; the new addresses take effect at the next restart",
			"running", old.Metrics.Listen, "configured", cfg.Metrics.Listen)
	}
	logWarnings(s.log, cfg)
	s.rt.install(cfg, p, applies...)
	s.metrics.reloadSuccess.Inc()
	s.markLoaded(cfg, p)
	s.stopFetcher()
	s.startFetcher(ctx, cfg)
	s.stopUpdater()
	s.startUpdater(ctx, cfg)
	s.log.Info("configuration reloaded", "config", s.path, "services", len(p.ServiceIDs()), "domains", p.DomainCount(),
		"groups", len(cfg.Groups), "rules", len(cfg.Rules))
}

// recompile compiles the configuration in force again after a URL list
// changed (the fetcher updated its cached copy).
func (s *server) recompile() {
	cfg := s.rt.config()
	p, err := cfg.Compile()
	if err != nil {
		s.metrics.reloadFailure.Inc()
		s.metrics.lastOK.Set(0)
		s.log.Error("recompiling after a list update failed; keeping the running policy", "error", problemText(err))
		return
	}
	s.rt.setBase(p)
	s.metrics.reloadSuccess.Inc()
	s.markLoaded(cfg, p)
	s.log.Info("policy recompiled after a list update", "domains", p.DomainCount())
}

// startFetcher runs the URL-list fetcher of cfg until stopFetcher.
func (s *server) startFetcher(ctx context.Context, cfg *config.Config) {
	fctx, stop := context.WithCancel(ctx)
	f := config.NewFetcher(cfg, nil, s.log, s.cfgm)
	done := make(chan struct{})
	s.fetchStop, s.fetchDone = stop, done
	go func() {
		defer close(done)
		f.Run(fctx, func() {
			select {
			case s.changed <- struct{}{}:
			default:
			}
		})
	}()
}

// stopFetcher stops the running fetcher and waits for it.
func (s *server) stopFetcher() {
	if s.fetchStop == nil {
		return
	}
	s.fetchStop()
	<-s.fetchDone
	s.fetchStop, s.fetchDone = nil, nil
}
