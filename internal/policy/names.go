package policy

import "strings"

// Directory names: a configured group or user name matches what the
// directory or the authentication says in either of two forms, compared
// case-insensitively:
//
//   - a distinguished name ("CN=Communications,OU=Groups,DC=chus,DC=local")
//     matches the same DN only; spaces around the separators ',', '+' and
//     '=' and at either end do not count;
//   - a plain name ("communications") matches the same name, or a DN
//     whose first RDN has that value ("CN=Communications,OU=…",
//     "uid=alice,ou=people,…"), escapes ("\," or "\2C") undone.
//
// Nothing here allocates.

// isDN reports whether s is written as a distinguished name: it holds an
// '=' (which user and group account names cannot).
func isDN(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == '=' {
			return true
		}
	}
	return false
}

// nameMatches reports whether name, from the directory or the
// authentication, matches the configured entry conf (confDN: isDN(conf)).
func nameMatches(conf string, confDN bool, name string) bool {
	switch nameDN := isDN(name); {
	case confDN && nameDN:
		return dnEqualFold(conf, name)
	case confDN:
		return false
	case nameDN:
		return firstRDNEqualFold(name, conf)
	}
	return strings.EqualFold(conf, name)
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

func isDNSep(c byte) bool { return c == ',' || c == '+' || c == '=' || c == ';' }

// dnEqualFold compares two DNs byte by byte in canonical form.
func dnEqualFold(a, b string) bool {
	i, j := 0, 0
	for {
		ca, ni := dnByte(a, i)
		cb, nj := dnByte(b, j)
		if ca != cb {
			return false
		}
		if ca < 0 {
			return true
		}
		i, j = ni, nj
	}
}

// dnByte returns the next byte of DN s from index i in canonical form
// (lower-case ASCII; ';' as ','; spaces at either end and next to an
// unescaped separator left out) and the index after it; -1 at the end.
func dnByte(s string, i int) (int, int) {
	for i < len(s) {
		c := s[i]
		if c != ' ' {
			if c == ';' && (i == 0 || s[i-1] != '\\') {
				c = ','
			}
			return int(lowerASCII(c)), i + 1
		}
		k := i
		for k < len(s) && s[k] == ' ' {
			k++
		}
		afterSep := i == 0 || (isDNSep(s[i-1]) && (i < 2 || s[i-2] != '\\'))
		escaped := i > 0 && s[i-1] == '\\'
		if !escaped && (afterSep || k == len(s) || isDNSep(s[k])) {
			i = k
			continue
		}
		return ' ', i + 1
	}
	return -1, i
}

// firstRDNEqualFold reports whether the value of dn's first RDN is name.
func firstRDNEqualFold(dn, name string) bool {
	i := 0
	for i < len(dn) && dn[i] != '=' {
		i++
	}
	i++
	for i < len(dn) && dn[i] == ' ' {
		i++
	}
	// The value ends at the first unescaped ',', '+' or ';'; trailing
	// unescaped spaces do not count.
	end := i
	for k := i; k < len(dn); k++ {
		c := dn[k]
		if c == '\\' {
			if k+1 < len(dn) {
				k++
			}
			end = k + 1
			continue
		}
		if c == ',' || c == '+' || c == ';' {
			break
		}
		if c != ' ' {
			end = k + 1
		}
	}
	j := 0
	for k := i; k < end; k++ {
		c := dn[k]
		if c == '\\' && k+1 < end {
			if k+2 < end && isHex(dn[k+1]) && isHex(dn[k+2]) {
				c = unhex(dn[k+1])<<4 | unhex(dn[k+2])
				k += 2
			} else {
				k++
				c = dn[k]
			}
		}
		if j >= len(name) || lowerASCII(c) != lowerASCII(name[j]) {
			return false
		}
		j++
	}
	return j == len(name)
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c >= 'a':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}
