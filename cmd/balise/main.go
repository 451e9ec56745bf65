package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// Exit codes.
const (
	exitOK      = 0
	exitInvalid = 1 // invalid input: configuration, address, host, bind failure
	exitUsage   = 2
)

const usageText = `usage:
  balise serve   [--config FILE] [--log-format json|text] [--log-level LEVEL]
  balise check   --config FILE [--strict]
  balise explain --config FILE --client IP --host HOST [--user NAME] [--groups a,b] [--at RFC3339] [--json]
  balise exceptions --config FILE COMMAND ...
  balise identity reveal --config FILE --by NAME --reason TEXT PSEUDONYM
  balise console passwd --accounts FILE --role officer|auditor USER
  balise ca init --out DIR
  balise catalog show [--config FILE | CATALOG] | diff [OLD] NEW | sign --key FILE CATALOG | verify --key PUB CATALOG
  balise replay --config NEW.toml DECISIONS.jsonl
  balise version
`

// run runs the command line args (without the program name) and returns
// the process exit code.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText)
		return exitUsage
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		return runServe(rest, stdout, stderr, serveEnv{})
	case "check":
		return runCheck(rest, stdout, stderr)
	case "explain":
		return runExplain(rest, stdout, stderr)
	case "exceptions":
		return runExceptions(rest, stdout, stderr)
	case "identity":
		return runIdentity(rest, stdout, stderr)
	case "console":
		return runConsole(rest, os.Stdin, stdout, stderr)
	case "ca":
		return runCA(rest, stdout, stderr)
	case "catalog":
		return runCatalog(rest, os.Stdin, stdout, stderr)
	case "replay":
		return runReplay(rest, stdout, stderr)
	case "version":
		return runVersion(rest, stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usageText)
		return exitOK
	default:
		fmt.Fprintf(stderr, "balise: unknown command %q\n%s", cmd, usageText)
		return exitUsage
	}
}

// newFlagSet returns a flag set for a subcommand that writes its messages
// to stderr and reports errors instead of exiting.
func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("balise "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parseFlags parses args into fs and rejects positional arguments. It
// returns -1 when parsing succeeded, else the exit code to return (0 for
// -h, 2 otherwise).
func parseFlags(fs *flag.FlagSet, args []string) int {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "%s: unexpected argument %q\n", fs.Name(), strings.Join(fs.Args(), " "))
		fs.Usage()
		return exitUsage
	}
	return -1
}
