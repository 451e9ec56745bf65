package adtest

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Options choose the domain a DC serves. The zero value is a usable
// domain BALISE.TEST on a free loopback address.
type Options struct {
	// Addr is the address samba binds. Zero: a free 127.77.X.1, reserved
	// for this process with a lock file so that concurrent test binaries
	// never pick the same one.
	Addr netip.Addr
	// Realm is the Kerberos realm and, lower-cased, the DNS domain. Empty:
	// "BALISE.TEST".
	Realm string
	// Domain is the NetBIOS domain name. Empty: the realm's first label.
	Domain string
	// AdminPassword is the password of the domain's Administrator. Empty:
	// a random one (see DC.AdminPassword).
	AdminPassword string
}

// DC is a running (or stopped) Samba AD domain controller. Its methods are
// safe for concurrent use.
type DC struct {
	addr     netip.Addr
	realm    string
	domain   string
	baseDN   string
	adminPW  string
	dir      string
	caPEM    []byte
	pool     *x509.CertPool
	krb5Conf string
	lock     *os.File

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	counter int
}

// Samba's paths that default outside the target directory; pinning them
// inside lets several DCs run side by side.
func provisionOptions(dir string, addr netip.Addr) []string {
	run := filepath.Join(dir, "run")
	return []string{
		"interfaces=" + addr.String() + "/8",
		"bind interfaces only=yes",
		"server services=ldap kdc",
		"disable netbios=yes",
		"tls enabled=yes",
		"tls certfile=" + filepath.Join(dir, "cert.pem"),
		"tls keyfile=" + filepath.Join(dir, "key.pem"),
		"tls cafile=" + filepath.Join(dir, "ca.pem"),
		"pid directory=" + run,
		"ncalrpc dir=" + filepath.Join(run, "ncalrpc"),
		"winbindd socket directory=" + filepath.Join(run, "winbindd"),
		"ntp signd socket directory=" + filepath.Join(run, "ntp_signd"),
		"log file=" + filepath.Join(dir, "log.%m"),
	}
}

// New provisions a domain and starts its DC, ready when LDAPS answers an
// administrator bind and the KDC issues a ticket. The caller must Close it.
func New(opts Options) (*DC, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	realm := strings.ToUpper(opts.Realm)
	if realm == "" {
		realm = "BALISE.TEST"
	}
	domain := strings.ToUpper(opts.Domain)
	if domain == "" {
		domain, _, _ = strings.Cut(realm, ".")
	}
	dc := &DC{realm: realm, domain: domain, adminPW: opts.AdminPassword}
	if dc.adminPW == "" {
		dc.adminPW = fmt.Sprintf("Adm-%x!", rand.Uint64())
	}
	for _, label := range strings.Split(strings.ToLower(realm), ".") {
		dc.baseDN += ",DC=" + label
	}
	dc.baseDN = dc.baseDN[1:]
	var err error
	if dc.addr, dc.lock, err = reserve(opts.Addr); err != nil {
		return nil, err
	}
	// A short path: samba's unix sockets live under it (108-byte limit).
	if dc.dir, err = os.MkdirTemp("", "balise-ad-"); err != nil {
		dc.release()
		return nil, fmt.Errorf("adtest: %w", err)
	}
	if err := dc.provision(opts); err != nil {
		dc.release()
		return nil, err
	}
	if err := dc.Start(); err != nil {
		dc.Close()
		return nil, err
	}
	if err := dc.relaxPasswordPolicy(); err != nil {
		dc.Close()
		return nil, err
	}
	return dc, nil
}

func (dc *DC) provision(opts Options) error {
	if err := os.MkdirAll(filepath.Join(dc.dir, "run"), 0o755); err != nil {
		return fmt.Errorf("adtest: %w", err)
	}
	lower := strings.ToLower(dc.realm)
	var err error
	dc.caPEM, err = writeCerts(dc.dir, dc.addr, "dc1."+lower, lower)
	if err != nil {
		return err
	}
	dc.pool = x509.NewCertPool()
	dc.pool.AppendCertsFromPEM(dc.caPEM)
	args := []string{"domain", "provision",
		"--realm", dc.realm, "--domain", dc.domain, "--adminpass", dc.adminPW,
		"--targetdir", filepath.Join(dc.dir, "dc"), "--use-rfc2307", "--server-role", "dc",
		"--dns-backend", "SAMBA_INTERNAL", "--host-name", "dc1", "--host-ip", dc.addr.String(),
	}
	for _, o := range provisionOptions(dc.dir, dc.addr) {
		args = append(args, "--option", o)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "samba-tool", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("adtest: samba-tool domain provision: %v\n%s", err, tail(out))
	}
	dc.krb5Conf = filepath.Join(dc.dir, "krb5.conf")
	conf := fmt.Sprintf(`[libdefaults]
	default_realm = %[1]s
	dns_lookup_kdc = false
	dns_lookup_realm = false
	dns_canonicalize_hostname = false
	rdns = false
	udp_preference_limit = 1
	default_ccache_name = FILE:%[4]s

[realms]
	%[1]s = {
		kdc = %[2]s
		admin_server = %[2]s
	}

[domain_realm]
	.%[3]s = %[1]s
	%[3]s = %[1]s
`, dc.realm, dc.addr, lower, filepath.Join(dc.dir, "ccache-default"))
	return os.WriteFile(dc.krb5Conf, []byte(conf), 0o644)
}

