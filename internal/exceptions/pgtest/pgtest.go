// Package pgtest starts a real PostgreSQL server for Balise's tests:
// initdb into a temporary directory, then postgres on a unix socket in that
// directory and on 127.0.0.1 at a free port. PostgreSQL refuses to run as
// root, so under root both run as the "postgres" user, which owns the
// directory. Tests skip when PostgreSQL is not installed, and fail then
// when BALISE_E2E=1.
package pgtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Server is a running PostgreSQL test server.
type Server struct {
	bin, dir string
	// Port is the TCP port on 127.0.0.1.
	Port int
	cred *syscall.Credential
	cmd  *exec.Cmd
	done chan struct{}
	dbs  atomic.Int64
	// durable keeps fsync and synchronous commits on (for benchmarks).
	durable bool
}

// Bin finds PostgreSQL's server programs (Debian keeps them out of PATH).
func Bin() string {
	m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	sort.Strings(m)
	if len(m) > 0 {
		return filepath.Dir(m[len(m)-1])
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p)
	}
	return ""
}

// Start starts a new server; the test is skipped when PostgreSQL is not
// installed, and fails then when BALISE_E2E=1.
func Start(t testing.TB) *Server {
	t.Helper()
	s, err := New()
	if err != nil {
		if s != nil {
			s.Close()
		} else if os.Getenv("BALISE_E2E") != "1" {
			t.Skipf("PostgreSQL not available: %v", err)
		}
		t.Fatalf("PostgreSQL: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// New starts a server tuned for tests (fsync off); Close stops it. It
// returns a nil server and an error when PostgreSQL is not installed, a
// non-nil one (to Close) with an error when it failed to start.
func New() (*Server, error) { return start(false) }

// NewDurable is New with fsync and synchronous commits on, as in
// production, for benchmarks that compare commit latencies.
func NewDurable() (*Server, error) { return start(true) }

func start(durable bool) (*Server, error) {
	bin := Bin()
	if bin == "" {
		return nil, fmt.Errorf("initdb not found (install the postgresql package)")
	}
	s := &Server{bin: bin, durable: durable}
	dir, err := os.MkdirTemp("", "balise-pg-")
	if err != nil {
		return s, err
	}
	s.dir = dir
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return s, fmt.Errorf("running as root needs a postgres user: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			return s, err
		}
	}
	out, err := s.command("initdb", "-D", filepath.Join(dir, "data"), "-U", "postgres", "--auth=trust",
		"--no-sync", "-E", "UTF8", "--locale=C").CombinedOutput()
	if err != nil {
		return s, fmt.Errorf("initdb: %v\n%s", err, out)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return s, err
	}
	s.Port = l.Addr().(*net.TCPAddr).Port
	l.Close()
	return s, s.Start()
}

func (s *Server) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(s.bin, name), args...)
	cmd.Dir = s.dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if s.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	}
	return cmd
}

// Start runs postgres and waits until it accepts connections.
func (s *Server) Start() error {
	log, err := os.OpenFile(filepath.Join(s.dir, "postgres.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	args := []string{"-D", filepath.Join(s.dir, "data"), "-k", s.dir, "-h", "127.0.0.1",
		"-p", strconv.Itoa(s.Port), "-c", "max_connections=200"}
	if !s.durable {
		args = append(args, "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
	}
	cmd := s.command("postgres", args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		return err
	}
	s.cmd, s.done = cmd, make(chan struct{})
	go func() { cmd.Wait(); log.Close(); close(s.done) }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := pgx.Connect(ctx, s.URL("postgres"))
		cancel()
		if err == nil {
			conn.Close(context.Background())
			return nil
		}
		select {
		case <-s.done:
			data, _ := os.ReadFile(filepath.Join(s.dir, "postgres.log"))
			return fmt.Errorf("postgres exited: %s", data)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("postgres did not accept connections: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop shuts the server down (fast shutdown: clients are disconnected).
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd = nil
}

// Close stops the server and removes its directory.
func (s *Server) Close() {
	s.Stop()
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
}

// URL returns the URL of database db over TCP on loopback.
func (s *Server) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.Port, db)
}

// CreateDB creates a fresh database and returns its URL.
func (s *Server) CreateDB(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("balise_%d", s.dbs.Add(1))
	s.Exec(t, "postgres", "CREATE DATABASE "+name)
	return s.URL(name)
}

// Exec runs one statement on database db.
func (s *Server) Exec(t testing.TB, db, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.URL(db))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}
