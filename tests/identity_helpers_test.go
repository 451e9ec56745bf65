package tests

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/balise-net/balise/internal/adtest"
)

// ad is the one Samba AD domain controller of this test binary, started
// by the first identity test and stopped by TestMain.
var ad adtest.Shared

// idPassword is every test user's password.
const idPassword = "Motdepasse-2026"

// idDomain is the test domain as the identity tests use it: the DC, the
// proxy's service account and keytab, the service account Balise binds
// to the directory with, and the users:
//
//   - alice is in "comm-web", itself a member of "communications": she
//     belongs to the authorized group only through a nested group;
//   - bob, carol and dave are in no group of the policy (carol and dave
//     are never looked up before the directory goes down);
//   - "redaction" is a group nobody is in, named by a rule for videotest
//     so that videotest's verdict depends on who asks.
type idDomain struct {
	dc       *adtest.DC
	realm    string // BALISE.TEST
	proxy    string // proxy.balise.test: the name clients use for the proxy
	spn      string // HTTP/proxy.balise.test
	keytab   string
	bindDN   string
	bindFile string // the bind password, one line

	mu    sync.Mutex
	creds map[string]adtest.Credentials
}

var (
	idOnce   sync.Once
	idShared *idDomain
	idErr    error
)

// idSetup returns the test domain, provisioning users, groups and the
// proxy's service principal on the shared DC the first time. It skips (or
// fails under BALISE_E2E=1) where a DC cannot run.
func idSetup(t *testing.T) *idDomain {
	t.Helper()
	dc := ad.DC(t)
	if err := dc.Start(); err != nil { // a test that stopped it and failed
		t.Fatal(err)
	}
	idOnce.Do(func() { idShared, idErr = idProvision(dc) })
	if idErr != nil {
		t.Fatal(idErr)
	}
	return idShared
}

func idProvision(dc *adtest.DC) (*idDomain, error) {
	lower := strings.ToLower(dc.Realm())
	d := &idDomain{dc: dc, realm: dc.Realm(), proxy: "proxy." + lower, spn: "HTTP/proxy." + lower,
		keytab: filepath.Join(dc.Dir(), "proxy.keytab"), bindFile: filepath.Join(dc.Dir(), "bind-password"),
		creds: map[string]adtest.Credentials{}}
	if err := dc.AddService("svc-proxy", d.spn, d.keytab); err != nil {
		return nil, err
	}
	var err error
	if d.bindDN, err = dc.AddUser("svc-balise", "Bind-"+idPassword); err != nil {
		return nil, err
	}
	if err := os.WriteFile(d.bindFile, []byte("Bind-"+idPassword+"\n"), 0o600); err != nil {
		return nil, err
	}
	for _, u := range []string{"alice", "bob", "carol", "dave"} {
		if _, err := dc.AddUser(u, idPassword); err != nil {
			return nil, err
		}
	}
	for _, g := range []string{"communications", "comm-web", "redaction"} {
		if _, err := dc.AddGroup(g); err != nil {
			return nil, err
		}
	}
	if err := dc.AddMembers("comm-web", "alice"); err != nil {
		return nil, err
	}
	if err := dc.AddMembers("communications", "comm-web"); err != nil {
		return nil, err
	}
	return d, nil
}

// login returns user's credentials (kinit once per test binary).
func (d *idDomain) login(t *testing.T, user string) adtest.Credentials {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	if c, ok := d.creds[user]; ok {
		return c
	}
	c, err := d.dc.Kinit(user, idPassword)
	if err != nil {
		t.Fatal(err)
	}
	d.creds[user] = c
	return c
}

// serviceTicket puts a ticket for the proxy in user's credential cache
// (MIT kvno), so that user can authenticate while the KDC is down.
func (d *idDomain) serviceTicket(t *testing.T, cr adtest.Credentials) {
	t.Helper()
	cmd := exec.Command("kvno", d.spn)
	cmd.Env = append(os.Environ(), cr.Env()...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kvno %s for %s: %v\n%s", d.spn, cr.Principal, err, out)
	}
}

