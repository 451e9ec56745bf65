package policy

import (
	"encoding/binary"
	"errors"
	"math/bits"
)

// The domain matcher stores no names. Each listed name is kept as a
// 64-bit fingerprint of its labels, computed right to left so that the
// fingerprint of "m.facebook.com" extends the one of "facebook.com": one
// pass over a host yields the fingerprint of every suffix on a label
// boundary. Every proper suffix of a listed name is also in the table, as
// a parent marker, so a lookup walks a host's suffixes from the shortest
// and stops at the first one that is absent or has nothing below it:
// typically the top-level domain (in cache) and one more lookup.
//
// The table is open addressing with entries in fingerprint order. An
// entry's home slot is fastRange(fp, size), which grows with fp; entries
// sit at their home slot or the first free slot after it. A slot is one
// 64-bit word: the value index (16 bits), the distance from the home slot
// plus one (8 bits) and the fingerprint's low 40 bits. The home slot
// stands for the fingerprint's top bits, so the word holds about 60 bits
// of fingerprint and the value in one cache access. At 85% load this is
// 9.4 bytes per entry, about 11 to 12 per listed name with the parent
// markers.
//
// False positives: the fingerprint mixes 64-bit words with a 64x64->128
// bit multiply (the wyhash "mum" step) and behaves as a random function
// here. A suffix that is not in the table matches an entry only if an
// entry has the same home slot (0.85 of them per slot on average) and the
// same low 40 bits: probability 0.85 * 2^-40 = 7.7e-13 per such lookup,
// whatever the number of names. A host makes about one lookup of an
// absent suffix, so about one host in 1.3e12 is misclassified as listed:
// at a billion decisions a day, one every three to four years. Two listed
// names share home slot and low bits with probability about
// n * 0.85/2 * 2^-40 (4.6e-7 for 1.2 million entries); they then share an
// entry whose value is the union of both.

const (
	hashSeed = 0x243f6a8885a308d3
	hashK1   = 0xa0761d6478bd642f
	hashK2   = 0xe7037ed1a0b428db // has bytes >= 0x80: never a label word
	hashK3   = 0x8ebc6af09c88c6e3
)

// mum multiplies a and b into 128 bits and folds the halves.
func mum(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}

// extendHash returns the fingerprint of the suffix made of the label
// name[s:e] followed by the suffix whose fingerprint is h (hashSeed for
// the empty suffix). name must have 8 readable bytes past e.
func extendHash(h uint64, name *[nameBufLen]byte, s, e int) uint64 {
	a := h ^ hashK1 ^ uint64(e-s)*hashK3
	for i := s; i < e; i += 8 {
		w := binary.LittleEndian.Uint64(name[i : i+8])
		if r := e - i; r < 8 {
			w &= 1<<(8*uint(r)) - 1
		}
		h = mum(a, w^hashK2)
		a = h ^ hashK1
	}
	return h
}

// matcher is the compiled fingerprint table.
type matcher struct {
	size  uint64   // home slots; slots has a few more for the last runs
	slots []uint64 // value<<48 | (distance+1)<<40 | low 40 bits; 0 is empty
	// minLabels is the fewest labels of a listed (not parent) entry:
	// shorter suffixes can only be parents, and are not looked up (a
	// missing parent would show as a missing longer suffix anyway).
	minLabels int
}

const (
	keyBits  = 40
	keyMask  = 1<<keyBits - 1
	maxDelta = 254 // largest distance from the home slot
)

// fastRange maps fp onto [0, size) preserving order (Lemire).
func fastRange(fp, size uint64) uint64 {
	hi, _ := bits.Mul64(fp, size)
	return hi
}

// lookup returns the value index of fingerprint fp.
func (m *matcher) lookup(fp uint64) (uint16, bool) {
	if m.size == 0 {
		return 0, false
	}
	h := fastRange(fp, m.size)
	key := fp & keyMask
	slots := m.slots
	for i := h; i < uint64(len(slots)); i++ {
		w := slots[i]
		if w == 0 {
			break
		}
		home := i + 1 - (w>>keyBits)&0xff
		if home == h {
			if w&keyMask == key {
				return uint16(w >> 48), true
			}
		} else if home > h {
			break
		}
	}
	return 0, false
}

// rawEntry is one name given to the builder: its fingerprint and what it
// is (kind<<24 | service index).
type rawEntry struct {
	fp  uint64
	val uint32
}

// matcherBuilder collects fingerprints, then sorts them into a matcher.
type matcherBuilder struct {
	entries []rawEntry
	// minLabels is the fewest labels of a name given (not a parent).
	minLabels int
}

