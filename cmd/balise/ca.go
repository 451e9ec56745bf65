package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/balise-net/balise/proxy"
)

// runCA runs `balise ca ...` (args after "ca") and returns the exit code.
//
//	balise ca init --out DIR [--name NAME] [--force]
//
// writes DIR/ca.pem (the certificate to distribute to workstations) and
// DIR/ca-key.pem (mode 0600, stays on the Balise host): a CA for pilots of
// the HTTPS block page.
func runCA(args []string, stdout, stderr io.Writer) int {
	usage := func() {
		fmt.Fprintln(stderr, "usage: balise ca init --out DIR [--name NAME] [--force]")
	}
	if len(args) == 0 || args[0] != "init" {
		usage()
		return exitUsage
	}
	fset := newFlagSet("ca init", stderr)
	out := fset.String("out", "", "`DIR` to write ca.pem and ca-key.pem into (required)")
	name := fset.String("name", "Balise pilot CA", "common name of the CA certificate")
	force := fset.Bool("force", false, "overwrite existing files")
	fset.Usage = func() {
		usage()
		fset.PrintDefaults()
	}
	if code := parseFlags(fset, args[1:]); code >= 0 {
		return code
	}
	if *out == "" || fset.NArg() != 0 {
		fmt.Fprintln(stderr, "balise ca init: --out is required")
		fset.Usage()
		return exitUsage
	}
	certPath := filepath.Join(*out, "ca.pem")
	keyPath := filepath.Join(*out, "ca-key.pem")
	if !*force {
		for _, p := range []string{certPath, keyPath} {
			if _, err := os.Stat(p); err == nil {
				fmt.Fprintf(stderr, "balise ca init: %s already exists (use --force to replace it)\n", p)
				return exitInvalid
			} else if !errors.Is(err, fs.ErrNotExist) {
				fmt.Fprintf(stderr, "balise ca init: %v\n", err)
				return exitInvalid
			}
		}
	}
	certPEM, keyPEM, err := proxy.NewCA(*name, 0)
	if err != nil {
		fmt.Fprintf(stderr, "balise ca init: %v\n", err)
		return exitInvalid
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fmt.Fprintf(stderr, "balise ca init: %v\n", err)
		return exitInvalid
	}
	if err := writeCAFile(keyPath, keyPEM, 0o600); err != nil {
		fmt.Fprintf(stderr, "balise ca init: %v\n", err)
		return exitInvalid
	}
	if err := writeCAFile(certPath, certPEM, 0o644); err != nil {
		fmt.Fprintf(stderr, "balise ca init: %v\n", err)
		return exitInvalid
	}
	fmt.Fprintf(stdout, "wrote %s (distribute to workstations) and %s (keep on the Balise host, mode 0600)\n", certPath, keyPath)
	return exitOK
}

// writeCAFile writes data to path with mode (enforced even if the file
// existed) and syncs it.
func writeCAFile(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
