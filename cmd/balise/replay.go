package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/balise-net/balise/config"
	"github.com/balise-net/balise/internal/policy"
)

// replayLine is what replay reads of a decision line (see
// internal/decisionlog): the question and the verdict given then.
type replayLine struct {
	Msg     string    `json:"msg"`
	At      time.Time `json:"at"`
	Time    time.Time `json:"time"`
	Client  string    `json:"client"`
	User    string    `json:"user"`
	Groups  any       `json:"groups"`
	Host    string    `json:"host"`
	Verdict string    `json:"verdict"`
	Repeats int       `json:"repeats"`
}

// replayCounts are replay's results: numbers only, keyed by service id,
// group name and verdict change, never by client, user or host.
type replayCounts struct {
	Lines     int            `json:"lines"`
	Decisions int            `json:"decisions"`
	Skipped   int            `json:"skipped"`
	Changed   int            `json:"changed"`
	ByVerdict map[string]int `json:"by_verdict"` // "allow -> block"
	ByService map[string]int `json:"by_service"`
	ByGroup   map[string]int `json:"by_group"`
}

// replay re-decides every decision line of r with p and counts the
// verdicts that change. A line stands for max(1, repeats) decisions (a
// summary line counts those it held back).
func replay(p *policy.Policy, r io.Reader) (replayCounts, error) {
	c := replayCounts{ByVerdict: map[string]int{}, ByService: map[string]int{}, ByGroup: map[string]int{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		text := strings.TrimSpace(sc.Text())
		if text == "" {
			continue
		}
		var l replayLine
		if err := json.Unmarshal([]byte(text), &l); err != nil || l.Msg != "decision" {
			c.Skipped++
			continue
		}
		client, err := netip.ParseAddr(l.Client)
		at := l.At
		if at.IsZero() {
			at = l.Time
		}
		if err != nil || l.Host == "" || at.IsZero() || (l.Verdict != "allow" && l.Verdict != "block") {
			c.Skipped++
			continue
		}
		c.Lines++
		n := max(1, l.Repeats)
		c.Decisions += n
		q := policy.Query{Host: l.Host, Client: client, User: l.User, Groups: lineGroups(l.Groups), Time: at}
		d := p.Decide(q)
		if d.Invalid || d.Verdict.String() == l.Verdict {
			continue
		}
		c.Changed += n
		c.ByVerdict[l.Verdict+" -> "+d.Verdict.String()] += n
		svc := d.Service
		if svc == "" {
			svc = "(non listé / unlisted)"
		}
		c.ByService[svc] += n
		groups := p.GroupsOf(q)
		if len(groups) == 0 {
			groups = []string{"(aucun groupe / no group)"}
		}
		for _, g := range groups {
			c.ByGroup[g] += n
		}
	}
	return c, sc.Err()
}

// lineGroups reads a groups key: an array of names or a comma-separated
// string (nil when absent).
func lineGroups(v any) []string {
	switch g := v.(type) {
	case []any:
		var out []string
		for _, e := range g {
			if s, ok := e.(string); ok {
				out = append(out, s)
			}
		}
		return out
	case string:
		if g == "" {
			return nil
		}
		return strings.Split(g, ",")
	}
	return nil
}

func (c replayCounts) write(w io.Writer) {
	fmt.Fprintf(w, "décisions relues / decisions replayed   %d (%d lignes / lines, %d ignorées / skipped)\n", c.Decisions, c.Lines, c.Skipped)
	fmt.Fprintf(w, "changeraient / would change             %d\n", c.Changed)
	section := func(title string, m map[string]int) {
		if len(m) == 0 {
			return
		}
		fmt.Fprintf(w, "%s\n", title)
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool {
			if m[keys[i]] != m[keys[j]] {
				return m[keys[i]] > m[keys[j]]
			}
			return keys[i] < keys[j]
		})
		for _, k := range keys {
			fmt.Fprintf(w, "  %-36s %d\n", k, m[k])
		}
	}
	section("par verdict / by verdict", c.ByVerdict)
	section("par service / by service", c.ByService)
	section("par groupe / by group", c.ByGroup)
}

// runReplay runs `balise replay --config NEW.toml DECISIONS.jsonl`: it
// re-decides the decision lines with the new configuration and prints how
// many would change, by verdict, service and group (counts only).
func runReplay(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("replay", stderr)
	path := fs.String("config", "", "the new configuration `FILE` (required)")
	asJSON := fs.Bool("json", false, "print the counts as JSON")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: balise replay --config NEW.toml [--json] DECISIONS.jsonl|-")
		fs.PrintDefaults()
	}
	pos, code := parseInterleaved(fs, args)
	if code >= 0 {
		return code
	}
	if *path == "" || len(pos) != 1 {
		fs.Usage()
		return exitUsage
	}
	cfg, err := config.Load(*path)
	if err != nil {
		printProblems(stderr, *path, err)
		return exitInvalid
	}
	cfg = withSavedCatalog(*path, cfg, nil)
	p, err := cfg.Compile()
	if err != nil {
		printProblems(stderr, *path, err)
		return exitInvalid
	}
	in := io.Reader(os.Stdin)
	if pos[0] != "-" {
		f, err := os.Open(pos[0])
		if err != nil {
			fmt.Fprintf(stderr, "balise replay: %v\n", err)
			return exitInvalid
		}
		defer f.Close()
		in = f
	}
	counts, err := replay(p, in)
	if err != nil {
		fmt.Fprintf(stderr, "balise replay: %s: %v\n", pos[0], err)
		return exitInvalid
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(counts); err != nil {
			return exitInvalid
		}
		return exitOK
	}
	counts.write(stdout)
	return exitOK
}
