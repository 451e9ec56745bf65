package config

import (
	"errors"
	"io/fs"
	"sort"
	"strconv"
	"strings"
)

// Problem is one thing wrong with a configuration (or a list file it
// names). Line and Col are 1-based; Line is 0 when the position is unknown,
// and Key then locates the problem (e.g. "rule[2].during[0]").
type Problem struct {
	File string
	Line int
	Col  int
	// Key is the TOML key path of the value at fault, with 0-based
	// indexes for arrays ("" for syntax errors and list-file lines).
	Key string
	Msg string
	// Warning marks a warning rather than an error: String writes
	// "warning: " before the key.
	Warning bool
}

// String formats the problem as "FILE:LINE:COL: KEY: message" when the
// position is known (KEY omitted when empty), else "FILE: KEY: message".
// The embedded default configuration is named "(default)".
func (p Problem) String() string {
	var b strings.Builder
	f := p.File
	if f == "" {
		f = "(default)"
	}
	b.WriteString(f)
	if p.Line > 0 {
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(p.Line))
		if p.Col > 0 {
			b.WriteByte(':')
			b.WriteString(strconv.Itoa(p.Col))
		}
	}
	b.WriteString(": ")
	if p.Warning {
		b.WriteString("warning: ")
	}
	if p.Key != "" {
		b.WriteString(p.Key)
		b.WriteString(": ")
	}
	b.WriteString(p.Msg)
	return b.String()
}

// Problems is every problem found in a configuration. It is the error
// type of Load and Parse.
type Problems []Problem

// Error returns one line per problem.
func (ps Problems) Error() string {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// sort orders problems by file (first, then the others in the order
// found), then line and column; problems without a position come after
// those with one, in the order found.
func (ps Problems) sort(first string) {
	order := map[string]int{first: 0}
	for _, p := range ps {
		if _, ok := order[p.File]; !ok {
			order[p.File] = len(order)
		}
	}
	sort.SliceStable(ps, func(i, j int) bool {
		a, b := ps[i], ps[j]
		if order[a.File] != order[b.File] {
			return order[a.File] < order[b.File]
		}
		if (a.Line == 0) != (b.Line == 0) {
			return a.Line != 0
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Col < b.Col
	})
}

// errText is an error's text without the Go package prefix of fs errors.
func errText(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Op + ": " + pe.Err.Error()
	}
	return err.Error()
}
