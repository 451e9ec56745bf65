package policy

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

const (
	nsPerSec  = int64(time.Second)
	nsPerDay  = int64(24 * time.Hour)
	nsPerWeek = 7 * nsPerDay
)

var dayNames = [7]string{"sun", "mon", "tue", "wed", "thu", "fri", "sat"}

// ParseWindow parses "DAYS HH:MM[:SS]-HH:MM[:SS]". DAYS is a day
// ("mon"), a range ("mon-fri", "fri-mon" wraps), a comma list of those
// ("mon,wed,fri-sat"), or "*" / "daily" for every day. An end at or before
// the start crosses midnight; "24:00" is accepted as an end.
//
// Day names are the English three-letter abbreviations, in any case.
// Hours have one or two digits, minutes and seconds two.
func ParseWindow(s string) (Window, error) {
	f := strings.Fields(s)
	if len(f) != 2 {
		return Window{}, fmt.Errorf("window %q: want \"DAYS HH:MM-HH:MM\"", s)
	}
	days, err := parseDays(f[0])
	if err != nil {
		return Window{}, fmt.Errorf("window %q: %v", s, err)
	}
	from, to, ok := strings.Cut(f[1], "-")
	if !ok {
		return Window{}, fmt.Errorf("window %q: want a time range HH:MM-HH:MM", s)
	}
	start, err := parseClock(from, false)
	if err != nil {
		return Window{}, fmt.Errorf("window %q: start: %v", s, err)
	}
	end, err := parseClock(to, true)
	if err != nil {
		return Window{}, fmt.Errorf("window %q: end: %v", s, err)
	}
	return Window{Days: days, Start: start, End: end}, nil
}

// String formats w the way ParseWindow reads it.
func (w Window) String() string {
	var days string
	if w.Days&0x7f == 0x7f {
		days = "daily"
	} else {
		var parts []string
		for d := 0; d < 7; d++ {
			if w.Days&(1<<d) != 0 {
				parts = append(parts, dayNames[d])
			}
		}
		days = strings.Join(parts, ",")
	}
	return days + " " + formatClock(w.Start) + "-" + formatClock(w.End)
}

func formatClock(d time.Duration) string {
	s := int64(d / time.Second)
	out := fmt.Sprintf("%02d:%02d", s/3600, s/60%60)
	if s%60 != 0 {
		out += fmt.Sprintf(":%02d", s%60)
	}
	return out
}

func parseDay(s string) (int, error) {
	for i, n := range dayNames {
		if strings.EqualFold(s, n) {
			return i, nil
		}
	}
	return 0, fmt.Errorf("unknown day %q (want sun, mon, tue, wed, thu, fri or sat)", s)
}

func parseDays(s string) (uint8, error) {
	if s == "*" || strings.EqualFold(s, "daily") {
		return 0x7f, nil
	}
	var days uint8
	for _, part := range strings.Split(s, ",") {
		from, to, isRange := strings.Cut(part, "-")
		a, err := parseDay(from)
		if err != nil {
			return 0, err
		}
		if !isRange {
			days |= 1 << a
			continue
		}
		b, err := parseDay(to)
		if err != nil {
			return 0, err
		}
		for d := a; ; d = (d + 1) % 7 {
			days |= 1 << d
			if d == b {
				break
			}
		}
	}
	return days, nil
}