// addName gives the builder the normalized name buf[:n] with raw value
// val, and a parent marker for each of its proper suffixes.
func (b *matcherBuilder) addName(buf *hostBuf, n int, val uint32) {
	h := uint64(hashSeed)
	labels := 0
	for e := n; e > 0; {
		s := buf.prevDot(e)
		if e < n {
			b.entries = append(b.entries, rawEntry{h, kindParent << 24})
		}
		h = extendHash(h, &buf.b, s+1, e)
		labels++
		e = s
	}
	b.entries = append(b.entries, rawEntry{h, val})
	if b.minLabels == 0 || labels < b.minLabels {
		b.minLabels = labels
	}
}

// fpVal is a distinct fingerprint and its value index.
type fpVal struct {
	fp uint64
	v  uint16
}

// build sorts the entries (a stable counting sort on the top bits, then
// an insertion sort inside each small bucket), calls merge once per
// distinct fingerprint with its raw values in insertion order (merge
// returns the final value index), and places them in the table. union
// combines the values of two entries that the table cannot tell apart.
func (b *matcherBuilder) build(merge func(raw []uint32) (uint16, error), union func(a, b uint16) (uint16, error)) (matcher, error) {
	n := len(b.entries)
	bucketBits := uint(1)
	if l := bits.Len(uint(n)); l > 3 {
		bucketBits = uint(l - 2)
	}
	nb := 1 << bucketBits
	shift := 64 - bucketBits
	counts := make([]uint32, nb+1)
	for _, e := range b.entries {
		counts[(e.fp>>shift)+1]++
	}
	for i := 1; i <= nb; i++ {
		counts[i] += counts[i-1]
	}
	sorted := make([]rawEntry, n)
	next := make([]uint32, nb)
	copy(next, counts[:nb])
	for _, e := range b.entries {
		k := e.fp >> shift
		sorted[next[k]] = e
		next[k]++
	}
	b.entries, next = nil, nil
	for k := 0; k < nb; k++ {
		part := sorted[counts[k]:counts[k+1]]
		for i := 1; i < len(part); i++ {
			for j := i; j > 0 && part[j].fp < part[j-1].fp; j-- {
				part[j], part[j-1] = part[j-1], part[j]
			}
		}
	}
	counts = nil
	distinct := 0
	for i := range sorted {
		if i == 0 || sorted[i].fp != sorted[i-1].fp {
			distinct++
		}
	}
	fvs := make([]fpVal, 0, distinct)
	var group []uint32
	for i := 0; i < n; {
		j := i
		group = group[:0]
		for j < n && sorted[j].fp == sorted[i].fp {
			group = append(group, sorted[j].val)
			j++
		}
		v, err := merge(group)
		if err != nil {
			return matcher{}, err
		}
		fvs = append(fvs, fpVal{sorted[i].fp, v})
		i = j
	}
	sorted = nil
	if len(fvs) == 0 {
		return matcher{}, nil
	}
	for _, load := range []uint64{85, 75, 60, 45, 30} {
		m, ok, err := place(fvs, load, union)
		if err != nil || ok {
			m.minLabels = b.minLabels
			return m, err
		}
	}
	return matcher{}, errors.New("domain table: cannot place the names")
}

// place lays fvs (sorted by fingerprint) out at load percent. It fails
// when an entry would sit more than maxDelta slots after its home.
func place(fvs []fpVal, load uint64, union func(a, b uint16) (uint16, error)) (matcher, bool, error) {
	m := matcher{size: uint64(len(fvs))*100/load + 1}
	m.slots = make([]uint64, m.size+1, m.size+64)
	pos := uint64(0)
	for _, e := range fvs {
		h := fastRange(e.fp, m.size)
		key := e.fp & keyMask
		// An earlier entry with the same home and low bits cannot be
		// told apart: merge into it. Entries with home h are the last
		// ones placed.
		merged := false
		for j := pos; j > h; j-- {
			w := m.slots[j-1]
			if j-(w>>keyBits)&0xff != h {
				break
			}
			if w&keyMask == key {
				v, err := union(uint16(w>>48), e.v)
				if err != nil {
					return matcher{}, false, err
				}
				m.slots[j-1] = w&(1<<48-1) | uint64(v)<<48
				merged = true
				break
			}
		}
		if merged {
			continue
		}
		slot := max(h, pos)
		if slot-h > maxDelta {
			return matcher{}, false, nil
		}
		for slot+1 >= uint64(len(m.slots)) {
			m.slots = append(m.slots, 0)
		}
		m.slots[slot] = uint64(e.v)<<48 | (slot-h+1)<<keyBits | key
		pos = slot + 1
	}
	return m, true, nil
}
