package config

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"os"
	"strings"
)

// List files and downloaded lists hold one entry per line, in any mix of
// three formats, recognised line by line:
//
//	0.0.0.0 ads.example tracker.example   hosts: an address, then names
//	example.com                           plain: one domain
//	||example.com^                        adblock: a domain rule
//
// Empty lines and comments ("#" anywhere, "!" at the start, "[Adblock
// Plus 2.0]" headers) are skipped. Every entry also covers its
// subdomains, so a leading "*." or "." is accepted and dropped. Adblock
// syntax beyond plain domain rules (exceptions "@@", options "$",
// paths, wildcards, regular expressions, element hiding "##") is not
// supported and reported as a malformed line.

// maxLineProblems bounds the problems reported per file.
const maxLineProblems = 20

// lineProblem is a malformed line of a list.
type lineProblem struct {
	Line int
	Msg  string
}

// hostsBoilerplate are names of a system hosts file that are not entries.
var hostsBoilerplate = map[string]bool{
	"localhost": true, "localhost.localdomain": true, "local": true, "broadcasthost": true,
	"ip6-localhost": true, "ip6-loopback": true, "ip6-localnet": true, "ip6-mcastprefix": true,
	"ip6-allnodes": true, "ip6-allrouters": true, "ip6-allhosts": true, "0.0.0.0": true,
}

// parseListLine parses one line in whichever format it is written.
func parseListLine(line string) ([]string, error) {
	line = strings.TrimSpace(line)
	switch {
	case line == "", line[0] == '!', line[0] == '#', line[0] == '[' && strings.HasSuffix(line, "]"):
		return nil, nil
	case strings.HasPrefix(line, "||"), strings.HasPrefix(line, "@@"), strings.Contains(line, "##"),
		strings.HasPrefix(line, "|"), line[0] == '/' && len(line) > 1:
		return parseAdblockLine(line)
	}
	fields := strings.Fields(stripComment(line))
	if len(fields) == 0 {
		return nil, nil
	}
	if _, err := netip.ParseAddr(fields[0]); err == nil && len(fields) > 1 {
		return parseHostsLine(line)
	}
	return parsePlainLine(line)
}

func stripComment(line string) string {
	if i := strings.IndexByte(line, '#'); i >= 0 {
		return line[:i]
	}
	return line
}