// parseClock parses HH:MM or HH:MM:SS; 24:00[:00] only when end is set.
func parseClock(s string, end bool) (time.Duration, error) {
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return 0, fmt.Errorf("bad time %q (want HH:MM or HH:MM:SS)", s)
	}
	var v [3]int
	for i, p := range parts {
		if p == "" || len(p) > 2 || (i > 0 && len(p) != 2) {
			return 0, fmt.Errorf("bad time %q (want HH:MM or HH:MM:SS)", s)
		}
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || p[0] == '+' {
			return 0, fmt.Errorf("bad time %q (want HH:MM or HH:MM:SS)", s)
		}
		v[i] = n
	}
	if v[1] > 59 || v[2] > 59 {
		return 0, fmt.Errorf("bad time %q: minutes and seconds go up to 59", s)
	}
	if v[0] == 24 && v[1] == 0 && v[2] == 0 && end {
		return 24 * time.Hour, nil
	}
	if v[0] > 23 {
		return 0, fmt.Errorf("bad time %q: hours go up to 23 (24:00 only as an end)", s)
	}
	return time.Duration(v[0])*time.Hour + time.Duration(v[1])*time.Minute + time.Duration(v[2])*time.Second, nil
}

// validWindow reports whether w can be compiled.
func validWindow(w Window) error {
	if w.Days&0x7f == 0 {
		return fmt.Errorf("window %v has no day", w)
	}
	if w.Start < 0 || w.Start >= 24*time.Hour || w.End < 0 || w.End > 24*time.Hour {
		return fmt.Errorf("window times out of range (start %v, end %v)", w.Start, w.End)
	}
	return nil
}

// weekSet is a union of windows as sorted, disjoint half-open intervals of
// local wall-clock time since Sunday 00:00, in nanoseconds: b holds
// start0, end0, start1, end1, ... within [0, nsPerWeek].
type weekSet struct {
	b []int64
	// always is set when the intervals cover the whole week.
	always bool
}

func newWeekSet(ws []Window) weekSet {
	var iv [][2]int64
	for _, w := range ws {
		for d := int64(0); d < 7; d++ {
			if w.Days&(1<<d) == 0 {
				continue
			}
			s := d*nsPerDay + int64(w.Start)
			e := d*nsPerDay + int64(w.End)
			if w.End <= w.Start {
				e += nsPerDay
			}
			if e > nsPerWeek {
				iv = append(iv, [2]int64{s, nsPerWeek}, [2]int64{0, e - nsPerWeek})
			} else {
				iv = append(iv, [2]int64{s, e})
			}
		}
	}
	slices.SortFunc(iv, func(a, b [2]int64) int {
		switch {
		case a[0] < b[0]:
			return -1
		case a[0] > b[0]:
			return 1
		}
		return 0
	})
	var ws2 weekSet
	for _, x := range iv {
		if n := len(ws2.b); n > 0 && x[0] <= ws2.b[n-1] {
			ws2.b[n-1] = max(ws2.b[n-1], x[1])
			continue
		}
		ws2.b = append(ws2.b, x[0], x[1])
	}
	if len(ws2.b) == 2 && ws2.b[0] == 0 && ws2.b[1] == nsPerWeek {
		ws2 = weekSet{always: true}
	}
	return ws2
}

