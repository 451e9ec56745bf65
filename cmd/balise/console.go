package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"time"

	"golang.org/x/term"

	"github.com/balise-net/balise/internal/console"
	"github.com/balise-net/balise/internal/exceptions"
)

// startConsole starts the officer console when the configuration has a
// [console] table: its own listener (TLS unless loopback), sign-in
// through [directory] and console.accounts_file, e-mail through
// console.smtp_url. It needs the exception register (startExceptions).
// Changes to [console] take effect at the next restart.
func startConsole(ctx context.Context, rt *runtime) error {
	cc := rt.cfg.Console
	if cc == nil {
		return nil
	}
	web, ok := rt.exceptions.(*exceptions.Web)
	if !ok || web == nil {
		return errors.New("console: needs the exception register ([exceptions])")
	}
	opt := console.Options{
		Register: web.Register(), AccountsFile: cc.AccountsFile,
		Officers: cc.Officers, Auditors: cc.Auditors, SessionIdle: cc.SessionIdle,
		Insecure: cc.TLSCert == "", Location: rt.cfg.Location, NotifyTo: cc.NotifyTo,
		ServiceName: func(id string) string {
			if s, ok := rt.policy.Load().LookupService(id); ok && s.Name != "" {
				return s.Name
			}
			return id
		},
		Clock: rt.now, Logger: rt.log,
	}
	if rt.identity != nil && rt.cfg.Proxy.Auth.Mode == "negotiate" {
		// Single sign-on with the proxy's keytab: it must also hold the
		// console's SPN (HTTP/<the console's name>).
		opt.Negotiate = func(h string, c netip.Addr) (string, error) {
			v, err := rt.identity.Verify(h, c)
			return v.User, err
		}
	}
	var closers []func()
	closeAll := func() {
		for _, f := range closers {
			f()
		}
	}
	if rt.identity != nil {
		// The one directory client (startIdentity builds it whenever
		// there is a [directory]): one connection, one cache, and the
		// console's sign-ins in balise_directory_authentications_total.
		if dir := rt.identity.Directory(); dir != nil {
			opt.Directory = dir
		}
	}
	if cc.SMTPURL != "" {
		m, err := console.NewMailer(console.MailerOptions{URL: cc.SMTPURL, Logger: rt.log})
		if err != nil {
			closeAll()
			return fmt.Errorf("console: %w", err)
		}
		opt.Mailer = m
		rt.wg.Go(func() { m.Run(ctx) })
	}
	var tcfg *tls.Config
	if cc.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cc.TLSCert, cc.TLSKey)
		if err != nil {
			closeAll()
			return fmt.Errorf("console: tls_cert/tls_key: %w", err)
		}
		tcfg = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	if len(cc.Listen) > 0 {
		if host, port, err := net.SplitHostPort(cc.Listen[0]); err == nil && host != "" && host != "0.0.0.0" && host != "::" {
			scheme := "https"
			if tcfg == nil {
				scheme = "http"
			}
			opt.BaseURL = scheme + "://" + net.JoinHostPort(host, port) + "/"
		}
	}
	con, err := console.New(opt)
	if err != nil {
		closeAll()
		return err
	}
	var servers []*http.Server
	for _, a := range cc.Listen {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			for _, s := range servers {
				s.Close()
			}
			closeAll()
			return fmt.Errorf("console: %w", err)
		}
		rt.addListeners(ln.Addr())
		if tcfg != nil {
			ln = tls.NewListener(ln, tcfg)
		}
		srv := &http.Server{Handler: con, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
			WriteTimeout: 60 * time.Second, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10}
		servers = append(servers, srv)
		rt.log.Info("listening", "service", "console", "addr", ln.Addr().String(), "tls", tcfg != nil)
		rt.wg.Go(func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				rt.log.Error("console listener failed", "error", err)
			}
		})
	}
	rt.wg.Go(func() { con.Run(ctx) })
	rt.wg.Go(func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, s := range servers {
			s.Shutdown(sctx)
		}
		closeAll()
	})
	return nil
}

const consoleUsage = `usage: balise console passwd --accounts FILE --role officer|auditor USER

Sets USER's password (read twice from standard input, never from the
command line) and role in the console's local accounts file.
`

// runConsole runs `balise console ...`.
func runConsole(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "passwd" {
		fmt.Fprint(stderr, consoleUsage)
		return exitUsage
	}
	fs := newFlagSet("console passwd", stderr)
	accounts := fs.String("accounts", "", "the accounts `FILE` (console.accounts_file)")
	role := fs.String("role", "", "officer or auditor")
	fs.Usage = func() { fmt.Fprint(stderr, consoleUsage) }
	rest := args[1:]
	var pos []string
	for {
		if err := fs.Parse(rest); err != nil {
			return exitUsage
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if *accounts == "" || (*role != console.RoleOfficer && *role != console.RoleAuditor) || len(pos) != 1 {
		fmt.Fprint(stderr, consoleUsage)
		return exitUsage
	}
	read := readPasswordLine(stdin, stderr)
	pw1, err := read("Mot de passe / Password: ")
	if err != nil {
		fmt.Fprintf(stderr, "balise console passwd: %v\n", err)
		return exitInvalid
	}
	pw2, err := read("Confirmez / Confirm: ")
	if err != nil {
		fmt.Fprintf(stderr, "balise console passwd: %v\n", err)
		return exitInvalid
	}
	if pw1 != pw2 {
		fmt.Fprintln(stderr, "balise console passwd: les mots de passe diffèrent / the passwords differ")
		return exitInvalid
	}
	if err := console.WriteAccount(*accounts, pos[0], *role, pw1); err != nil {
		fmt.Fprintf(stderr, "balise console passwd: %v\n", err)
		return exitInvalid
	}
	fmt.Fprintf(stdout, "%s: %s (%s) enregistré / saved\n", *accounts, pos[0], *role)
	return exitOK
}

// readPasswordLine returns a reader of password lines from stdin: without
// echo when stdin is a terminal, else line by line.
func readPasswordLine(stdin io.Reader, stderr io.Writer) func(prompt string) (string, error) {
	if f, ok := stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return func(prompt string) (string, error) {
			fmt.Fprint(stderr, prompt)
			b, err := term.ReadPassword(int(f.Fd()))
			fmt.Fprintln(stderr)
			return string(b), err
		}
	}
	br := bufio.NewReader(stdin)
	return func(string) (string, error) {
		line, err := br.ReadString('\n')
		if err != nil && (err != io.EOF || line == "") {
			return "", errors.New("two password lines are expected on standard input")
		}
		return strings.TrimRight(line, "\r\n"), nil
	}
}
