package deploy

import (
	"regexp"
	"slices"
	"strings"
)

var metricNameRE = regexp.MustCompile(`\b(balise_[a-z0-9_]+|up)\b`)

// histogramSuffixes are the series suffixes of a histogram in PromQL;
// they are removed only from names ending in a unit (_seconds, _bytes),
// as every Balise histogram's does.
var histogramSuffixes = []string{"_bucket", "_count", "_sum"}

// MetricNames returns the sorted, distinct Balise metric names (and the
// synthetic "up") a PromQL expression references, with the _bucket,
// _count and _sum suffixes of histogram series removed, so that they can
// be compared with the metric families /metrics exposes. Names inside
// label matchers' quoted values are not metric references and are skipped.
func MetricNames(expr string) []string {
	var names []string
	for _, m := range metricNameRE.FindAllStringIndex(stripQuoted(expr), -1) {
		name := expr[m[0]:m[1]]
		if name == "up" && isLabelName(expr, m[1]) {
			continue
		}
		for _, s := range histogramSuffixes {
			n, ok := strings.CutSuffix(name, s)
			if ok && (strings.HasSuffix(n, "_seconds") || strings.HasSuffix(n, "_bytes")) {
				name = n
				break
			}
		}
		names = append(names, name)
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// stripQuoted blanks out the contents of double-quoted strings, keeping
// offsets, so that label values are not taken for metric names.
func stripQuoted(expr string) string {
	b := []byte(expr)
	in := false
	for i := 0; i < len(b); i++ {
		switch {
		case b[i] == '"' && (i == 0 || b[i-1] != '\\'):
			in = !in
		case in:
			b[i] = ' '
		}
	}
	return string(b)
}

// isLabelName reports whether the identifier ending at end is followed by
// a label matcher operator (as in {up="1"}), or is a grouping label.
func isLabelName(expr string, end int) bool {
	rest := strings.TrimLeft(expr[end:], " ")
	return strings.HasPrefix(rest, "=") || strings.HasPrefix(rest, "!=") || strings.HasPrefix(rest, "=~") || strings.HasPrefix(rest, "!~")
}
