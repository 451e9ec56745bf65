package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/balise-net/balise/internal/decisionlog"
	"github.com/balise-net/balise/internal/policy"
	"github.com/prometheus/client_golang/prometheus"
)

// benchProxy starts a proxy with testSpec on 127.0.0.1:0 and returns its
// address; it stops when b ends. ports are the CONNECT ports.
func benchProxy(b *testing.B, resolver string, ports ...uint16) string {
	b.Helper()
	pol, err := policy.New(testSpec())
	if err != nil {
		b.Fatalf("policy.New: %v", err)
	}
	ptr := &atomic.Pointer[policy.Policy]{}
	ptr.Store(pol)
	logger := slog.New(slog.DiscardHandler)
	p, err := New(Options{
		Policy:              ptr,
		Logger:              logger,
		Registerer:          prometheus.NewRegistry(),
		Decisions:           decisionlog.New(logger, time.Minute, 0),
		ConnectPorts:        ports,
		MaxTunnelsPerClient: -1,
		AllowDestinations:   loopbackPrefixes, // the origins listen on loopback
		Resolver:            resolver,
	})
	if err != nil {
		b.Fatalf("New: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := p.Start(ctx, ln)
	b.Cleanup(func() {
		cancel()
		<-done
	})
	return ln.Addr().String()
}

// BenchmarkPlainHTTP forwards absolute-URI GETs for an unlisted host
// through the proxy to a small origin, on keep-alive client connections.
func BenchmarkPlainHTTP(b *testing.B) {
	body := []byte("hello from the origin, a small page\n")
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write(body)
	}))
	origin.Config.ErrorLog = log.New(io.Discard, "", 0)
	defer origin.Close()
	_, port, _ := net.SplitHostPort(origin.Listener.Addr().String())
	addr := benchProxy(b, "")
	pu, _ := url.Parse("http://" + addr)
	tr := &http.Transport{Proxy: http.ProxyURL(pu), MaxIdleConnsPerHost: 256, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	target := "http://localhost:" + port + "/page"
	b.ReportAllocs()
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := client.Get(target)
			if err != nil {
				b.Error(err)
				return
			}
			n, _ := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || n != int64(len(body)) {
				b.Errorf("GET %s = %d, %d bytes; want 200, %d bytes", target, resp.StatusCode, n, len(body))
				return
			}
		}
	})
}

// BenchmarkConnectNew opens, per iteration, a new CONNECT tunnel to a
// TLS origin, completes a TLS handshake through it and sends one request.
func BenchmarkConnectNew(b *testing.B) { benchConnectNew(b, "localhost", "") }

// BenchmarkConnectNewDNS is BenchmarkConnectNew with a name resolved
// through a DNS server (Options.Resolver, startDNS's loopback server
// answering A 127.0.0.1 with a 60 s TTL) instead of the hosts file.
func BenchmarkConnectNewDNS(b *testing.B) { benchConnectNew(b, "origin.bench.test", startDNS(b)) }

// benchConnectNew runs new CONNECTs to host (resolved through resolver,
// "" for the system's) at the port of a local TLS origin.
func benchConnectNew(b *testing.B, host, resolver string) {
	origin := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	origin.Config.ErrorLog = log.New(io.Discard, "", 0)
	origin.StartTLS()
	defer origin.Close()
	pool := x509.NewCertPool()
	pool.AddCert(origin.Certificate())
	_, portStr, _ := net.SplitHostPort(origin.Listener.Addr().String())
	port, _ := strconv.ParseUint(portStr, 10, 16)
	addr := benchProxy(b, resolver, uint16(port))
	target := host + ":" + portStr
	tlsConf := &tls.Config{RootCAs: pool, ServerName: "example.com"}
	request := []byte("GET / HTTP/1.1\r\nHost: " + target + "\r\nConnection: close\r\n\r\n")
	b.ReportAllocs()
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := connectOnce(addr, target, tlsConf, request); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func connectOnce(proxyAddr, target string, conf *tls.Config, request []byte) error {
	c, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "CONNECT "+target+" HTTP/1.1\r\nHost: "+target+"\r\n\r\n"); err != nil {
		return err
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("CONNECT %s = %d, want 200", target, resp.StatusCode)
	}
	tc := tls.Client(c, conf)
	if _, err := tc.Write(request); err != nil {
		return err
	}
	r, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		return err
	}
	n, _ := io.Copy(io.Discard, r.Body)
	if r.StatusCode != http.StatusOK || n != 2 {
		return fmt.Errorf("GET through tunnel = %d, %d bytes; want 200, 2 bytes", r.StatusCode, n)
	}
	return nil
}
