// Command responder is the benchmark's Go-stack ceiling: a bare
// miekg/dns server that answers every A query with one address from
// memory, and every other type with NODATA. It is also the upstream of
// Balise during the benchmark.
//
//	responder -listen 127.0.0.1:5400 [-reuseport 2] [-a 192.0.2.1]
//
// The efficiency benchmark also runs one with -a 127.0.0.1 as the DNS
// server through which Balise's proxy resolves the benchmark origin.
package main

import (
	"flag"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/miekg/dns"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:5400", "UDP and TCP address")
	sockets := flag.Int("reuseport", 1, "number of SO_REUSEPORT UDP sockets")
	answer := flag.String("a", "192.0.2.1", "IPv4 address in every A answer")
	flag.Parse()
	addr := net.ParseIP(*answer).To4()
	if addr == nil {
		log.Fatalf("-a %q: want an IPv4 address", *answer)
	}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if len(r.Question) == 1 && r.Question[0].Qtype == dns.TypeA {
			m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 3600}, A: addr}}
		}
		w.WriteMsg(m)
	})
	for i := 0; i < *sockets; i++ {
		s := &dns.Server{Addr: *listen, Net: "udp", Handler: h, ReusePort: *sockets > 1}
		go func() { log.Fatal(s.ListenAndServe()) }()
	}
	t := &dns.Server{Addr: *listen, Net: "tcp", Handler: h}
	go func() { log.Fatal(t.ListenAndServe()) }()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}
