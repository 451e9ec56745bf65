package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/balise-net/balise/config"
	"github.com/balise-net/balise/internal/policy"
)

// runCheck runs `balise check --config FILE`: it loads, validates and
// compiles the configuration without opening a socket nor creating a
// file, prints its warnings on stderr and a short summary and exits 0 (1
// with --strict when there are warnings), or prints one line per problem
// on stderr and exits 1.
func runCheck(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("check", stderr)
	path := fs.String("config", "", "configuration `FILE` to check (required)")
	strict := fs.Bool("strict", false, "exit 1 when there are warnings")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: balise check --config FILE [--strict]")
		fs.PrintDefaults()
	}
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	if *path == "" {
		fmt.Fprintln(stderr, "balise check: --config is required")
		fs.Usage()
		return exitUsage
	}
	cfg, p, err := loadAndCompile(*path)
	if err != nil {
		printProblems(stderr, *path, err)
		return exitInvalid
	}
	for _, w := range cfg.Warnings {
		fmt.Fprintln(stderr, w.String())
	}
	printSummary(stdout, cfg, p)
	if *strict && len(cfg.Warnings) > 0 {
		return exitInvalid
	}
	return exitOK
}

// loadAndCompile loads the configuration at path and compiles its policy,
// with the catalog serve would use (the last good update kept on disk when
// it is newer than the embedded one).
func loadAndCompile(path string) (*config.Config, *policy.Policy, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, nil, err
	}
	cfg = withSavedCatalog(path, cfg, nil)
	p, err := cfg.Compile()
	if err != nil {
		return nil, nil, err
	}
	return cfg, p, nil
}

// printProblems writes err as one line per problem: config.Problems as
// their own lines, any other error as "FILE: message".
func printProblems(w io.Writer, path string, err error) {
	var ps config.Problems
	if errors.As(err, &ps) {
		for _, p := range ps {
			fmt.Fprintln(w, p.String())
		}
		return
	}
	if path == "" {
		path = "(default)"
	}
	fmt.Fprintf(w, "%s: %v\n", path, err)
}

// printSummary writes what the configuration holds.
func printSummary(w io.Writer, cfg *config.Config, p *policy.Policy) {
	name := cfg.Path
	if name == "" {
		name = "(default)"
	}
	fmt.Fprintf(w, "%s: ok\n", name)
	fmt.Fprintf(w, "  timezone   %s, default_action %s\n", cfg.Timezone, cfg.DefaultAction)
	cat := cfg.CatalogInUse()
	catalog := cat.Version()
	if catalog == "" {
		catalog = "unknown"
	}
	fmt.Fprintf(w, "  services   %d (%d domains; catalog %s)\n", len(p.ServiceIDs()), p.DomainCount(), catalog)
	fmt.Fprintf(w, "  catalog    %s, serial %d, %s\n", catalog, cat.Serial(), catalogSourceText(cat.Source()))
	if cfg.Catalog.UpdateURL != "" {
		fmt.Fprintf(w, "  updates    %s every %s (kept in %s)\n", cfg.Catalog.UpdateURL, cfg.Catalog.UpdateInterval, cfg.Catalog.UpdateDir)
	}
	groups := make([]string, len(cfg.Groups))
	for i, g := range cfg.Groups {
		groups[i] = g.Name
	}
	fmt.Fprintf(w, "  groups     %d%s\n", len(groups), nameList(groups))
	schedules := make([]string, len(cfg.Schedules))
	for i, s := range cfg.Schedules {
		schedules[i] = s.Name
	}
	fmt.Fprintf(w, "  schedules  %d%s\n", len(schedules), nameList(schedules))
	lists := make([]string, len(cfg.Lists))
	for i, l := range cfg.Lists {
		lists[i] = l.Name
	}
	fmt.Fprintf(w, "  lists      %d%s\n", len(lists), nameList(lists))
	rules := make([]string, len(cfg.Rules))
	for i, r := range cfg.Rules {
		rules[i] = r.Name
	}
	fmt.Fprintf(w, "  rules      %d%s\n", len(rules), nameList(rules))
	if cfg.Exceptions != nil {
		if cfg.Exceptions.Postgres() {
			fmt.Fprintf(w, "  exceptions register on, shared in PostgreSQL: %s\n", storeName(cfg.Exceptions))
		} else {
			fmt.Fprintf(w, "  exceptions register on: %s\n", cfg.Exceptions.Store)
		}
	}
}

func nameList(names []string) string {
	if len(names) == 0 {
		return ""
	}
	return ": " + strings.Join(names, ", ")
}

// catalogSourceText names a catalog source for people.
func catalogSourceText(source string) string {
	switch source {
	case config.CatalogUpdate:
		return "mise à jour signée / signed update"
	case config.CatalogFile:
		return "fichier / file"
	}
	return "intégré / embedded"
}
