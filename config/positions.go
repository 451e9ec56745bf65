package config

import (
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

// position is a 1-based line and column (in characters).
type position struct{ line, col int }

// positions maps key paths of a TOML document ("proxy.listen",
// "rule[2].during[0]") to where their key and value start. The TOML
// library keeps no position for keys it decoded, so Balise scans the
// document once more itself. The scanner assumes the document already
// parsed without error; it never fails, it only knows less on odd input.
type positions struct {
	data       []byte
	lineStarts []int
	key        map[string]position
	val        map[string]position
}

// key and value paths: tables are joined with ".", arrays (of tables and
// of values) get "[i]" with a 0-based i. Quoted keys are written bare.

func scanPositions(data []byte) *positions {
	ps := indexLines(data)
	ps.key, ps.val = map[string]position{}, map[string]position{}
	s := &scanner{ps: ps, data: data, aot: map[string]int{}}
	s.document()
	return ps
}

// indexLines returns positions that know only where lines start (enough
// for at).
func indexLines(data []byte) *positions {
	ps := &positions{data: data, lineStarts: []int{0}}
	for i, b := range data {
		if b == '\n' {
			ps.lineStarts = append(ps.lineStarts, i+1)
		}
	}
	return ps
}

// at converts a byte offset into a position.
func (ps *positions) at(off int) position {
	if off > len(ps.data) {
		off = len(ps.data)
	}
	line := sort.Search(len(ps.lineStarts), func(i int) bool { return ps.lineStarts[i] > off }) - 1
	if line < 0 {
		line = 0
	}
	start := ps.lineStarts[line]
	return position{line: line + 1, col: utf8.RuneCount(ps.data[start:off]) + 1}
}

// value returns where the value at path starts, else where its key is.
func (ps *positions) value(path string) (position, bool) {
	if p, ok := ps.val[path]; ok {
		return p, true
	}
	p, ok := ps.key[path]
	return p, ok
}

type scanner struct {
	ps   *positions
	data []byte
	i    int
	// aot counts the tables of each array of tables, by resolved path.
	aot map[string]int
	// table is the resolved path of the current table ("" = root).
	table string
}

func (s *scanner) peek() byte {
	if s.i < len(s.data) {
		return s.data[s.i]
	}
	return 0
}

func (s *scanner) eof() bool { return s.i >= len(s.data) }

// blank skips spaces and tabs.
func (s *scanner) blank() {
	for !s.eof() && (s.data[s.i] == ' ' || s.data[s.i] == '\t') {
		s.i++
	}
}

// space skips spaces, tabs, newlines and comments.
func (s *scanner) space() {
	for !s.eof() {
		switch s.data[s.i] {
		case ' ', '\t', '\r', '\n':
			s.i++
		case '#':
			s.skipLine()
		default:
			return
		}
	}
}

func (s *scanner) skipLine() {
	for !s.eof() && s.data[s.i] != '\n' {
		s.i++
	}
}

func (s *scanner) document() {
	for {
		s.space()
		if s.eof() {
			return
		}
		start := s.i
		if s.peek() == '[' {
			s.header(start)
			continue
		}
		s.keyValue(s.table)
		// Anything left on the line (a comment) is skipped.
		s.skipLine()
	}
}

// header reads "[a.b]" or "[[a.b]]".
func (s *scanner) header(start int) {
	s.i++
	array := s.peek() == '['
	if array {
		s.i++
	}
	s.blank()
	keys := s.dottedKey()
	s.skipLine()
	// Resolve every prefix through the arrays of tables seen so far.
	path := ""
	for n, k := range keys {
		path = join(path, k)
		last := n == len(keys)-1
		if last && array {
			idx := s.aot[path]
			s.aot[path] = idx + 1
			path += "[" + strconv.Itoa(idx) + "]"
			break
		}
		if c, ok := s.aot[path]; ok && c > 0 {
			path += "[" + strconv.Itoa(c-1) + "]"
		}
	}
	s.table = path
	if _, ok := s.ps.key[path]; !ok {
		s.ps.key[path] = s.ps.at(start)
	}
}

// keyValue reads "k.k2 = value" below table.
func (s *scanner) keyValue(table string) {
	start := s.i
	keys := s.dottedKey()
	if len(keys) == 0 {
		s.i++ // not a key: step over it
		return
	}
	path := table
	for _, k := range keys {
		path = join(path, k)
	}
	s.ps.key[path] = s.ps.at(start)
	s.blank()
	if s.peek() == '=' {
		s.i++
	}
	s.blank()
	s.value(path)
}

// dottedKey reads a key of bare and quoted parts separated by dots.
func (s *scanner) dottedKey() []string {
	var keys []string
	for {
		s.blank()
		var k string
		switch c := s.peek(); {
		case c == '"':
			k = s.basicString()
		case c == '\'':
			k = s.literalString()
		case isBare(c):
			st := s.i
			for !s.eof() && isBare(s.data[s.i]) {
				s.i++
			}
			k = string(s.data[st:s.i])
		default:
			return keys
		}
		keys = append(keys, k)
		s.blank()
		if s.peek() != '.' {
			return keys
		}
		s.i++
	}
}

func isBare(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}

// value reads one value and records where it starts.
func (s *scanner) value(path string) {
	s.ps.val[path] = s.ps.at(s.i)
	switch s.peek() {
	case '"':
		s.basicString()
	case '\'':
		s.literalString()
	case '[':
		s.i++
		for n := 0; ; n++ {
			s.space()
			if s.eof() || s.peek() == ']' {
				s.i++
				return
			}
			before := s.i
			s.value(path + "[" + strconv.Itoa(n) + "]")
			s.space()
			if s.peek() == ',' || s.i == before {
				s.i++ // a separator, or a byte no value starts with
			}
		}
	case '{':
		s.i++
		for {
			s.space()
			if s.eof() || s.peek() == '}' {
				s.i++
				return
			}
			before := s.i
			s.keyValue(path)
			s.space()
			if s.peek() == ',' || s.i == before {
				s.i++
			}
		}
	default:
		for !s.eof() {
			switch s.data[s.i] {
			case ',', ']', '}', '\n', '#', '\r':
				return
			}
			s.i++
		}
	}
}

// basicString reads a "..." or """...""" string and returns its content
// with escapes left as written (only keys use the result).
func (s *scanner) basicString() string {
	if strings.HasPrefix(string(s.data[s.i:min(s.i+3, len(s.data))]), `"""`) {
		s.i += 3
		for !s.eof() {
			if s.data[s.i] == '\\' {
				s.i += 2
				continue
			}
			if s.data[s.i] == '"' && s.i+2 < len(s.data) && s.data[s.i+1] == '"' && s.data[s.i+2] == '"' {
				s.i += 3
				// Up to two more quotes belong to the content.
				for n := 0; n < 2 && s.peek() == '"'; n++ {
					s.i++
				}
				return ""
			}
			s.i++
		}
		return ""
	}
	s.i++
	st := s.i
	for !s.eof() && s.data[s.i] != '"' && s.data[s.i] != '\n' {
		if s.data[s.i] == '\\' {
			s.i++
		}
		s.i++
	}
	end := min(s.i, len(s.data))
	s.i++
	return unescapeKey(string(s.data[st:end]))
}

func (s *scanner) literalString() string {
	if strings.HasPrefix(string(s.data[s.i:min(s.i+3, len(s.data))]), `'''`) {
		s.i += 3
		for !s.eof() {
			if s.data[s.i] == '\'' && s.i+2 < len(s.data) && s.data[s.i+1] == '\'' && s.data[s.i+2] == '\'' {
				s.i += 3
				for n := 0; n < 2 && s.peek() == '\''; n++ {
					s.i++
				}
				return ""
			}
			s.i++
		}
		return ""
	}
	s.i++
	st := s.i
	for !s.eof() && s.data[s.i] != '\'' && s.data[s.i] != '\n' {
		s.i++
	}
	end := min(s.i, len(s.data))
	s.i++
	return string(s.data[st:end])
}

// unescapeKey undoes the escapes of a quoted key, falling back to the raw
// text when it is not a valid Go-compatible string.
func unescapeKey(raw string) string {
	if !strings.Contains(raw, `\`) {
		return raw
	}
	if u, err := strconv.Unquote(`"` + raw + `"`); err == nil {
		return u
	}
	return raw
}

func join(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}
