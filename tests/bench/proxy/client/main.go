// Command client drives the proxy benchmarks of tests/bench/proxy:
//
//	connect   new CONNECT + TLS handshake + one request per connection
//	keepalive HTTPS requests over kept-alive tunnels
//	plain     plain HTTP requests (absolute URI) over kept-alive proxy connections
//	tunnel    bytes per second through one tunnel from the origin's source
//	idle      open N tunnels, report, and hold them until killed
//
// -proxy "" goes direct. Every answer's status is checked: only 200s count.
// -rate spaces the requests of connect, keepalive and plain at that many
// per second in all (the workers fall behind when the target cannot keep
// up; the printed rate is what was achieved); 0 sends as fast as they can.
package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

var (
	proxyAddr = flag.String("proxy", "", "proxy host:port (empty: direct)")
	target    = flag.String("target", "127.0.0.1:18443", "origin host:port")
	certFile  = flag.String("cert", "origin.pem", "origin certificate to trust")
	conc      = flag.Int("c", 32, "concurrent workers")
	duration  = flag.Duration("d", 10*time.Second, "duration")
	count     = flag.Int("n", 10000, "tunnels for idle")
	rate      = flag.Float64("rate", 0, "requests per second in all (0: as fast as possible)")
	sni       = flag.String("sni", "source.bench.test", "tunnel: server name of the ClientHello sent first")
)

func main() {
	flag.Parse()
	if flag.NArg() != 1 {
		log.Fatal("usage: client [flags] connect|keepalive|plain|tunnel|idle")
	}
	pem, err := os.ReadFile(*certFile)
	if err != nil {
		log.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	tlsCfg := &tls.Config{RootCAs: roots, ServerName: "origin.bench.test", NextProtos: []string{"http/1.1"}, ClientSessionCache: nil}
	switch flag.Arg(0) {
	case "connect":
		runConnect(tlsCfg)
	case "keepalive":
		runKeepalive(tlsCfg, "https")
	case "plain":
		runKeepalive(nil, "http")
	case "tunnel":
		runTunnel()
	case "idle":
		runIdle(tlsCfg)
	default:
		log.Fatalf("unknown mode %q", flag.Arg(0))
	}
}

// dial opens a stream to addr, through the proxy when one is set.
func dial(addr string) (net.Conn, error) {
	if *proxyAddr == "" {
		return net.DialTimeout("tcp", addr, 10*time.Second)
	}
	c, err := net.DialTimeout("tcp", *proxyAddr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", addr, addr)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		c.Close()
		return nil, err
	}
	if resp.StatusCode != 200 {
		c.Close()
		return nil, fmt.Errorf("CONNECT: %s", resp.Status)
	}
	if br.Buffered() > 0 {
		c.Close()
		return nil, fmt.Errorf("CONNECT: unexpected bytes")
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// pacer hands out the start times of requests shared by all workers.
type pacer struct {
	start    time.Time
	deadline time.Time
	rate     float64
	next     atomic.Int64
}

func newPacer() *pacer {
	now := time.Now()
	return &pacer{start: now, deadline: now.Add(*duration), rate: *rate}
}

// wait blocks until the next request is due and reports whether it is
// due before the end of the run.
func (p *pacer) wait() bool {
	if p.rate <= 0 {
		return time.Now().Before(p.deadline)
	}
	i := p.next.Add(1) - 1
	due := p.start.Add(time.Duration(float64(i) * 1e9 / p.rate))
	if !due.Before(p.deadline) {
		return false
	}
	if d := time.Until(due); d > 0 {
		time.Sleep(d)
	}
	return true
}

func runConnect(cfg *tls.Config) {
	var ok, bad atomic.Int64
	var wg sync.WaitGroup
	req := "GET / HTTP/1.1\r\nHost: origin.bench.test\r\nConnection: close\r\n\r\n"
	p := newPacer()
	for range *conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p.wait() {
				c, err := dial(*target)
				if err != nil {
					bad.Add(1)
					continue
				}
				tc := tls.Client(c, cfg)
				tc.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := io.WriteString(tc, req); err != nil {
					bad.Add(1)
					tc.Close()
					continue
				}
				resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				if err == nil && resp.StatusCode == 200 {
					ok.Add(1)
				} else {
					bad.Add(1)
				}
				tc.Close()
			}
		}()
	}
	wg.Wait()
	fmt.Printf("connect: %.0f/s ok=%d failed=%d\n", float64(ok.Load())/duration.Seconds(), ok.Load(), bad.Load())
}

// runKeepalive sends requests over kept-alive connections: HTTPS through
// tunnels, or plain HTTP with absolute URIs to the proxy.
func runKeepalive(cfg *tls.Config, scheme string) {
	tr := &http.Transport{TLSClientConfig: cfg, MaxIdleConnsPerHost: *conc, MaxConnsPerHost: *conc,
		ForceAttemptHTTP2: false, DisableCompression: true}
	if *proxyAddr != "" {
		tr.Proxy = http.ProxyURL(&url.URL{Scheme: "http", Host: *proxyAddr})
	}
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	u := scheme + "://" + *target + "/"
	var ok, bad atomic.Int64
	var wg sync.WaitGroup
	p := newPacer()
	for range *conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p.wait() {
				resp, err := client.Get(u)
				if err != nil {
					bad.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 {
					ok.Add(1)
				} else {
					bad.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	fmt.Printf("%s: %.0f/s ok=%d failed=%d\n", flag.Arg(0), float64(ok.Load())/duration.Seconds(), ok.Load(), bad.Load())
}

func runTunnel() {
	c, err := dial(*target)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	// A real ClientHello first, as a browser sends it: Balise's TLS gate
	// reads the server name in it; the byte source starts on any byte.
	c.Write(clientHello(*sni))
	n, err := io.Copy(io.Discard, c)
	el := time.Since(start)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("tunnel: %d bytes in %v = %.0f MB/s\n", n, el.Round(time.Millisecond), float64(n)/el.Seconds()/1e6)
}

// clientHello returns the first flight of a Go TLS client asking for name.
func clientHello(name string) []byte {
	a, b := net.Pipe()
	defer b.Close()
	go func() {
		tls.Client(a, &tls.Config{ServerName: name, InsecureSkipVerify: true}).Handshake()
		a.Close()
	}()
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64<<10)
	n, err := b.Read(buf)
	if err != nil {
		log.Fatalf("client hello: %v", err)
	}
	return buf[:n]
}

func runIdle(cfg *tls.Config) {
	conns := make([]net.Conn, 0, *count)
	sem := make(chan struct{}, 64)
	var mu sync.Mutex
	var wg sync.WaitGroup
	var failed atomic.Int64
	var firstErr atomic.Value
	for range *count {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := dial(*target)
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
				return
			}
			// An idle tunnel as browsers leave them: TLS up, one request
			// answered, then nothing.
			tc := tls.Client(c, cfg)
			tc.SetDeadline(time.Now().Add(30 * time.Second))
			io.WriteString(tc, "GET / HTTP/1.1\r\nHost: origin.bench.test\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
			if err != nil || resp.StatusCode != 200 {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, fmt.Sprint("request: ", err))
				tc.Close()
				return
			}
			io.Copy(io.Discard, resp.Body)
			tc.SetDeadline(time.Time{})
			c = tc
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}()
	}
	wg.Wait()
	fmt.Printf("idle: %d tunnels open, %d failed %v\n", len(conns), failed.Load(), firstErr.Load())
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	<-ch
	for _, c := range conns {
		c.Close()
	}
}