// idSites serves the test sites: social.test, video.test and
// intranet.test all resolve to 127.0.0.1 (the upstream of the DNS filter
// and the proxy's resolver), where one plain-HTTP and one HTTPS origin
// answer "hello from HOST".
type idSites struct {
	dns      string // resolver address
	httpPort string
	tlsPort  string
}

// idStartSites starts the resolver and the two origins.
func idStartSites(t *testing.T) idSites {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	zones := []string{"social.test.", "video.test.", "blog.test.", "intranet.test."}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		name := strings.ToLower(q.Name)
		m.Rcode = dns.RcodeNameError
		for _, z := range zones {
			if name == z || strings.HasSuffix(name, "."+z) {
				m.Rcode = dns.RcodeSuccess
				if q.Qtype == dns.TypeA {
					m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300},
						A: net.IPv4(127, 0, 0, 1)})
				}
			}
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	hello := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.Host)
		if host == "" {
			host = r.Host
		}
		fmt.Fprintf(w, "<html><head><title>%s</title></head><body>hello from %s</body></html>\n", host, host)
	})
	plain := httptest.NewServer(hello)
	t.Cleanup(plain.Close)
	tlsSrv := httptest.NewTLSServer(hello)
	t.Cleanup(tlsSrv.Close)
	port := func(s *httptest.Server) string {
		_, p, _ := net.SplitHostPort(s.Listener.Addr().String())
		return p
	}
	return idSites{dns: pc.LocalAddr().String(), httpPort: port(plain), tlsPort: port(tlsSrv)}
}

// idOptions vary the configuration of idConfig.
type idOptions struct {
	CacheTTL string // directory.cache_ttl (default "10m")
	Timeout  string // directory.timeout (default "2s")
	Auth     string // proxy.auth.mode (default "negotiate")
}

// idConfig is the configuration under test: the proxy with Negotiate
// for 127.0.0.0/8, the DC's directory over LDAPS, identity with a
// pseudonym in decision lines, the register, and the policy:
// socialtest for the directory group "communications" (and the network
// group of 127.0.0.4), videotest for "redaction", blogtest for nobody;
// intranet.test is not listed.
func (d *idDomain) config(s idSites, o idOptions) string {
	if o.CacheTTL == "" {
		o.CacheTTL = "10m"
	}
	if o.Timeout == "" {
		o.Timeout = "2s"
	}
	if o.Auth == "" {
		o.Auth = "negotiate"
	}
	return fmt.Sprintf(`default_action = "block"

[metrics]
listen = "127.0.0.1:0"

[dns]
listen = "127.0.0.1:0"
upstreams = [%[1]q]
allowed_clients = ["127.0.0.0/8"]

[proxy]
listen = "127.0.0.1:0"
resolver = %[1]q
allowed_clients = ["127.0.0.0/8"]
connect_ports = [443, %[2]s]
# The test sites listen on loopback, which the proxy otherwise refuses.
allow_destinations = ["127.0.0.0/8"]

[proxy.auth]
mode = %[3]q
keytab = %[4]q
service_principal = %[5]q
clients = ["127.0.0.0/8"]

[directory]
url = %[6]q
ca_file = %[7]q
bind_dn = %[8]q
bind_password_file = %[9]q
base_dn = %[10]q
cache_ttl = %[11]q
timeout = %[12]q

[identity]
binding_ttl = "30m"
shared_after = 2
log = "pseudonym"
`, s.dns, s.tlsPort, o.Auth, d.keytab, d.spn, d.dc.LDAPSURL(), d.dc.CAFile(), d.bindDN, d.bindFile,
		d.dc.BaseDN(), o.CacheTTL, o.Timeout) + exceptionsConfig + `
[[list]]
name = "videotest"
display_name = "Video Test"
category = "media-sharing"
domains = ["video.test"]

[[list]]
name = "blogtest"
display_name = "Blog Test"
category = "microblogging"
domains = ["blog.test"]

[[group]]
name = "communications"
directory_groups = ["communications"]

[[group]]
name = "redaction"
directory_groups = ["redaction"]

[[group]]
name = "poste-comm"
networks = ["127.0.0.4/32"]

[[rule]]
name = "communications"
groups = ["communications", "poste-comm"]
services = ["socialtest"]
action = "allow"

[[rule]]
name = "redaction"
groups = ["redaction"]
services = ["videotest"]
action = "allow"
`
}

