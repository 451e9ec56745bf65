//go:build linux

package tests

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// The transparent-mode laboratory: three network namespaces joined by veth
// pairs, with documentation addresses only (RFC 5737, RFC 3849), all
// inside them.
//
//	ws (workstations)          gw (gateway, Balise)             inet (origins)
//	192.0.2.10 personnel  ──── 192.0.2.1 | 198.51.100.1 ──── 198.51.100.2
//	192.0.2.20 autorises                                     203.0.113.10 listed name
//	192.0.2.30 bypass set                                    203.0.113.20 unlisted name
//	2001:db8:1::10 personnel   2001:db8:1::1 | 2001:db8:2::1 2001:db8:2::2
//	                                                         2001:db8:3::10 listed name
//	                                                         2001:db8:3::20 unlisted name
//
// The gateway forwards, applies a rule set of deploy/gateway/ and runs the
// built binary; the origins answer with the address they were reached at
// and the address the connection came from, so a test tells "through
// Balise" (from the gateway's 198.51.100.1) from "forwarded" (from the
// workstation's own address).
const (
	tgPersonnel  = "192.0.2.10"
	tgAutorises  = "192.0.2.20"
	tgBypass     = "192.0.2.30"
	tgGatewayWS  = "192.0.2.1"
	tgGatewayOut = "198.51.100.1"
	tgInetAddr   = "198.51.100.2"
	tgListedIP   = "203.0.113.10"
	tgUnlistedIP = "203.0.113.20"
	tgListed     = "reseau-social.test"
	tgUnlisted   = "nouvelles.test"
	tgService    = "Essai Social" // display name on the block page

	tgPersonnel6  = "2001:db8:1::10"
	tgGatewayWS6  = "2001:db8:1::1"
	tgGatewayOut6 = "2001:db8:2::1"
	tgInetAddr6   = "2001:db8:2::2"
	tgListedIP6   = "2001:db8:3::10"
	tgUnlistedIP6 = "2001:db8:3::20"
)

// tgSeq makes namespace and interface names unique within the process.
var tgSeq atomic.Int32

// tgNetns is a network namespace created by a test (ip netns add), removed
// at cleanup.
type tgNetns string

// cmd returns a command running inside the namespace.
func (n tgNetns) cmd(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", string(n)}, args...)...)
}

// run runs a command inside the namespace (bounded by 20 s) and fails the
// test if it fails.
func (n tgNetns) run(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := n.cmd(ctx, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns exec %s %s: %v\n%s", n, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// setns switches the calling OS thread into network namespace n.
func (n tgNetns) setns() error {
	return tgSetnsPath("/run/netns/" + string(n))
}

func tgSetnsPath(path string) error {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("setns %s: %w", path, err)
	}
	return nil
}

// do runs f on a fresh OS thread inside the namespace: sockets f opens
// belong to the namespace for their whole life, whichever goroutine uses
// them afterwards. The thread is never unlocked, so Go discards it when f
// returns instead of reusing it elsewhere.
func (n tgNetns) do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := n.setns(); err != nil {
			errc <- err
			return
		}
		errc <- f()
	}()
	return <-errc
}

