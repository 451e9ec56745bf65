package config

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
)

// tbl walks one TOML table of the decoded document, converting its values
// and recording problems with their positions. Every key asked for is
// known; finish reports the others as unknown keys.
type tbl struct {
	p     *parser
	path  string
	m     map[string]any
	known map[string]bool
}

func (p *parser) table(path string, m map[string]any) *tbl {
	return &tbl{p: p, path: path, m: m, known: map[string]bool{}}
}

func (t *tbl) key(k string) string { return join(t.path, k) }

func (t *tbl) get(k string) (any, bool) {
	t.known[k] = true
	v, ok := t.m[k]
	return v, ok
}

// has reports whether the table defines k (and marks k known).
func (t *tbl) has(k string) bool {
	_, ok := t.get(k)
	return ok
}

// typeErr records that the value at key has the wrong type.
func (t *tbl) typeErr(key string, want string, v any) {
	t.p.valueErr(key, "must be %s, not %s", want, tomlType(v))
}

func tomlType(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case time.Time:
		return "a date-time"
	case []any, []map[string]any:
		return "an array"
	case map[string]any:
		return "a table"
	}
	return fmt.Sprintf("a %T", v)
}

func (t *tbl) str(k, def string) string {
	v, ok := t.get(k)
	if !ok {
		return def
	}
	s, ok := v.(string)
	if !ok {
		t.typeErr(t.key(k), "a string", v)
		return def
	}
	return s
}

// enum reads a string that must be one of choices.
func (t *tbl) enum(k, def string, choices ...string) string {
	s := t.str(k, def)
	for _, c := range choices {
		if s == c {
			return s
		}
	}
	t.p.valueErr(t.key(k), "%q is not one of %s", s, quoteList(choices))
	return def
}

func quoteList(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = strconv.Quote(s)
	}
	if len(q) == 1 {
		return q[0]
	}
	return strings.Join(q[:len(q)-1], ", ") + " or " + q[len(q)-1]
}

func (t *tbl) boolean(k string, def bool) bool {
	v, ok := t.get(k)
	if !ok {
		return def
	}
	b, ok := v.(bool)
	if !ok {
		t.typeErr(t.key(k), "true or false", v)
		return def
	}
	return b
}

// integer reads an integer in [lo, hi].
func (t *tbl) integer(k string, def, lo, hi int) int {
	v, ok := t.get(k)
	if !ok {
		return def
	}
	n, ok := v.(int64)
	if !ok {
		t.typeErr(t.key(k), "an integer", v)
		return def
	}
	if n < int64(lo) || n > int64(hi) {
		if hi == math.MaxInt32 {
			t.p.valueErr(t.key(k), "%d is out of range (at least %d)", n, lo)
		} else {
			t.p.valueErr(t.key(k), "%d is out of range (%d to %d)", n, lo, hi)
		}
		return def
	}
	return int(n)
}

// strs reads an array of strings; defined is false when k is absent.
// Elements of the wrong type are reported and left out.
func (t *tbl) strs(k string) (out []string, defined bool) {
	v, ok := t.get(k)
	if !ok {
		return nil, false
	}
	return t.p.stringArray(t.key(k), v, false), true
}

// strOrStrs reads one string or an array of strings (listen addresses).
func (t *tbl) strOrStrs(k string) (out []string, defined bool) {
	v, ok := t.get(k)
	if !ok {
		return nil, false
	}
	return t.p.stringArray(t.key(k), v, true), true
}

func (p *parser) stringArray(key string, v any, single bool) []string {
	switch v := v.(type) {
	case string:
		if single {
			if v == "" {
				return []string{}
			}
			return []string{v}
		}
	case []any:
		out := make([]string, 0, len(v))
		for i, e := range v {
			s, ok := e.(string)
			if !ok {
				p.valueErr(fmt.Sprintf("%s[%d]", key, i), "must be a string, not %s", tomlType(e))
				continue
			}
			out = append(out, s)
		}
		return out
	}
	if single {
		p.valueErr(key, "must be a string or an array of strings, not %s", tomlType(v))
	} else {
		p.valueErr(key, "must be an array of strings, not %s", tomlType(v))
	}
	return nil
}

// duration reads a duration string ("90s", "1h30m", "7d").
func (t *tbl) duration(k string, def time.Duration) time.Duration {
	v, ok := t.get(k)
	if !ok {
		return def
	}
	s, ok := v.(string)
	if !ok {
		t.typeErr(t.key(k), `a duration string such as "30s"`, v)
		return def
	}
	d, err := parseDuration(s)
	if err != nil {
		t.p.valueErr(t.key(k), "%v", err)
		return def
	}
	return d
}

// parseDuration is time.ParseDuration that also accepts whole days
// ("7d", "1d12h") and refuses negative durations.
func parseDuration(s string) (time.Duration, error) {
	in := s
	var days time.Duration
	if i := strings.IndexByte(s, 'd'); i > 0 {
		n, err := strconv.ParseUint(s[:i], 10, 16)
		if err == nil {
			days = time.Duration(n) * 24 * time.Hour
			s = s[i+1:]
			if s == "" {
				return days, nil
			}
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("invalid duration %q (examples: \"30s\", \"5m\", \"1h30m\", \"7d\")", in)
	}
	return days + d, nil
}

// sub returns the sub-table k, or nil when absent or not a table.
func (t *tbl) sub(k string) *tbl {
	v, ok := t.get(k)
	if !ok {
		return nil
	}
	m, ok := v.(map[string]any)
	if !ok {
		t.typeErr(t.key(k), "a table", v)
		return nil
	}
	return t.p.table(t.key(k), m)
}

// tables returns the array of tables k ([[k]]).
func (t *tbl) tables(k string) []*tbl {
	v, ok := t.get(k)
	if !ok {
		return nil
	}
	var ms []map[string]any
	switch v := v.(type) {
	case []map[string]any:
		ms = v
	case []any:
		for i, e := range v {
			m, ok := e.(map[string]any)
			if !ok {
				t.typeErr(fmt.Sprintf("%s[%d]", t.key(k), i), "a table", e)
				continue
			}
			ms = append(ms, m)
		}
	default:
		t.typeErr(t.key(k), "an array of tables ([["+k+"]])", v)
		return nil
	}
	out := make([]*tbl, len(ms))
	for i, m := range ms {
		out[i] = t.p.table(fmt.Sprintf("%s[%d]", t.key(k), i), m)
	}
	return out
}

// finish reports every key of the table nobody asked for.
func (t *tbl) finish() {
	var unknown []string
	for k := range t.m {
		if !t.known[k] {
			unknown = append(unknown, k)
		}
	}
	sort.Strings(unknown)
	for _, k := range unknown {
		msg := "unknown key"
		switch t.m[k].(type) {
		case map[string]any, []map[string]any:
			msg = "unknown table"
		}
		if s := t.suggest(k); s != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", s)
		}
		t.p.keyErr(t.key(k), "%s", msg)
	}
}

// suggest returns the known key closest to k, if close enough.
func (t *tbl) suggest(k string) string {
	best, bestD := "", 3
	for c := range t.known {
		if d := editDistance(k, c); d < bestD || d == bestD && c < best {
			best, bestD = c, d
		}
	}
	if bestD > 2 {
		return ""
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := prev[j-1]
			if a[i-1] != b[j-1] {
				c++
			}
			c = min(c, prev[j]+1, cur[j-1]+1)
			cur[j] = c
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