// idStart starts Balise with the configuration and checks that both
// front-ends listen.
func (d *idDomain) start(t *testing.T, s idSites, o idOptions) *instance {
	t.Helper()
	in := startBalise(t, d.config(s, o))
	exRequireFrontEnds(t, in)
	return in
}

// curlResult is what one curl through the proxy gave.
type curlResult struct {
	Code    int    // the response's status (0: none)
	Connect int    // the CONNECT's status (0: no CONNECT)
	Header  string // every header block received, CONNECT's included
	Body    string
	Exit    int  // curl's exit code
	Reused  bool // the request went over an already open connection
	Stderr  string
	Elapsed time.Duration
}

// HasNegotiateChallenge reports whether a Proxy-Authenticate: Negotiate
// header was received.
func (r curlResult) HasNegotiateChallenge() bool {
	for _, l := range strings.Split(r.Header, "\n") {
		k, v, ok := strings.Cut(l, ":")
		if ok && strings.EqualFold(strings.TrimSpace(k), "Proxy-Authenticate") &&
			strings.HasPrefix(strings.TrimSpace(v), "Negotiate") {
			return true
		}
	}
	return false
}

// ProxyAuthenticate reports whether any Proxy-Authenticate header was
// received.
func (r curlResult) ProxyAuthenticate() bool {
	return strings.Contains(strings.ToLower(r.Header), "\nproxy-authenticate:") ||
		strings.HasPrefix(strings.ToLower(r.Header), "proxy-authenticate:")
}

func (r curlResult) String() string {
	return fmt.Sprintf("status %d (CONNECT %d), curl exit %d %s\nheaders:\n%s\nbody: %.300q",
		r.Code, r.Connect, r.Exit, strings.TrimSpace(r.Stderr), strings.TrimSpace(r.Header), r.Body)
}

// curl fetches url through the proxy, addressed by its name (mapped to
// its loopback address), from source address src; with cr set it
// authenticates with Negotiate (curl --proxy-negotiate -U :). Extra
// arguments follow.
func (d *idDomain) curl(t *testing.T, in *instance, src string, cr *adtest.Credentials, url string, extra ...string) curlResult {
	t.Helper()
	return d.curlAfter(t, in, src, cr, "", url, extra...)
}

// curlAfter is curl, preceded when first is not "" by a GET of first in
// the same curl run (--next), so that url goes over the connection first
// opened and authenticated, as a browser's next request would.
// curlResult.Reused tells whether it did.
func (d *idDomain) curlAfter(t *testing.T, in *instance, src string, cr *adtest.Credentials, first, url string, extra ...string) curlResult {
	t.Helper()
	_, port, _ := net.SplitHostPort(in.Addr("proxy"))
	dir := t.TempDir()
	hdr, body := filepath.Join(dir, "h"), filepath.Join(dir, "b")
	base := []string{"-sS", "--max-time", "15", "-k",
		"-x", "http://" + d.proxy + ":" + port, "--resolve", d.proxy + ":" + port + ":127.0.0.1",
		"--interface", src}
	env := os.Environ()
	if cr != nil {
		base = append(base, "--proxy-negotiate", "-U", ":")
		env = append(env, cr.Env()...)
	}
	var args []string
	if first != "" {
		args = append(append(args, base...), "-o", os.DevNull, first, "--next")
	}
	args = append(append(args, base...), "-D", hdr, "-o", body, "-w", "%{http_code} %{http_connect} %{num_connects}")
	args = append(append(args, extra...), url)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "curl", args...)
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	r := curlResult{Elapsed: time.Since(start), Stderr: errb.String()}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("curl: %v", err)
	}
	r.Exit = exitCode(err)
	connects := -1
	fmt.Sscan(out.String(), &r.Code, &r.Connect, &connects)
	r.Reused = connects == 0
	h, _ := os.ReadFile(hdr)
	b, _ := os.ReadFile(body)
	r.Header, r.Body = strings.ReplaceAll(string(h), "\r", ""), string(b)
	return r
}

