// Command origin is the benchmark origin for tests/bench/proxy: a small
// HTTP server, an HTTPS server with a self-signed certificate (written to
// -cert for clients to trust), and a source that writes -bytes to every
// connection and closes it (tunnel throughput).
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	httpAddr := flag.String("http", "127.0.0.1:18080", "plain HTTP listen address")
	httpsAddr := flag.String("https", "127.0.0.1:18443", "HTTPS listen address")
	sourceAddr := flag.String("source", "127.0.0.1:18444", "byte source listen address")
	certOut := flag.String("cert", "origin.pem", "where to write the HTTPS certificate")
	size := flag.Int64("bytes", 1<<30, "bytes written by the source per connection")
	flag.Parse()

	body := []byte("hello from the benchmark origin\n")
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write(body)
	})
	cert, err := selfSigned()
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(*certOut, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o644); err != nil {
		log.Fatal(err)
	}
	quiet := log.New(io.Discard, "", 0)
	go func() {
		log.Fatal((&http.Server{Addr: *httpAddr, Handler: h, ErrorLog: quiet}).ListenAndServe())
	}()
	go func() {
		srv := &http.Server{Addr: *httpsAddr, Handler: h, ErrorLog: quiet,
			TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}}
		log.Fatal(srv.ListenAndServeTLS("", ""))
	}()
	ln, err := net.Listen("tcp", *sourceAddr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("ready")
	buf := make([]byte, 256<<10)
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go func() {
			defer c.Close()
			// Wait for one byte from the client (the tunnel is up), then send.
			one := make([]byte, 1)
			if _, err := c.Read(one); err != nil {
				return
			}
			// The client opens with a ClientHello: read the rest of what
			// it sends, so that closing sends FIN rather than a reset.
			go io.Copy(io.Discard, c)
			for left := *size; left > 0; {
				n := int64(len(buf))
				if n > left {
					n = left
				}
				w, err := c.Write(buf[:n])
				if err != nil {
					return
				}
				left -= int64(w)
			}
		}()
	}
}

func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "origin.bench.test"},
		DNSNames:     []string{"origin.bench.test", "localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
