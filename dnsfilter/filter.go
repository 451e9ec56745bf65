package dnsfilter

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/balise-net/balise/internal/decisionlog"
)

// Filter is the DNS filter. Create it with New, run it with Start and
// Shutdown (or ListenAndServe). It is also a dns.Handler (ServeDNS) for
// embedding into another miekg/dns server.
type Filter struct {
	s         *settings
	m         *metrics
	cache     *cache
	limiter   *limiter
	upstreams *pool
	zones     []zoneRoute
	realClock bool
	// batch selects serveUDPBatch over serveUDP.
	batch bool

	resolveTimeout time.Duration
	// pendingSem bounds the UDP queries waiting for an upstream.
	pendingSem chan struct{}
	// maxTCP bounds the open TCP connections of all clients.
	maxTCP int
	// access is the current Access (SetAccess).
	access atomic.Pointer[access]

	refusalLog decisionlog.RateBound

	flightMu sync.Mutex
	flights  map[string]*flight

	// ctx lives from New to Shutdown; it bounds background resolutions.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	started bool
	udp     []*net.UDPConn
	tcp     []net.Listener
	// tcpConns are the open TCP connections, tcpPer their number per
	// clientKey.
	tcpConns map[*tcpConn]struct{}
	tcpPer   map[netip.Addr]int
	addrs    []net.Addr
	closed   atomic.Bool
}

// maxPending bounds the UDP queries waiting for an upstream at once; past
// it, new ones get SERVFAIL at once.
const maxPending = 8192

// maxTCPConns bounds the open TCP connections of all clients, and so the
// goroutines and buffers they hold.
const maxTCPConns = 1024

// New checks opts and returns a Filter that is not serving yet. It
// registers the filter's metrics on opts.Registerer.
func New(opts Options) (*Filter, error) {
	s, err := opts.settings()
	if err != nil {
		return nil, err
	}
	f := &Filter{
		s:          s,
		limiter:    newLimiter(s.RateLimit, s.RateBurst, s.RateLimitExempt),
		pendingSem: make(chan struct{}, maxPending),
		maxTCP:     maxTCPConns,
		flights:    make(map[string]*flight),
		tcpConns:   make(map[*tcpConn]struct{}),
		tcpPer:     make(map[netip.Addr]int),
		realClock:  opts.Clock == nil,
		batch:      !opts.UDPNoBatch,
	}
	if s.CacheSize > 0 {
		f.cache = newCache(s.CacheSize, s.StaleMaxAge.Nanoseconds())
	}
	f.access.Store(newAccess(opts.Access))
	f.m = newMetrics(func() int {
		if f.cache == nil {
			return 0
		}
		return f.cache.len()
	}, f.tcpOpen)
	f.upstreams = f.newPool(s.Upstreams)
	for _, fw := range s.Forward {
		zone := strings.TrimSuffix(strings.ToLower(fw.Zone), ".")
		f.zones = append(f.zones, zoneRoute{zone: zone, pool: f.newPool(fw.Upstreams)})
	}
	n := len(f.upstreams.ups)
	for _, z := range f.zones {
		n = max(n, len(z.pool.ups))
	}
	f.resolveTimeout = s.Timeout*time.Duration(n) + s.Timeout
	if err := f.m.register(s.Registerer); err != nil {
		return nil, fmt.Errorf("registering metrics: %w", err)
	}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	return f, nil
}

func (f *Filter) newPool(names []string) *pool {
	p := &pool{timeout: f.s.Timeout}
	for _, n := range names {
		p.ups = append(p.ups, newUpstream(n, f.s.Timeout, f.m))
	}
	return p
}

// Start binds every listen address over UDP and TCP, logs one "listening"
// line per bound socket group, and serves in background goroutines until
// Shutdown. ctx bounds the binding only.
func (f *Filter) Start(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.started {
		return errors.New("dnsfilter: already started")
	}
	f.started = true
	for _, addr := range f.s.Listen {
		if err := f.listen(ctx, addr); err != nil {
			f.closeLocked()
			f.cancel()
			return err
		}
	}
	for _, c := range f.udp {
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			if f.batch {
				f.serveUDPBatch(c)
			} else {
				f.serveUDP(c)
			}
		}()
	}
	for _, l := range f.tcp {
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.serveTCP(l)
		}()
	}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		f.background()
	}()
	return nil
}

// listen binds addr: UDPSockets UDP sockets (SO_REUSEPORT) and one TCP
// listener on the same port.
func (f *Filter) listen(ctx context.Context, addr string) error {
	var lastErr error
	for attempt := 0; attempt < 20; attempt++ {
		conns, ln, err := bindPair(ctx, addr, f.s.UDPSockets)
		if err == nil {
			f.udp = append(f.udp, conns...)
			f.tcp = append(f.tcp, ln)
			f.addrs = append(f.addrs, conns[0].LocalAddr(), ln.Addr())
			f.s.Logger.Info("listening", "service", "dns-udp", "addr", conns[0].LocalAddr().String(), "sockets", len(conns))
			f.s.Logger.Info("listening", "service", "dns-tcp", "addr", ln.Addr().String())
			return nil
		}
		lastErr = err
		if _, port, _ := net.SplitHostPort(addr); port != "0" {
			break
		}
	}
	return fmt.Errorf("dns listen %s: %w", addr, lastErr)
}

