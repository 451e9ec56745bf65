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
	"regexp"
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
		for _, port := range []string{"443", "4443"} {
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

// tgRuleVars are the values substituted into a deploy/gateway rule set.
type tgRuleVars struct {
	WSIf, BaliseUser, Mark string
	// LocalIntercept enables the rules, disabled in the shipped files,
	// that send the gateway's own processes through Balise.
	LocalIntercept bool
	// Bypass is a source network that goes around Balise: the bypass_v4
	// set (nftables) or the commented RETURN rules (iptables).
	Bypass string
}

var tgDefine = regexp.MustCompile(`(?m)^define (\w+) = .*$`)

// tgRenderNft returns an nftables file of deploy/gateway with its
// definitions replaced by v.
func tgRenderNft(t *testing.T, name string, v tgRuleVars) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "deploy", "gateway", name))
	if err != nil {
		t.Fatal(err)
	}
	vals := map[string]string{"WS_IF": fmt.Sprintf("%q", v.WSIf), "HTTP_PORT": "3129", "HTTPS_PORT": "3130",
		"BALISE_USER": fmt.Sprintf("%q", v.BaliseUser), "TPROXY_MARK": v.Mark}
	s := tgDefine.ReplaceAllStringFunc(string(b), func(line string) string {
		k := tgDefine.FindStringSubmatch(line)[1]
		val, ok := vals[k]
		if !ok {
			t.Fatalf("%s: unknown definition %s", name, k)
		}
		return "define " + k + " = " + val
	})
	if v.LocalIntercept {
		s = tgUncomment(t, name, s, `(?m)^(\s*)#(.*# local-intercept)$`, "$1$2")
	}
	if v.Bypass != "" {
		s = tgUncomment(t, name, s, `(?m)^(\s*set bypass_v4 \{[^}]*)#elements = \{ 10\.40\.0\.0/24 \}`, "${1}elements = { "+v.Bypass+" }")
	}
	return s
}

// tgRenderIptables returns an iptables-restore file of deploy/gateway with
// its placeholders replaced by v.
func tgRenderIptables(t *testing.T, name string, v tgRuleVars) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "deploy", "gateway", name))
	if err != nil {
		t.Fatal(err)
	}
	s := strings.NewReplacer("@WS_IF@", v.WSIf, "@HTTP_PORT@", "3129", "@HTTPS_PORT@", "3130",
		"@BALISE_USER@", v.BaliseUser, "@TPROXY_MARK@", v.Mark).Replace(string(b))
	if v.LocalIntercept {
		s = tgUncomment(t, name, s, `(?m)^#(-A BALISE_OUTPUT .* REDIRECT .*)$`, "$1")
	}
	if v.Bypass != "" {
		s = tgUncomment(t, name, s, `(?m)^#(-A BALISE_\w+ -s )10\.40\.0\.0/24( -j RETURN)$`, "${1}"+v.Bypass+"$2")
	}
	if m := regexp.MustCompile(`@[A-Z_]+@`).FindString(s); m != "" {
		t.Fatalf("%s: placeholder %s left", name, m)
	}
	return s
}

// tgUncomment replaces every match of pattern in the rule set text by repl,
// failing the test when there is none: the optional rules the test
// enables must exist in the shipped file.
func tgUncomment(t *testing.T, name, text, pattern, repl string) string {
	t.Helper()
	re := regexp.MustCompile(pattern)
	if !re.MatchString(text) {
		t.Fatalf("%s: no line matches %s", name, pattern)
	}
	return re.ReplaceAllString(text, repl)
}

