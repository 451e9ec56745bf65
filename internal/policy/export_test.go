package policy

// MatcherStats exposes the matcher's shape to the external tests: entries,
// slots, and the longest distance from a home slot to an entry.
func MatcherStats(p *Policy) (entries, slots, longest int) {
	for _, w := range p.c.m.slots {
		if w != 0 {
			entries++
			longest = max(longest, int(w>>keyBits&0xff)-1)
		}
	}
	return entries, len(p.c.m.slots), longest
}
