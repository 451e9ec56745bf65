// Command relay is the reference floor of the efficiency benchmark: a
// CONNECT relay with no policy, no checks and no name resolution (names
// map to addresses through -hosts), copying bytes both ways with io.Copy.
//
//	relay -listen 127.0.0.1:13131 -hosts origin.bench.test=127.0.0.1
package main

import (
	"bufio"
	"flag"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:13131", "listen address")
	hostsFlag := flag.String("hosts", "", "name=address pairs, comma-separated")
	flag.Parse()
	hosts := map[string]string{}
	for _, kv := range strings.Split(*hostsFlag, ",") {
		if name, addr, ok := strings.Cut(kv, "="); ok {
			hosts[name] = addr
		}
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go relay(c.(*net.TCPConn), hosts)
	}
}

func relay(c *net.TCPConn, hosts map[string]string) {
	defer c.Close()
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil || req.Method != http.MethodConnect {
		return
	}
	host, port, err := net.SplitHostPort(req.Host)
	if err != nil {
		return
	}
	if addr, ok := hosts[host]; ok {
		host = addr
	}
	o, err := net.Dial("tcp", net.JoinHostPort(host, port))
	if err != nil {
		io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\n\r\n")
		return
	}
	defer o.Close()
	io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
	var src io.Reader = c
	if br.Buffered() > 0 {
		src = io.MultiReader(io.LimitReader(br, int64(br.Buffered())), c)
	}
	done := make(chan struct{})
	go func() {
		io.Copy(o, src)
		o.(*net.TCPConn).CloseWrite()
		close(done)
	}()
	io.Copy(c, o)
	c.CloseWrite()
	<-done
}
