package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"aead.dev/minisign"

	"github.com/balise-net/balise/config"
)

const catalogUsage = `usage:
  balise catalog show   [--config FILE | CATALOG]     the catalog in use, embedded, or in a file
  balise catalog diff   [OLD] NEW                     services and domains added and removed (OLD: embedded)
  balise catalog sign   --key SECRET.key CATALOG      writes CATALOG.minisig; the key's password on standard input
  balise catalog verify --key PUBLIC CATALOG [--sig FILE]   PUBLIC: a .pub file or the key itself
`

// runCatalog runs `balise catalog`. stdin gives sign the key's password.
func runCatalog(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, catalogUsage)
		return exitUsage
	}
	switch args[0] {
	case "show":
		return catalogShow(args[1:], stdout, stderr)
	case "diff":
		return catalogDiff(args[1:], stdout, stderr)
	case "sign":
		return catalogSign(args[1:], stdin, stdout, stderr)
	case "verify":
		return catalogVerify(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, catalogUsage)
		return exitOK
	}
	fmt.Fprintf(stderr, "balise catalog: unknown command %q\n%s", args[0], catalogUsage)
	return exitUsage
}

// parseInterleaved parses flags placed before, between or after the
// positional arguments and returns the positional ones.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, int) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, exitOK
			}
			return nil, exitUsage
		}
		if fs.NArg() == 0 {
			return pos, -1
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// readCatalogFile reads and checks a catalog file.
func readCatalogFile(path string) (*config.ServiceCatalog, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return config.ParseCatalog(data, config.CatalogFile)
}

func catalogShow(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("catalog show", stderr)
	path := fs.String("config", "", "configuration `FILE`: show the catalog it uses (the last good update on disk, else the embedded one)")
	pos, code := parseInterleaved(fs, args)
	if code >= 0 {
		return code
	}
	var cat *config.ServiceCatalog
	switch {
	case len(pos) > 1, len(pos) == 1 && *path != "":
		fmt.Fprint(stderr, catalogUsage)
		return exitUsage
	case len(pos) == 1:
		c, err := readCatalogFile(pos[0])
		if err != nil {
			fmt.Fprintf(stderr, "balise catalog show: %s: %v\n", pos[0], err)
			return exitInvalid
		}
		cat = c
	case *path != "":
		cfg, err := config.Load(*path)
		if err != nil {
			printProblems(stderr, *path, err)
			return exitInvalid
		}
		cat = withSavedCatalog(*path, cfg, nil).CatalogInUse()
	default:
		cat = config.EmbeddedCatalog()
	}
	info := cat.Info()
	fmt.Fprintf(stdout, "catalog   %s\nserial    %d\nsource    %s\n", info.Version, info.Serial, catalogSourceText(cat.Source()))
	fmt.Fprintf(stdout, "%-14s %8s %8s %s\n", "category", "services", "domains", "opt-in (optional services)")
	for _, c := range info.Categories {
		var n, doms int
		var opt []string
		for _, s := range info.Services {
			if s.Category != c {
				continue
			}
			if s.Optional {
				opt = append(opt, s.ID)
				continue
			}
			n++
			doms += s.Domains
		}
		fmt.Fprintf(stdout, "%-14s %8d %8d %s\n", c, n, doms, strings.Join(opt, ", "))
	}
	return exitOK
}

func catalogDiff(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("catalog diff", stderr)
	pos, code := parseInterleaved(fs, args)
	if code >= 0 {
		return code
	}
	if len(pos) < 1 || len(pos) > 2 {
		fmt.Fprint(stderr, catalogUsage)
		return exitUsage
	}
	old := config.EmbeddedCatalog()
	if len(pos) == 2 {
		c, err := readCatalogFile(pos[0])
		if err != nil {
			fmt.Fprintf(stderr, "balise catalog diff: %s: %v\n", pos[0], err)
			return exitInvalid
		}
		old, pos = c, pos[1:]
	}
	cur, err := readCatalogFile(pos[0])
	if err != nil {
		fmt.Fprintf(stderr, "balise catalog diff: %s: %v\n", pos[0], err)
		return exitInvalid
	}
	writeCatalogDiff(stdout, old, cur)
	return exitOK
}

// writeCatalogDiff prints the services and default domains added and
// removed from a to b.
func writeCatalogDiff(w io.Writer, a, b *config.ServiceCatalog) {
	fmt.Fprintf(w, "catalog %s (serial %d) -> %s (serial %d)\n", a.Version(), a.Serial(), b.Version(), b.Serial())
	if b.Serial() <= a.Serial() {
		fmt.Fprintf(w, "warning: the serial does not grow: Balise refuses this catalog as an update\n")
	}
	ad, bd := a.Domains(), b.Domains()
	cats := map[string]string{}
	for _, s := range b.Info().Services {
		cats[s.ID] = s.Category
	}
	for _, s := range a.Info().Services {
		if _, ok := cats[s.ID]; !ok {
			cats[s.ID] = s.Category
		}
	}
	ids := make([]string, 0, len(cats))
	for id := range cats {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var added, removed, changed, plus, minus int
	for _, id := range ids {
		ao, inA := ad[id]
		bo, inB := bd[id]
		switch {
		case !inA:
			added++
			plus += len(bo)
			fmt.Fprintf(w, "+ service %s (%s, %d domains)\n", id, cats[id], len(bo))
			for _, d := range bo {
				fmt.Fprintf(w, "    + %s\n", d)
			}
		case !inB:
			removed++
			minus += len(ao)
			fmt.Fprintf(w, "- service %s (%s, %d domains)\n", id, cats[id], len(ao))
			for _, d := range ao {
				fmt.Fprintf(w, "    - %s\n", d)
			}
		default:
			var p, m []string
			for _, d := range bo {
				if !slices.Contains(ao, d) {
					p = append(p, d)
				}
			}
			for _, d := range ao {
				if !slices.Contains(bo, d) {
					m = append(m, d)
				}
			}
			if len(p)+len(m) == 0 {
				continue
			}
			changed++
			plus += len(p)
			minus += len(m)
			fmt.Fprintf(w, "~ service %s: +%d -%d domains\n", id, len(p), len(m))
			for _, d := range p {
				fmt.Fprintf(w, "    + %s\n", d)
			}
			for _, d := range m {
				fmt.Fprintf(w, "    - %s\n", d)
			}
		}
	}
	fmt.Fprintf(w, "%d services added, %d removed, %d changed; %d domains added, %d removed\n", added, removed, changed, plus, minus)
}

func catalogSign(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := newFlagSet("catalog sign", stderr)
	keyPath := fs.String("key", "", "minisign secret key `FILE` (its password is read from standard input)")
	pos, code := parseInterleaved(fs, args)
	if code >= 0 {
		return code
	}
	if *keyPath == "" || len(pos) != 1 {
		fmt.Fprint(stderr, catalogUsage)
		return exitUsage
	}
	data, err := os.ReadFile(pos[0])
	if err != nil {
		fmt.Fprintf(stderr, "balise catalog sign: %v\n", err)
		return exitInvalid
	}
	// Sign only what Balise would apply.
	cat, err := config.ParseCatalog(data, config.CatalogUpdate)
	if err != nil {
		fmt.Fprintf(stderr, "balise catalog sign: %s: %v\n", pos[0], err)
		return exitInvalid
	}
	keyText, err := os.ReadFile(*keyPath)
	if err != nil {
		fmt.Fprintf(stderr, "balise catalog sign: %v\n", err)
		return exitInvalid
	}
	var key minisign.PrivateKey
	if minisign.IsEncrypted(keyText) {
		password, err := bufio.NewReader(stdin).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			fmt.Fprintf(stderr, "balise catalog sign: reading the password: %v\n", err)
			return exitInvalid
		}
		key, err = minisign.DecryptKey(strings.TrimRight(password, "\r\n"), keyText)
		if err != nil {
			fmt.Fprintf(stderr, "balise catalog sign: %s: wrong password or damaged key\n", *keyPath)
			return exitInvalid
		}
	} else if err := key.UnmarshalText(keyText); err != nil {
		fmt.Fprintf(stderr, "balise catalog sign: %s: %v\n", *keyPath, err)
		return exitInvalid
	}
	trusted := fmt.Sprintf("balise catalog %s serial %d", cat.Version(), cat.Serial())
	sig := minisign.SignWithComments(key, data, trusted, "signature from balise catalog sign")
	out := pos[0] + ".minisig"
	if err := os.WriteFile(out, sig, 0o644); err != nil {
		fmt.Fprintf(stderr, "balise catalog sign: %v\n", err)
		return exitInvalid
	}
	fmt.Fprintf(stdout, "%s: signed catalog %s (serial %d) with key %X\n", out, cat.Version(), cat.Serial(), key.ID())
	return exitOK
}

func catalogVerify(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("catalog verify", stderr)
	keyArg := fs.String("key", "", "minisign public key: a .pub `FILE` or the key itself (RW...)")
	sigPath := fs.String("sig", "", "signature `FILE` (default: CATALOG.minisig)")
	pos, code := parseInterleaved(fs, args)
	if code >= 0 {
		return code
	}
	if *keyArg == "" || len(pos) != 1 {
		fmt.Fprint(stderr, catalogUsage)
		return exitUsage
	}
	keyText := *keyArg
	if b, err := os.ReadFile(keyText); err == nil {
		keyText = string(b)
	}
	key, err := config.ParseUpdateKey(keyText)
	if err != nil {
		fmt.Fprintf(stderr, "balise catalog verify: --key: %v\n", err)
		return exitUsage
	}
	if *sigPath == "" {
		*sigPath = pos[0] + ".minisig"
	}
	data, err := os.ReadFile(pos[0])
	if err != nil {
		fmt.Fprintf(stderr, "balise catalog verify: %v\n", err)
		return exitInvalid
	}
	sig, err := os.ReadFile(*sigPath)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(stderr, "balise catalog verify: %v\n", err)
		return exitInvalid
	}
	cat, err := config.VerifyCatalog(key, data, sig, config.CatalogUpdate)
	if err != nil {
		fmt.Fprintf(stderr, "balise catalog verify: %s: refused: %v\n", pos[0], err)
		return exitInvalid
	}
	fmt.Fprintf(stdout, "%s: ok, catalog %s (serial %d) signed by key %X\n", pos[0], cat.Version(), cat.Serial(), key.ID())
	return exitOK
}