// dial opens a connection from inside the namespace.
func (n tgNetns) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.do(func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// tgIP runs the ip command.
func tgIP(t *testing.T, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// tgLab is one laboratory: its namespaces, the gateway's workstation-side
// interface and the certificates of its origins.
type tgLab struct {
	ws, gw, inet tgNetns
	wsIf         string // the gateway's interface towards the workstations
	dir          string
	originCA     string // PEM file trusted by curl for the origins
	udpSeen      map[string]chan string
}

// newTGLab builds the namespaces, links and routes, and starts the origin
// servers in inet. Everything is removed when the test ends.
func newTGLab(t *testing.T) *tgLab {
	t.Helper()
	sfx := fmt.Sprintf("%x%x", os.Getpid()&0xfff, tgSeq.Add(1))
	l := &tgLab{
		ws: tgNetns("bal-ws-" + sfx), gw: tgNetns("bal-gw-" + sfx), inet: tgNetns("bal-in-" + sfx),
		wsIf: "gws" + sfx, dir: t.TempDir(), udpSeen: map[string]chan string{},
	}
	for _, n := range []tgNetns{l.ws, l.gw, l.inet} {
		tgIP(t, "netns", "add", string(n))
		t.Cleanup(func() { exec.Command("ip", "netns", "del", string(n)).Run() })
		// No duplicate address detection: IPv6 addresses, link-local
		// ones included, are usable at once.
		n.run(t, "sysctl", "-q", "-w", "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_dad=0")
	}
	wsEth, gwOut, inEth := "wse"+sfx, "gwo"+sfx, "ine"+sfx
	tgIP(t, "link", "add", wsEth, "netns", string(l.ws), "type", "veth", "peer", "name", l.wsIf, "netns", string(l.gw))
	tgIP(t, "link", "add", gwOut, "netns", string(l.gw), "type", "veth", "peer", "name", inEth, "netns", string(l.inet))
	for _, c := range [][]string{
		{string(l.ws), "addr", "add", tgPersonnel + "/24", "dev", wsEth},
		{string(l.ws), "addr", "add", tgAutorises + "/24", "dev", wsEth},
		{string(l.ws), "addr", "add", tgBypass + "/24", "dev", wsEth},
		{string(l.gw), "addr", "add", tgGatewayWS + "/24", "dev", l.wsIf},
		{string(l.gw), "addr", "add", tgGatewayOut + "/24", "dev", gwOut},
		{string(l.inet), "addr", "add", tgInetAddr + "/24", "dev", inEth},
		{string(l.inet), "addr", "add", tgListedIP + "/32", "dev", "lo"},
		{string(l.inet), "addr", "add", tgUnlistedIP + "/32", "dev", "lo"},
		{string(l.ws), "addr", "add", tgPersonnel6 + "/64", "dev", wsEth, "nodad"},
		{string(l.gw), "addr", "add", tgGatewayWS6 + "/64", "dev", l.wsIf, "nodad"},
		{string(l.gw), "addr", "add", tgGatewayOut6 + "/64", "dev", gwOut, "nodad"},
		{string(l.inet), "addr", "add", tgInetAddr6 + "/64", "dev", inEth, "nodad"},
		{string(l.inet), "addr", "add", tgListedIP6 + "/128", "dev", "lo"},
		{string(l.inet), "addr", "add", tgUnlistedIP6 + "/128", "dev", "lo"},
		{string(l.ws), "link", "set", "lo", "up"},
		{string(l.gw), "link", "set", "lo", "up"},
		{string(l.inet), "link", "set", "lo", "up"},
		{string(l.ws), "link", "set", wsEth, "up"},
		{string(l.gw), "link", "set", l.wsIf, "up"},
		{string(l.gw), "link", "set", gwOut, "up"},
		{string(l.inet), "link", "set", inEth, "up"},
		{string(l.ws), "route", "add", "default", "via", tgGatewayWS},
		{string(l.gw), "route", "add", "203.0.113.0/24", "via", tgInetAddr},
		{string(l.inet), "route", "add", "192.0.2.0/24", "via", tgGatewayOut},
		{string(l.ws), "-6", "route", "add", "default", "via", tgGatewayWS6},
		{string(l.gw), "-6", "route", "add", "2001:db8:3::/64", "via", tgInetAddr6},
		{string(l.inet), "-6", "route", "add", "2001:db8:1::/64", "via", tgGatewayOut6},
	} {
		tgIP(t, append([]string{"-n"}, c...)...)
	}
	l.gw.run(t, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	l.startOrigins(t)
	return l
}

// startOrigins starts, inside inet, HTTP (80) and HTTPS (443) origins on
// the listed and the unlisted name's addresses, and UDP receivers on
// 203.0.113.10 ports 443 and 4443.
func (l *tgLab) startOrigins(t *testing.T) {
	t.Helper()
	caPEM, cert := tgOriginCerts(t)
	l.originCA = filepath.Join(l.dir, "origin-ca.pem")
	if err := os.WriteFile(l.originCA, caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	handler := func(addr string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			from, _, _ := net.SplitHostPort(r.RemoteAddr)
			scheme := "http"
			if r.TLS != nil {
				scheme = "https"
			}
			via := r.Header.Get("Via")
			if via == "" {
				via = "-"
			}
			w.Header().Set("Content-Type", "text/plain")
			fmt.Fprintf(w, "origin %s %s host=%s from=%s via=%s\n", addr, scheme, r.Host, from, via)
		})
	}
	var lns []net.Listener
	var pcs []net.PacketConn
	err := l.inet.do(func() error {
		for _, a := range []string{tgListedIP, tgUnlistedIP, tgListedIP6, tgUnlistedIP6} {
			for _, port := range []string{"80", "443"} {
				ln, err := net.Listen("tcp", net.JoinHostPort(a, port))
				if err != nil {
					return err
				}
				lns = append(lns, ln)
			}
		}
		for _, port := range []string{"443", "4443", "53", "853"} {
			pc, err := net.ListenPacket("udp", net.JoinHostPort(tgListedIP, port))
			if err != nil {
				return err
			}
			pcs = append(pcs, pc)
		}
		return nil
	})
	for _, ln := range lns {
		t.Cleanup(func() { ln.Close() })
	}
	for _, pc := range pcs {
		t.Cleanup(func() { pc.Close() })
	}
	if err != nil {
		t.Fatalf("origin listeners in %s: %v", l.inet, err)
	}
	for _, ln := range lns {
		host, port, _ := net.SplitHostPort(ln.Addr().String())
		srv := &http.Server{Handler: handler(host), ErrorLog: log.New(io.Discard, "", 0), ReadHeaderTimeout: 10 * time.Second}
		if port == "443" {
			srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
			go srv.ServeTLS(ln, "", "")
		} else {
			go srv.Serve(ln)
		}
		t.Cleanup(func() { srv.Close() })
	}
	for _, pc := range pcs {
		_, port, _ := net.SplitHostPort(pc.LocalAddr().String())
		seen := make(chan string, 16)
		l.udpSeen[port] = seen
		go func() {
			buf := make([]byte, 1500)
			for {
				n, _, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				select {
				case seen <- string(buf[:n]):
				default:
				}
			}
		}()
	}
}

// tgOriginCerts returns a CA (PEM) and a certificate it signed for both
// origin names.
func tgOriginCerts(t *testing.T) ([]byte, tls.Certificate) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Essai origin CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: tgUnlisted},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		DNSNames:    []string{tgListed, tgUnlisted},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: key}
}