// dig asks the DNS filter for name's A records from source address src
// (dig -b) and returns the answer's addresses and rcode.
func idDig(t *testing.T, in *instance, src, name string) ([]string, string) {
	t.Helper()
	host, port, _ := net.SplitHostPort(in.Addr("dns-udp"))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "dig", "@"+host, "-p", port, "-b", src, "+tries=2", "+time=3",
		"+noall", "+comments", "+answer", name, "A").CombinedOutput()
	if err != nil {
		t.Fatalf("dig %s from %s: %v\n%s", name, src, err, out)
	}
	var addrs []string
	rcode := ""
	for _, l := range strings.Split(string(out), "\n") {
		if i := strings.Index(l, "status: "); i >= 0 {
			rcode = strings.TrimSuffix(strings.Fields(l[i+len("status: "):])[0], ",")
		}
		f := strings.Fields(l)
		if len(f) == 5 && f[3] == "A" && !strings.HasPrefix(l, ";") {
			addrs = append(addrs, f[4])
		}
	}
	return addrs, rcode
}

// idDecisions returns the decision lines logged since index from whose
// host is host.
func idDecisions(in *instance, from int, host string) []logLine {
	var out []logLine
	for _, l := range in.Lines()[from:] {
		if l.Msg() == "decision" && l.Str("host") == host {
			out = append(out, l)
		}
	}
	return out
}

// idMetric reads one sample from a fresh /metrics (NaN-free; -1 when
// absent).
func idMetric(in *instance, name string, labels ...string) float64 {
	v, ok := in.MetricValue(name, labels...)
	if !ok {
		return -1
	}
	return v
}

// idArtifactDir is where screenshots go: $BALISE_ARTIFACTS when set,
// else the test's temporary directory.
func idArtifactDir(t *testing.T) string {
	if d := os.Getenv("BALISE_ARTIFACTS"); d != "" {
		if err := os.MkdirAll(d, 0o755); err == nil {
			return d
		}
	}
	return t.TempDir()
}

// idCPU returns the CPU time the process has used so far, summed over its
// threads from /proc (scheduler statistics, nanoseconds; the clock-tick
// counts of /proc/PID/stat when schedstat is missing).
func idCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	if err == nil && len(tasks) > 0 {
		var total time.Duration
		for _, p := range tasks {
			b, err := os.ReadFile(p)
			if err != nil {
				continue // a thread that just ended
			}
			f := strings.Fields(string(b))
			if len(f) > 0 {
				ns, _ := strconv.ParseInt(f[0], 10, 64)
				total += time.Duration(ns)
			}
		}
		return total
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatalf("reading the CPU time of %d: %v", pid, err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// idCostPerRequest runs n requests (curl each, so each is a new
// connection) and returns Balise's CPU time per request.
func (d *idDomain) idCostPerRequest(t *testing.T, in *instance, n int, cr *adtest.Credentials, url string, want int) time.Duration {
	t.Helper()
	pid := in.cmd.Process.Pid
	if r := d.curl(t, in, "127.0.0.1", cr, url); r.Code != want { // warm-up
		t.Fatalf("warm-up %s: %v\nwant %d", url, r, want)
	}
	before := idCPU(t, pid)
	for range n {
		if r := d.curl(t, in, "127.0.0.1", cr, url); r.Code != want {
			t.Fatalf("%s: %v\nwant %d", url, r, want)
		}
	}
	return (idCPU(t, pid) - before) / time.Duration(n)
}

// idEventually retries f every 200 ms until it succeeds or timeout ends.
func idEventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %v after %v", what, err, timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// idQuote is strconv.Quote, for messages.
func idQuote(s string) string { return strconv.Quote(s) }

// idEnvInt reads a positive integer from the environment, def otherwise.
func idEnvInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}