// apply loads a rendered rule set into gw with the given command (nft -f
// or iptables-restore --noflush) reading it from a file.
func (l *tgLab) apply(t *testing.T, text string, cmd ...string) {
	t.Helper()
	f := filepath.Join(l.dir, fmt.Sprintf("rules-%d", time.Now().UnixNano()))
	if err := os.WriteFile(f, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	l.gw.run(t, append(cmd, f)...)
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

// tgConfig is Balise's configuration on the gateway: reseau-social.test
// is listed and blocked by default, allowed for the autorises group.
func tgConfig(resolver, mode, tail string) string {
	return fmt.Sprintf(`
timezone = "UTC"
institution = "CISSS de l'Essai"

[[list]]
name = "essai-social"
display_name = %q
category = "networking"
domains = [%q]

[[group]]
name = "autorises"
networks = ["%s/32"]

[[group]]
name = "personnel"
networks = ["192.0.2.0/24"]

[[rule]]
name = "autorises"
groups = ["autorises"]
services = ["*"]
action = "allow"

[metrics]
listen = "127.0.0.1:0"

[dns]
listen = []

[proxy]
listen = []
allowed_clients = ["192.0.2.0/24", "2001:db8:1::/64", "%s/32"]
resolver = %q
transparent_http = "0.0.0.0:3129"
transparent_https = "0.0.0.0:3130"
transparent_mode = %q
%s`, tgService, tgListed, tgAutorises, tgGatewayOut, resolver, mode, tail)
}

// tgRequireTransparent skips (or fails under BALISE_E2E=1) when this build
// logs no transparent listeners.
func tgRequireTransparent(t *testing.T, in *instance) {
	t.Helper()
	if len(in.Addrs("transparent-http")) == 0 || len(in.Addrs("transparent-https")) == 0 {
		if e2eStrict {
			t.Fatalf("BALISE_E2E=1 but this build logs no transparent listeners; log:\n%s", in.Stderr())
		}
		t.Skip("this build has no transparent listeners (the gateway plumbing and rule sets passed)")
	}
}

// TestGatewayRuleSets checks that every rule set of deploy/gateway loads
// (nft -c, iptables-restore --test, ip6tables-restore --test) in a fresh
// namespace once its placeholders are filled in, and that none leaves one
// unfilled.
func TestGatewayRuleSets(t *testing.T) {
	requireRoot(t)
	requireTool(t, "ip")
	v := tgRuleVars{WSIf: "eth1", BaliseUser: "root", Mark: "0x1"}
	n := tgNetns(fmt.Sprintf("bal-chk-%x%x", os.Getpid()&0xfff, tgSeq.Add(1)))
	tgIP(t, "netns", "add", string(n))
	t.Cleanup(func() { exec.Command("ip", "netns", "del", string(n)).Run() })
	dir := t.TempDir()
	check := func(t *testing.T, text string, cmd ...string) {
		t.Helper()
		f := filepath.Join(dir, "rules")
		if err := os.WriteFile(f, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		n.run(t, append(cmd, f)...)
	}
	for _, name := range []string{"nftables-redirect.nft", "nftables-tproxy.nft"} {
		t.Run(name, func(t *testing.T) {
			requireTool(t, "nft")
			check(t, tgRenderNft(t, name, v), "nft", "-c", "-f")
			lv := v
			lv.LocalIntercept, lv.Bypass = strings.Contains(name, "redirect"), "192.0.2.0/24"
			check(t, tgRenderNft(t, name, lv), "nft", "-c", "-f")
		})
	}
	for _, name := range []string{"iptables-redirect.rules", "iptables-tproxy.rules"} {
		t.Run(name, func(t *testing.T) {
			for _, tool := range []string{"iptables-restore", "ip6tables-restore"} {
				requireTool(t, tool)
				check(t, tgRenderIptables(t, name, v), tool, "--noflush", "--test")
			}
			lv := v
			lv.LocalIntercept, lv.Bypass = strings.Contains(name, "redirect"), "192.0.2.0/24"
			check(t, tgRenderIptables(t, name, lv), "iptables-restore", "--noflush", "--test")
		})
	}
	t.Run("tproxy-routing.sh", func(t *testing.T) {
		requireTool(t, "sh")
		n.run(t, "sh", "-n", filepath.Join("..", "deploy", "gateway", "tproxy-routing.sh"))
	})
}

// TestTransparentGateway proves transparent interception end to end, per
// rule set of deploy/gateway: a workstation's HTTP and HTTPS to a listed
// name are blocked (block page, or a TLS alert without the CA), an
// unlisted name and an authorized address reach the origin through
// Balise, the server name decides rather than the address, no_sni works
// both ways, QUIC does not cross the gateway, Balise's own connections
// never loop, the transparent ports refuse direct connections, and the
// bypass set goes around Balise.
func TestTransparentGateway(t *testing.T) {
	requireRoot(t)
	requireTool(t, "ip")
	requireTool(t, "curl")
	requireTool(t, "setpriv")
	for _, tc := range []struct {
		name, mode, tool string
		apply            func(t *testing.T, l *tgLab, v tgRuleVars)
	}{
		{"nftables-redirect", "redirect", "nft", func(t *testing.T, l *tgLab, v tgRuleVars) {
			l.apply(t, tgRenderNft(t, "nftables-redirect.nft", v), "nft", "-f")
		}},
		{"nftables-tproxy", "tproxy", "nft", func(t *testing.T, l *tgLab, v tgRuleVars) {
			l.apply(t, tgRenderNft(t, "nftables-tproxy.nft", v), "nft", "-f")
			l.gw.run(t, "env", "TPROXY_MARK="+v.Mark, "sh", filepath.Join("..", "deploy", "gateway", "tproxy-routing.sh"), "add")
		}},
		{"iptables-redirect", "redirect", "iptables-restore", func(t *testing.T, l *tgLab, v tgRuleVars) {
			l.apply(t, tgRenderIptables(t, "iptables-redirect.rules", v), "iptables-restore", "--noflush")
			v.Bypass = "" // the same file for IPv6, without IPv4 addresses
			l.apply(t, tgRenderIptables(t, "iptables-redirect.rules", v), "ip6tables-restore", "--noflush")
		}},
		{"iptables-tproxy", "tproxy", "iptables-restore", func(t *testing.T, l *tgLab, v tgRuleVars) {
			l.apply(t, tgRenderIptables(t, "iptables-tproxy.rules", v), "iptables-restore", "--noflush")
			v.Bypass = ""
			l.apply(t, tgRenderIptables(t, "iptables-tproxy.rules", v), "ip6tables-restore", "--noflush")
			l.gw.run(t, "env", "TPROXY_MARK="+v.Mark, "sh", filepath.Join("..", "deploy", "gateway", "tproxy-routing.sh"), "add")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			requireTool(t, tc.tool)
			tgGateway(t, tc.mode, tc.apply)
		})
	}
}

func tgGateway(t *testing.T, mode string, apply func(*testing.T, *tgLab, tgRuleVars)) {
	l := newTGLab(t)

	// Plumbing, before any rule: the workstation reaches the origins
	// directly (the origin sees the workstation's own address).
	if code, status, body := l.curl(t, tgPersonnel, "--resolve", tgUnlisted+":80:"+tgUnlistedIP, "http://"+tgUnlisted+"/"); code != 0 || status != "200" || !strings.Contains(body, "from="+tgPersonnel) {
		t.Fatalf("before the rules, HTTP from the workstation = curl %d, %s %q; want 200 from %s", code, status, body, tgPersonnel)
	}
	if code, status, body := l.curl(t, tgPersonnel6, "--resolve", tgUnlisted+":80:["+tgUnlistedIP6+"]", "http://"+tgUnlisted+"/"); code != 0 || status != "200" || !strings.Contains(body, "from="+tgPersonnel6) {
		t.Fatalf("before the rules, IPv6 HTTP from the workstation = curl %d, %s %q; want 200 from %s", code, status, body, tgPersonnel6)
	}
	if !l.udpPasses(t, tgPersonnel, "443") {
		t.Fatal("before the rules, UDP 443 does not reach the internet namespace: the QUIC check would prove nothing")
	}

	// Balise runs as root here, so root is the account the loop guard
	// exempts; the gateway's own test client runs as nobody.
	apply(t, l, tgRuleVars{WSIf: l.wsIf, BaliseUser: "root", Mark: "0x1", LocalIntercept: mode == "redirect", Bypass: tgBypass + "/32"})

	t.Run("QUIC dropped", func(t *testing.T) {
		if l.udpPasses(t, tgPersonnel, "443") {
			t.Error("a UDP 443 datagram from a workstation crossed the gateway")
		}
		if !l.udpPasses(t, tgPersonnel, "4443") {
			t.Error("a UDP 4443 datagram from a workstation did not cross the gateway: the rule set drops more than QUIC")
		}
		if !l.udpPasses(t, tgBypass, "443") {
			t.Error("a UDP 443 datagram from the bypass set did not cross the gateway")
		}
	})

	resolver := l.startStubDNS(t)
	caDir := t.TempDir()
	if out, errs, code := runBalise(t, "ca", "init", "--out", caDir); code != 0 {
		t.Fatalf("balise ca init = %d\n%s%s", code, out, errs)
	}
	caPEM := filepath.Join(caDir, "ca.pem")
	listedHTTP := "http://" + tgListed + "/"
	listedHTTPS := "https://" + tgListed + "/"
	resolve80 := tgListed + ":80:" + tgListedIP
	resolve443 := tgListed + ":443:" + tgListedIP

	// Without the institution's CA, a blocked HTTPS connection ends with a
	// TLS alert: no certificate, no response, no hang. With no_sni =
	// "deny", so does a ClientHello without a server name.
	in := l.startBalise(t, tgConfig(resolver, mode, `no_sni = "deny"`))
	tgRequireTransparent(t, in)
	t.Run("HTTPS blocked without CA", func(t *testing.T) {
		l.wantTLSAlert(t, tgListed, tgListedIP+":443")
		if code, status, body := l.curl(t, tgPersonnel, "--resolve", resolve443, "--cacert", l.originCA, listedHTTPS); code == 0 || status != "000" || strings.Contains(body, "origin ") {
			t.Errorf("curl HTTPS to the listed name without CA = curl %d, %s %q; want a TLS failure and no response", code, status, body)
		}
	})
	t.Run("HTTPS without SNI denied", func(t *testing.T) {
		l.wantTLSAlert(t, "", tgUnlistedIP+":443")
	})
	if code := in.Stop(); code != 0 {
		t.Fatalf("balise exited with %d", code)
	}

	in = l.startBalise(t, tgConfig(resolver, mode, fmt.Sprintf("\n[proxy.tls]\nca_cert = %q\nca_key = %q\n", caPEM, filepath.Join(caDir, "ca-key.pem"))))
	tgRequireTransparent(t, in)
	viaBalise := "from=" + tgGatewayOut
	for _, c := range []struct {
		name, src      string
		args           []string
		status, inBody string
	}{
		{"HTTP listed blocked", tgPersonnel, []string{"--resolve", resolve80, listedHTTP}, "403", tgService},
		{"HTTPS listed block page", tgPersonnel, []string{"--resolve", resolve443, "--cacert", caPEM, listedHTTPS}, "403", tgService},
		{"HTTP unlisted through Balise", tgPersonnel, []string{"--resolve", tgUnlisted + ":80:" + tgUnlistedIP, "http://" + tgUnlisted + "/"},
			"200", "origin " + tgUnlistedIP + " http host=" + tgUnlisted + " " + viaBalise},
		{"HTTPS unlisted through Balise", tgPersonnel, []string{"--resolve", tgUnlisted + ":443:" + tgUnlistedIP, "--cacert", l.originCA, "https://" + tgUnlisted + "/"},
			"200", "origin " + tgUnlistedIP + " https host=" + tgUnlisted + " " + viaBalise},
		{"HTTP listed allowed for autorises", tgAutorises, []string{"--resolve", resolve80, listedHTTP},
			"200", "origin " + tgListedIP + " http host=" + tgListed + " " + viaBalise},
		{"HTTPS listed allowed for autorises", tgAutorises, []string{"--resolve", resolve443, "--cacert", l.originCA, listedHTTPS},
			"200", "origin " + tgListedIP + " https host=" + tgListed + " " + viaBalise},
		// The server name decides, not the address: a listed name sent
		// to the unlisted name's address is still blocked.
		{"HTTPS listed SNI to an unlisted address", tgPersonnel, []string{"--resolve", tgListed + ":443:" + tgUnlistedIP, "--cacert", caPEM, listedHTTPS}, "403", tgService},
		{"HTTPS listed SNI to an unlisted address for autorises", tgAutorises, []string{"--resolve", tgListed + ":443:" + tgUnlistedIP, "--cacert", l.originCA, listedHTTPS},
			"200", "origin " + tgUnlistedIP + " https host=" + tgListed + " " + viaBalise},
		// no_sni = "allow" (default): decided on the destination address.
		{"HTTPS without SNI allowed", tgPersonnel, []string{"-k", "https://" + tgUnlistedIP + "/"},
			"200", "origin " + tgUnlistedIP + " https host=" + tgUnlistedIP + " " + viaBalise},
		// IPv6 (IP6T_SO_ORIGINAL_DST, or TPROXY over IPv6).
		{"IPv6 HTTP listed blocked", tgPersonnel6, []string{"--resolve", tgListed + ":80:[" + tgListedIP6 + "]", listedHTTP}, "403", tgService},
		{"IPv6 HTTPS listed block page", tgPersonnel6, []string{"--resolve", tgListed + ":443:[" + tgListedIP6 + "]", "--cacert", caPEM, listedHTTPS}, "403", tgService},
		{"IPv6 HTTP unlisted through Balise", tgPersonnel6, []string{"--resolve", tgUnlisted + ":80:[" + tgUnlistedIP6 + "]", "http://" + tgUnlisted + "/"},
			"200", "origin " + tgUnlistedIP6 + " http host=" + tgUnlisted + " from=" + tgGatewayOut6},
		{"IPv6 HTTPS unlisted through Balise", tgPersonnel6, []string{"--resolve", tgUnlisted + ":443:[" + tgUnlistedIP6 + "]", "--cacert", l.originCA, "https://" + tgUnlisted + "/"},
			"200", "origin " + tgUnlistedIP6 + " https host=" + tgUnlisted + " from=" + tgGatewayOut6},
		// The bypass set goes around Balise: the origin sees the
		// workstation itself.
		{"bypass set not redirected", tgBypass, []string{"--resolve", resolve80, listedHTTP}, "200", "from=" + tgBypass},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, status, body := l.curl(t, c.src, c.args...)
			if code != 0 || status != c.status || !strings.Contains(body, c.inBody) {
				t.Errorf("curl from %s %v = curl %d, %s %.300q; want %s with %q", c.src, c.args, code, status, body, c.status, c.inBody)
			}
		})
	}
	// A workstation connecting to the transparent ports directly would
	// have Balise connect to itself: the rule sets refuse it.
	t.Run("transparent ports not reachable directly", func(t *testing.T) {
		for _, u := range []string{"http://" + tgGatewayWS + ":3129/", "https://" + tgGatewayWS + ":3130/"} {
			if code, status, body := l.curl(t, tgPersonnel, "-k", u); code != 7 {
				t.Errorf("curl %s from the workstation = curl %d, %s %.200q; want 7 (connection refused)", u, code, status, body)
			}
		}
	})
	if mode == "redirect" {
		// The gateway's own processes, redirected by the local-intercept
		// rules, reach the origin through Balise; Balise's own
		// connections are exempt, or this would loop (HTTP: a 502 on its
		// own Via header).
		t.Run("local process through Balise without loop", func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			out, err := l.gw.cmd(ctx, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
				"curl", "-sS", "--max-time", "10", "--resolve", tgUnlisted+":80:"+tgUnlistedIP, "http://"+tgUnlisted+"/").CombinedOutput()
			if err != nil || !strings.Contains(string(out), "origin "+tgUnlistedIP+" http host="+tgUnlisted+" "+viaBalise) || strings.Contains(string(out), "via=-") {
				t.Errorf("curl as nobody on the gateway = %v\n%s\nwant the origin, through Balise (with a Via header)", err, out)
			}
		})
	}
	// Decisions about the listed service are logged, with the transparent
	// front and the workstation's address; unlisted browsing never is.
	t.Run("decision log", func(t *testing.T) {
		found := false
		for _, line := range in.Lines() {
			if line.Msg() != "decision" {
				continue
			}
			if h := line.Str("host"); h != tgListed {
				t.Errorf("decision line about %q, want only %s: %v", h, tgListed, line)
			}
			if line.Str("front") == "transparent" && line.Str("client") == tgPersonnel && line.Str("verdict") == "block" {
				found = true
			}
		}
		if !found {
			t.Errorf("no decision line front=transparent client=%s verdict=block host=%s", tgPersonnel, tgListed)
		}
	})
	t.Run("metrics", func(t *testing.T) {
		m := l.metrics(t, in)
		for _, c := range []struct {
			name   string
			labels []string
			min    float64
		}{
			{"balise_proxy_requests_total", []string{"mode=transparent", "kind=http", "verdict=block"}, 1},
			{"balise_proxy_requests_total", []string{"mode=transparent", "kind=connect", "verdict=block"}, 1},
			{"balise_proxy_requests_total", []string{"mode=transparent", "kind=connect", "verdict=allow"}, 1},
			{"balise_proxy_interceptions_total", nil, 2},
			{"balise_proxy_sni_mismatch_total", []string{"mode=transparent"}, 1},
		} {
			if v := tgMetricSum(m, c.name, c.labels...); v < c.min {
				t.Errorf("gateway %s%v = %v, want >= %v", c.name, c.labels, v, c.min)
			}
		}
	})
}

// tgMetricSum adds up every sample of metric name whose labels include
// every "key=value" of labels, in a Prometheus text exposition.
func tgMetricSum(text, name string, labels ...string) float64 {
	var sum float64
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name) {
			continue
		}
		if v, ok := metricValue(line, name, labels...); ok {
			sum += v
		}
	}
	return sum
}
