package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	goruntime "runtime"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// serveMetrics are the process-level metrics of `balise serve`.
type serveMetrics struct {
	reloadSuccess prometheus.Counter
	reloadFailure prometheus.Counter
	lastOK        prometheus.Gauge
	lastOKTime    prometheus.Gauge
}

// newServeMetrics creates and registers balise_build_info and the
// balise_config_* reload metrics on reg. (The config package's Metrics
// hold balise_catalog_info, balise_policy_domains and the list series.)
func newServeMetrics(reg prometheus.Registerer) *serveMetrics {
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "balise_build_info",
		Help: "Always 1; the labels give the version of Balise and of Go it was built with.",
	}, []string{"version", "goversion"})
	buildInfo.WithLabelValues(buildVersion(), goruntime.Version()).Set(1)
	reloads := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "balise_config_reloads_total",
		Help: "Configuration reloads (SIGHUP or a list update), by result: success or failure (the running configuration was kept).",
	}, []string{"result"})
	m := &serveMetrics{
		reloadSuccess: reloads.WithLabelValues("success"),
		reloadFailure: reloads.WithLabelValues("failure"),
		lastOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "balise_config_last_reload_successful",
			Help: "1 when the last configuration load or reload succeeded, 0 when it failed and an older configuration is still in force.",
		}),
		lastOKTime: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "balise_config_last_reload_success_timestamp_seconds",
			Help: "Unix time of the last successful configuration load or reload.",
		}),
	}
	reg.MustRegister(buildInfo, reloads, m.lastOK, m.lastOKTime)
	return m
}

// newRegistry returns Balise's own registry (never the default one) with
// the Go runtime and process collectors.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// metricsHandler serves /metrics, /healthz and /readyz.
//
// /healthz answers 200 "ok" while the process runs. /readyz answers 200
// "ready" when the configuration is loaded and every readiness check
// passes, else 503 with one failing check per line.
func metricsHandler(rt *runtime, g prometheus.Gatherer, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelError),
		ErrorHandling:     promhttp.ContinueOnError,
		EnableOpenMetrics: true,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if failed := rt.readiness(); len(failed) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte(strings.Join(failed, "\n") + "\n"))
			return
		}
		w.Write([]byte("ready\n"))
	})
	return mux
}

// httpServer is one bound HTTP listener.
type httpServer struct {
	srv *http.Server
	ln  net.Listener
}

// listenHTTP binds every address (so a failure is reported before anything
// is served) and logs msg="listening" for each.
func listenHTTP(service string, addrs []string, h http.Handler, log *slog.Logger) ([]httpServer, error) {
	var out []httpServer
	for _, a := range addrs {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			for _, s := range out {
				s.ln.Close()
			}
			return nil, err
		}
		out = append(out, httpServer{
			srv: &http.Server{
				Handler:           h,
				ReadHeaderTimeout: 10 * time.Second,
				IdleTimeout:       2 * time.Minute,
				ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
			},
			ln: ln,
		})
		log.Info("listening", "service", service, "addr", ln.Addr().String())
	}
	return out, nil
}

// serveHTTP serves every server until ctx ends, then shuts them down
// gracefully (bounded by 5 s). It returns when they are all stopped.
func serveHTTP(ctx context.Context, servers []httpServer, log *slog.Logger) {
	var wg sync.WaitGroup
	for _, s := range servers {
		wg.Go(func() {
			if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics listener failed", "addr", s.ln.Addr().String(), "error", err)
			}
		})
	}
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range servers {
		s.srv.Shutdown(sctx)
	}
	wg.Wait()
}