// upper returns how many bounds are <= x.
func (w *weekSet) upper(x int64) int {
	lo, hi := 0, len(w.b)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if w.b[m] <= x {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// contains reports whether wall-clock week time x is inside the set.
func (w *weekSet) contains(x int64) bool {
	return w.always || w.upper(x)&1 == 1
}

// next returns the time from x to the next bound strictly after x,
// wrapping to the next week, or false when the set never changes.
func (w *weekSet) next(x int64) (int64, bool) {
	if w.always || len(w.b) == 0 {
		return 0, false
	}
	if i := w.upper(x); i < len(w.b) {
		return w.b[i] - x, true
	}
	return w.b[0] + nsPerWeek - x, true
}

// zoneTable is a precomputed list of a location's UTC offsets, so that
// a decision finds the wall-clock time with an indexed lookup and no call
// into the time package's zone cache.
type zoneTable struct {
	starts []int64 // instants (Unix nanoseconds) offsets start at; starts[0] is MinInt64
	offs   []int64 // seconds east of UTC
	// index[k] is the last entry starting at or before zoneIndexBase +
	// k<<zoneIndexShift: a lookup starts there and moves at most a few
	// entries forward.
	index []uint16
}

// zoneTableYears bound the precomputed transitions; outside them the
// nearest offset is used.
const zoneTableFirstYear, zoneTableLastYear = 1900, 2200

// The index has one entry per 2^52 ns (52 days) from 1900 to 2200.
const (
	zoneIndexShift = 52
	zoneIndexBase  = -2208988800 * nsPerSec // 1900-01-01T00:00:00Z
)

func newZoneTable(loc *time.Location) zoneTable {
	t := time.Date(zoneTableFirstYear, 1, 1, 0, 0, 0, 0, loc)
	limit := time.Date(zoneTableLastYear, 1, 1, 0, 0, 0, 0, time.UTC)
	_, off := t.Zone()
	z := zoneTable{starts: []int64{math.MinInt64}, offs: []int64{int64(off)}}
	for steps := 0; steps < 100000 && t.Before(limit) && len(z.starts) < 1<<16; steps++ {
		_, end := t.ZoneBounds()
		if end.IsZero() {
			break
		}
		if !end.After(t) {
			// For periods computed from a zone's rule rather than its
			// table, the time package reports some ends at a year
			// boundary and then the same end for later instants: find
			// the next change by scanning instead.
			end = nextOffsetChange(t, limit)
			if end.IsZero() {
				break
			}
		}
		if !end.Before(limit) {
			break
		}
		_, off := end.Zone()
		if int64(off) != z.offs[len(z.offs)-1] {
			z.starts = append(z.starts, end.UnixNano())
			z.offs = append(z.offs, int64(off))
		}
		t = end
	}
	last := limit.UnixNano()
	for k, i := int64(0), 0; k<<zoneIndexShift+zoneIndexBase < last; k++ {
		at := k<<zoneIndexShift + zoneIndexBase
		for i+1 < len(z.starts) && z.starts[i+1] <= at {
			i++
		}
		z.index = append(z.index, uint16(i))
	}
	return z
}

// nextOffsetChange returns the first second after t whose UTC offset
// differs from t's, or the zero Time if there is none before limit. It
// assumes offsets change at most once in six hours.
func nextOffsetChange(t, limit time.Time) time.Time {
	_, off := t.Zone()
	lo := t
	for lo.Before(limit) {
		hi := lo.Add(6 * time.Hour)
		if _, o := hi.Zone(); o == off {
			lo = hi
			continue
		}
		// The change is in (lo, hi]: bisect to the second.
		for hi.Sub(lo) > time.Second {
			mid := lo.Add(hi.Sub(lo) / 2).Truncate(time.Second)
			if _, o := mid.Zone(); o == off {
				lo = mid
			} else {
				hi = mid
			}
		}
		return hi
	}
	return time.Time{}
}

// at returns the UTC offset in seconds at instant u (Unix nanoseconds)
// and the instant the next offset starts at (MaxInt64 when none).
func (z *zoneTable) at(u int64) (off, next int64) {
	i := 0
	if u >= zoneIndexBase {
		// The difference may exceed MaxInt64, never MaxUint64.
		if k := uint64(u-zoneIndexBase) >> zoneIndexShift; k < uint64(len(z.index)) {
			i = int(z.index[k])
		} else {
			i = len(z.starts) - 1
		}
	}
	for i+1 < len(z.starts) && z.starts[i+1] <= u {
		i++
	}
	if i+1 < len(z.starts) {
		return z.offs[i], z.starts[i+1]
	}
	return z.offs[i], math.MaxInt64
}

// weekTime returns the local wall-clock time since Sunday 00:00 of
// instant u (Unix nanoseconds) at UTC offset off (seconds).
func weekTime(u, off int64) int64 {
	// 1970-01-01 was a Thursday: Sunday 00:00 was 4 days earlier.
	x := (u + off*nsPerSec + 4*nsPerDay) % nsPerWeek
	if x < 0 {
		x += nsPerWeek
	}
	return x
}