// Start runs samba on the provisioned domain and waits until it is ready.
// Starting a running DC does nothing.
func (dc *DC) Start() error {
	dc.mu.Lock()
	defer dc.mu.Unlock()
	if dc.cmd != nil {
		return nil
	}
	logPath := filepath.Join(dc.dir, "samba.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("adtest: %w", err)
	}
	cmd := exec.Command("samba", "-i", "-M", "single", "-s", filepath.Join(dc.dir, "dc", "etc", "smb.conf"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("adtest: samba: %w", err)
	}
	logf.Close()
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	dc.cmd, dc.exited = cmd, exited
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := dc.ready()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			dc.cmd = nil
			out, _ := os.ReadFile(logPath)
			return fmt.Errorf("adtest: samba exited before it was ready: %v\n%s", cmd.ProcessState, tail(out))
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			dc.stopLocked()
			out, _ := os.ReadFile(logPath)
			return fmt.Errorf("adtest: samba not ready after 60 s: %v\n%s", err, tail(out))
		}
	}
}

// ready checks that LDAPS accepts the administrator and the KDC issues
// the administrator a ticket.
func (dc *DC) ready() error {
	c, err := dc.admin()
	if err != nil {
		return err
	}
	c.Close()
	_, err = dc.kinit("Administrator", dc.adminPW, filepath.Join(dc.dir, "ccache-admin"))
	return err
}

// Stop ends samba (its whole process group), as a DC going down would.
// The domain stays provisioned: Start brings it back.
func (dc *DC) Stop() {
	dc.mu.Lock()
	defer dc.mu.Unlock()
	dc.stopLocked()
}

func (dc *DC) stopLocked() {
	if dc.cmd == nil {
		return
	}
	pgid := dc.cmd.Process.Pid
	syscall.Kill(-pgid, syscall.SIGCONT)
	syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-dc.exited:
	case <-time.After(10 * time.Second):
		syscall.Kill(-pgid, syscall.SIGKILL)
		<-dc.exited
	}
	// Children samba left in its group.
	syscall.Kill(-pgid, syscall.SIGKILL)
	dc.cmd = nil
}

// Pause freezes samba (SIGSTOP): connections are still accepted by the
// kernel but never answered, as with a DC that hangs or a network that
// drops packets. Resume undoes it.
func (dc *DC) Pause() {
	dc.mu.Lock()
	defer dc.mu.Unlock()
	if dc.cmd != nil {
		syscall.Kill(-dc.cmd.Process.Pid, syscall.SIGSTOP)
	}
}

// Resume lets a paused samba run again.
func (dc *DC) Resume() {
	dc.mu.Lock()
	defer dc.mu.Unlock()
	if dc.cmd != nil {
		syscall.Kill(-dc.cmd.Process.Pid, syscall.SIGCONT)
	}
}

// Close stops the DC, removes its directory and frees its address.
func (dc *DC) Close() error {
	dc.Stop()
	dc.release()
	return nil
}

func (dc *DC) release() {
	if dc.dir != "" {
		os.RemoveAll(dc.dir)
	}
	if dc.lock != nil {
		// The file stays: removing it would let two processes lock two
		// files of the same name.
		dc.lock.Close()
		dc.lock = nil
	}
}

// reserve picks the DC's address: want if valid, else a free 127.77.X.1.
// A lock file held for the DC's life keeps other processes off it; a
// trial bind of LDAP's port catches a samba that outlived its test.
func reserve(want netip.Addr) (netip.Addr, *os.File, error) {
	dir := filepath.Join(os.TempDir(), "balise-adtest")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return netip.Addr{}, nil, fmt.Errorf("adtest: %w", err)
	}
	try := func(a netip.Addr) *os.File {
		f, err := os.OpenFile(filepath.Join(dir, a.String()+".lock"), os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			return nil
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
			f.Close()
			return nil
		}
		for _, port := range []string{"88", "389", "636"} {
			l, err := net.Listen("tcp", net.JoinHostPort(a.String(), port))
			if err != nil {
				f.Close()
				return nil
			}
			l.Close()
		}
		return f
	}
	if want.IsValid() {
		if f := try(want); f != nil {
			return want, f, nil
		}
		return netip.Addr{}, nil, fmt.Errorf("adtest: %s is in use", want)
	}
	start := rand.IntN(254)
	for i := range 254 {
		a := netip.AddrFrom4([4]byte{127, 77, byte((start+i)%254 + 1), 1})
		if f := try(a); f != nil {
			return a, f, nil
		}
	}
	return netip.Addr{}, nil, errors.New("adtest: no free address in 127.77.0.0/16")
}

// Available reports why a DC cannot run here: not root, or samba,
// samba-tool or kinit missing. Nil means New can be tried.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("adtest: samba needs root")
	}
	for _, tool := range []string{"samba", "samba-tool", "kinit"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("adtest: %s is not installed (Debian packages samba-ad-dc, krb5-user)", tool)
		}
	}
	return nil
}

// tail returns the last lines of a command's output, for errors.
func tail(out []byte) []byte {
	const max = 3000
	out = bytes.TrimSpace(out)
	if len(out) > max {
		out = out[len(out)-max:]
	}
	return out
}