// startStubDNS answers, inside gw on 127.0.0.1:5353, the listed name with
// 203.0.113.10 and the unlisted one with 203.0.113.20: the proxy's
// resolver, with which it notices an SNI that disagrees with the
// destination address.
func (l *tgLab) startStubDNS(t *testing.T) string {
	t.Helper()
	const addr = "127.0.0.1:5353"
	var pc net.PacketConn
	if err := l.gw.do(func() error {
		var err error
		pc, err = net.ListenPacket("udp", addr)
		return err
	}); err != nil {
		t.Fatalf("stub DNS in %s: %v", l.gw, err)
	}
	answers := map[string]string{tgListed + ".": tgListedIP, tgUnlisted + ".": tgUnlistedIP}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if len(r.Question) == 1 {
			q := r.Question[0]
			ip, ok := answers[strings.ToLower(q.Name)]
			switch {
			case !ok:
				m.Rcode = dns.RcodeNameError
			case q.Qtype == dns.TypeA:
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
					A: net.ParseIP(ip)})
			}
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return addr
}

// curl runs curl inside ws from source address src and returns its exit
// code, the HTTP status ("000" when there was no response) and the body.
func (l *tgLab) curl(t *testing.T, src string, args ...string) (int, string, string) {
	t.Helper()
	return tgCurl(t, l.ws, append([]string{"--interface", src}, args...)...)
}