// parseHostsLine parses "ADDRESS NAME [NAME...] [# comment]".
func parseHostsLine(line string) ([]string, error) {
	fields := strings.Fields(stripComment(line))
	if len(fields) == 0 {
		return nil, nil
	}
	if _, err := netip.ParseAddr(fields[0]); err != nil {
		return nil, fmt.Errorf("hosts line must start with an IP address, not %q", clip(fields[0]))
	}
	if len(fields) == 1 {
		return nil, fmt.Errorf("address %q without host names", clip(fields[0]))
	}
	var out []string
	for _, f := range fields[1:] {
		if hostsBoilerplate[strings.ToLower(f)] {
			continue
		}
		d, err := listDomain(f)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}

// parsePlainLine parses "DOMAIN [# comment]".
func parsePlainLine(line string) ([]string, error) {
	fields := strings.Fields(stripComment(line))
	switch len(fields) {
	case 0:
		return nil, nil
	case 1:
	default:
		return nil, fmt.Errorf("unrecognised line %q (want a domain, a hosts line or ||domain^)", clip(line))
	}
	d, err := listDomain(fields[0])
	if err != nil {
		return nil, err
	}
	return []string{d}, nil
}

// parseAdblockLine parses "||DOMAIN^" (also "||DOMAIN^|" and "||DOMAIN").
func parseAdblockLine(line string) ([]string, error) {
	line = strings.TrimSpace(line)
	if line == "" || line[0] == '!' {
		return nil, nil
	}
	switch {
	case strings.HasPrefix(line, "@@"):
		return nil, errors.New("adblock exception rules (@@) are not supported: use a [[list]] with allow = true")
	case strings.Contains(line, "##") || strings.Contains(line, "#@#") || strings.Contains(line, "#?#"):
		return nil, errors.New("adblock element hiding rules are not supported")
	case !strings.HasPrefix(line, "||"):
		return nil, fmt.Errorf("unsupported adblock rule %q: only ||domain^ is supported", clip(line))
	}
	rest := line[2:]
	if i := strings.IndexByte(rest, '$'); i >= 0 {
		return nil, fmt.Errorf("adblock options %q are not supported", clip(rest[i:]))
	}
	rest = strings.TrimSuffix(rest, "|")
	rest = strings.TrimSuffix(rest, "^")
	if strings.ContainsAny(rest, "/^*|:?=&") {
		return nil, fmt.Errorf("unsupported adblock rule %q: only ||domain^ is supported", clip(line))
	}
	d, err := listDomain(rest)
	if err != nil {
		return nil, err
	}
	return []string{d}, nil
}

// listDomain normalizes one domain entry of a list.
func listDomain(s string) (string, error) {
	s = strings.TrimPrefix(s, "*.")
	if strings.HasPrefix(s, ".") && len(s) > 1 {
		s = s[1:]
	}
	n, err := normalizeHost(s)
	if err != nil || strings.ContainsAny(s, "*[]") {
		return "", fmt.Errorf("invalid domain %q", clip(s))
	}
	if _, err := netip.ParseAddr(n); err == nil {
		return "", fmt.Errorf("%q is an IP address, not a domain", clip(s))
	}
	return n, nil
}

// clip shortens text quoted in messages.
func clip(s string) string {
	if len(s) > 80 {
		return s[:77] + "..."
	}
	return s
}

// parseList reads a whole list. It returns the domains of the good lines,
// up to maxProblems malformed lines, and the number of malformed lines.
func parseList(r io.Reader, maxProblems int) (domains []string, problems []lineProblem, bad int, err error) {
	br := bufio.NewReader(r)
	for n := 1; ; n++ {
		line, rerr := br.ReadString('\n')
		if len(line) > 0 {
			if n == 1 {
				line = strings.TrimPrefix(line, "\ufeff")
			}
			doms, perr := parseListLine(line)
			if perr != nil {
				bad++
				if len(problems) < maxProblems {
					problems = append(problems, lineProblem{Line: n, Msg: perr.Error()})
				}
			}
			domains = append(domains, doms...)
		}
		if rerr == io.EOF {
			return domains, problems, bad, nil
		}
		if rerr != nil {
			return domains, problems, bad, rerr
		}
	}
}

// readListFile reads a list file. err is about the file as a whole (it
// cannot be read, or it is binary); problems are malformed lines.
func readListFile(path string) ([]string, []lineProblem, error) {
	fi, err := os.Stat(path)
	if err == nil && !fi.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("list file %s is not a regular file", path)
	}
	if err == nil && fi.Size() > maxListBytes {
		return nil, nil, fmt.Errorf("list file %s is larger than %d bytes", path, maxListBytes)
	}
	var data []byte
	if err == nil {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil, fmt.Errorf("list file %s does not exist", path)
		}
		return nil, nil, fmt.Errorf("list file %s: %s", path, errText(err))
	}
	if bytes.IndexByte(data, 0) >= 0 {
		return nil, nil, fmt.Errorf("list file %s is not a text file", path)
	}
	doms, probs, bad, err := parseList(bytes.NewReader(data), maxLineProblems)
	if err != nil {
		return nil, nil, err
	}
	if bad > len(probs) {
		probs = append(probs, lineProblem{Line: 0, Msg: fmt.Sprintf("%d more malformed lines", bad-len(probs))})
	}
	return doms, probs, nil
}

// checkListURL accepts https URLs only (lists decide what is blocked:
// they must not be open to tampering on the way).
func checkListURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("invalid list URL %q (want https://...)", s)
	}
	return nil
}