func bindPair(ctx context.Context, addr string, sockets int) ([]*net.UDPConn, net.Listener, error) {
	// TCP first: with port 0 the kernel picks a port free for TCP, where
	// busy hosts have far more ports in use than for UDP.
	var tlc net.ListenConfig
	ln, err := tlc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	bound := ln.Addr().String()
	lc := reusePortConfig(sockets > 1)
	var conns []*net.UDPConn
	for i := 0; i < sockets && (i == 0 || lc.Control != nil); i++ {
		c, err := lc.ListenPacket(ctx, "udp", bound)
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			ln.Close()
			return nil, nil, err
		}
		uc := c.(*net.UDPConn)
		setBuffers(uc)
		conns = append(conns, uc)
	}
	return conns, ln, nil
}

// udpBuffer is the socket buffer size asked for each UDP socket, so that
// bursts wait in the kernel instead of being dropped. The kernel caps it
// (net.core.rmem_max, wmem_max).
const udpBuffer = 4 << 20

func setBuffers(c *net.UDPConn) {
	c.SetReadBuffer(udpBuffer)
	c.SetWriteBuffer(udpBuffer)
}

// Addrs returns the bound addresses (UDP then TCP, per listen address).
func (f *Filter) Addrs() []net.Addr {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]net.Addr(nil), f.addrs...)
}

// Shutdown closes the listeners and connections, stops background work and
// waits for the serving goroutines until ctx ends.
func (f *Filter) Shutdown(ctx context.Context) error {
	f.mu.Lock()
	f.closeLocked()
	f.mu.Unlock()
	f.cancel()
	done := make(chan struct{})
	go func() {
		f.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (f *Filter) closeLocked() {
	f.closed.Store(true)
	for _, c := range f.udp {
		c.Close()
	}
	for _, l := range f.tcp {
		l.Close()
	}
	for tc := range f.tcpConns {
		tc.c.Close()
	}
}

// ListenAndServe starts the filter and serves until ctx ends, then shuts
// it down (waiting up to 5 seconds).
func (f *Filter) ListenAndServe(ctx context.Context) error {
	if err := f.Start(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return f.Shutdown(sctx)
}

// Ready returns nil when at least one default upstream answered an active
// health probe within the last three probe intervals.
func (f *Filter) Ready() error {
	limit := f.s.Clock().Add(-3*f.s.ProbeInterval - f.s.Timeout).UnixNano()
	for _, u := range f.upstreams.ups {
		if u.lastOK.Load() >= limit {
			return nil
		}
	}
	return errors.New("no DNS upstream answered recently")
}

// background probes the upstreams and sweeps the cache and rate limiter.
func (f *Filter) background() {
	probe := time.NewTicker(f.s.ProbeInterval)
	defer probe.Stop()
	sweep := time.NewTicker(30 * time.Second)
	defer sweep.Stop()
	f.probeAll()
	for {
		select {
		case <-f.ctx.Done():
			return
		case <-probe.C:
			f.probeAll()
		case <-sweep.C:
			now := f.s.Clock().UnixNano()
			if f.cache != nil {
				f.cache.sweep(now)
			}
			f.limiter.sweep(now)
		}
	}
}

func (f *Filter) probeAll() {
	var wg sync.WaitGroup
	wg.Go(func() { f.upstreams.probe(f.ctx, ".", dns.TypeNS, f.s.Clock) })
	for _, z := range f.zones {
		wg.Go(func() { z.pool.probe(f.ctx, z.zone+".", dns.TypeSOA, f.s.Clock) })
	}
	wg.Wait()
}

// serveUDP reads queries from c until it is closed. Answers from the cache
// and blocked names are sent inline; queries that need an upstream are
// handed to a goroutine.
func (f *Filter) serveUDP(c *net.UDPConn) {
	s := newScratch()
	buf := make([]byte, maxQuery+1)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if f.closed.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		start := time.Now()
		if n > maxQuery {
			f.m.malformed[malOversized].Inc()
			continue
		}
		out, pending := f.serve(s, buf[:n], from.Addr().Unmap(), protoUDP, start, modeFirst)
		if pending {
			out = f.resume(c, buf[:n], from, start, s)
		}
		if out != nil {
			s.out = out[:0]
			c.WriteToUDPAddrPort(out, from)
			f.m.duration[protoUDP].Observe(time.Since(start).Seconds())
		}
	}
}

var scratchPool = sync.Pool{New: func() any { return newScratch() }}

// ServeDNS answers r as a dns.Handler, applying the same cache, policy
// and limits as the filter's own listeners.
func (f *Filter) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	pkt, err := r.Pack()
	if err != nil {
		f.m.malformed[malFormat].Inc()
		return
	}
	p := protoUDP
	var client netip.Addr
	switch a := w.RemoteAddr().(type) {
	case *net.UDPAddr:
		client = a.AddrPort().Addr().Unmap()
	case *net.TCPAddr:
		client = a.AddrPort().Addr().Unmap()
		p = protoTCP
	}
	start := time.Now()
	s := scratchPool.Get().(*scratch)
	defer scratchPool.Put(s)
	out, _ := f.serve(s, pkt, client, p, start, modeWait)
	if out != nil {
		w.Write(out)
	}
	f.m.duration[p].Observe(time.Since(start).Seconds())
}