func tgCurl(t *testing.T, n tgNetns, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	all := append([]string{"curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}"}, args...)
	var out, errb bytes.Buffer
	cmd := n.cmd(ctx, all...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	code := exitCode(cmd.Run())
	s := out.String()
	i := strings.LastIndexByte(s, '\n')
	if i < 0 {
		return code, s, errb.String()
	}
	return code, s[i+1:], s[:i] + errb.String()
}

// udpPasses sends three datagrams from ws (source address src) to
// 203.0.113.10:port and reports whether inet received one within a second.
func (l *tgLab) udpPasses(t *testing.T, src, port string) bool {
	t.Helper()
	seen := l.udpSeen[port]
	for len(seen) > 0 {
		<-seen
	}
	var c net.Conn
	if err := l.ws.do(func() error {
		var err error
		d := net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP(src)}}
		c, err = d.Dial("udp", net.JoinHostPort(tgListedIP, port))
		return err
	}); err != nil {
		t.Fatalf("UDP socket in %s: %v", l.ws, err)
	}
	defer c.Close()
	payload := "quic-initial-from-" + src
	deadline := time.After(time.Second)
	tick := time.NewTicker(150 * time.Millisecond)
	defer tick.Stop()
	for sent := 0; ; {
		if sent < 3 {
			c.Write([]byte(payload))
			sent++
		}
		select {
		case got := <-seen:
			if got == payload {
				return true
			}
		case <-tick.C:
		case <-deadline:
			return false
		}
	}
}

// wantTLSAlert opens a TLS connection from the personnel address to dst
// with server name sni ("" sends none) and fails the test unless the
// gateway ends it with a TLS alert, promptly.
func (l *tgLab) wantTLSAlert(t *testing.T, sni, dst string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var c net.Conn
	err := l.ws.do(func() error {
		var err error
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(tgPersonnel)}}
		c, err = d.DialContext(ctx, "tcp", dst)
		return err
	})
	if err != nil {
		t.Fatalf("dial %s from the workstation: %v", dst, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Client(c, &tls.Config{ServerName: sni, InsecureSkipVerify: true})
	err = tc.Handshake()
	var ne net.Error
	switch {
	case err == nil:
		t.Errorf("TLS handshake to %s (SNI %q) succeeded (peer %v), want a TLS alert", dst, sni, tc.ConnectionState().PeerCertificates[0].Subject)
	case errors.As(err, &ne) && ne.Timeout():
		t.Errorf("TLS handshake to %s (SNI %q) hung: %v", dst, sni, err)
	case !strings.Contains(err.Error(), "remote error: tls:"):
		t.Errorf("TLS handshake to %s (SNI %q) = %v, want a TLS alert from the gateway", dst, sni, err)
	}
}

// startBalise runs the built binary inside gw with the harness
// (startBaliseWith): the process is forked from an OS thread switched into
// the gateway's namespace, so it lives there, and the harness reads its
// log, listen addresses and exit as usual.
func (l *tgLab) startBalise(t *testing.T, config string) *instance {
	t.Helper()
	runtime.LockOSThread()
	self := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), syscall.Gettid())
	orig, err := syscall.Open(self, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer func() {
		// Back to the original namespace; a thread that cannot go back
		// stays locked and is discarded when the test goroutine ends.
		err := unix.Setns(orig, unix.CLONE_NEWNET)
		syscall.Close(orig)
		if err == nil {
			runtime.UnlockOSThread()
		}
	}()
	if err := l.gw.setns(); err != nil {
		t.Fatal(err)
	}
	return startBaliseWith(t, startOptions{Config: config, Dir: t.TempDir()})
}

// metrics fetches /metrics of the Balise running in gw.
func (l *tgLab) metrics(t *testing.T, in *instance) string {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: l.gw.dial}}
	resp, err := c.Get("http://" + in.Addr("metrics") + "/metrics")
	if err != nil {
		t.Fatalf("gateway /metrics: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("gateway /metrics: %v", err)
	}
	return string(b)
}
