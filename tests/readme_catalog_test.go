package tests

import (
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/balise-net/balise/config"
)

// TestReadmeCatalogTable keeps the README's catalog table true: one row
// per category of the embedded catalog naming exactly the services it
// lists by default, their count and their domain count; the optional
// services named in the opt-in column of their category; a total row whose
// domain count is the catalog version's.
func TestReadmeCatalogTable(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const header = "| category | services listed by default | services | domains | opt-in (not listed by default) |"
	text := string(b)
	i := strings.Index(text, header)
	if i < 0 {
		t.Fatalf("README.md has no catalog table with the header %q", header)
	}
	rows := map[string][]string{}
	for _, line := range strings.Split(text[i:], "\n")[2:] {
		if !strings.HasPrefix(line, "|") {
			break
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for j := range cells {
			cells[j] = strings.TrimSpace(cells[j])
		}
		if len(cells) != 5 {
			t.Fatalf("catalog table row %q has %d cells, want 5", line, len(cells))
		}
		if _, dup := rows[cells[0]]; dup {
			t.Errorf("catalog table: category %s twice", cells[0])
		}
		rows[cells[0]] = cells
	}

	info := config.Catalog()
	totalServices, totalDomains := 0, 0
	var optional []string
	for _, cat := range info.Categories {
		var ids, opt []string
		domains := 0
		for _, s := range info.Services {
			if s.Category != cat {
				continue
			}
			if s.Optional {
				opt = append(opt, s.ID)
				continue
			}
			ids = append(ids, s.ID)
			domains += s.Domains
		}
		totalServices += len(ids)
		totalDomains += domains
		optional = append(optional, opt...)
		row, ok := rows[cat]
		if !ok {
			t.Errorf("catalog table has no row for category %s", cat)
			continue
		}
		delete(rows, cat)
		var named []string
		for _, item := range strings.Split(dropParens(row[1]), ",") {
			if f := strings.Fields(item); len(f) > 0 {
				named = append(named, f[0])
			}
		}
		slices.Sort(ids)
		slices.Sort(named)
		if !slices.Equal(named, ids) {
			t.Errorf("catalog table, %s: services %v, want %v", cat, named, ids)
		}
		if n, _ := strconv.Atoi(row[2]); n != len(ids) {
			t.Errorf("catalog table, %s: %s services, want %d", cat, row[2], len(ids))
		}
		if n, _ := strconv.Atoi(row[3]); n != domains {
			t.Errorf("catalog table, %s: %s domains, want %d", cat, row[3], domains)
		}
		for _, id := range opt {
			if !strings.Contains(row[4], id) {
				t.Errorf("catalog table, %s: the opt-in column does not name the optional service %s", cat, id)
			}
		}
	}
	total, ok := rows["**total**"]
	if !ok {
		t.Fatalf("catalog table has no **total** row")
	}
	delete(rows, "**total**")
	if n, _ := strconv.Atoi(total[2]); n != totalServices {
		t.Errorf("catalog table total: %s services, want %d", total[2], totalServices)
	}
	if n, _ := strconv.Atoi(total[3]); n != totalDomains || !strings.HasSuffix(info.Version, "."+total[3]) {
		t.Errorf("catalog table total: %s domains, want %d (catalog %s)", total[3], totalDomains, info.Version)
	}
	for _, id := range optional {
		if !strings.Contains(total[4], id) {
			t.Errorf("catalog table total: the opt-in column does not name the optional service %s", id)
		}
	}
	for cat := range rows {
		t.Errorf("catalog table has a row for %q, not a catalog category", cat)
	}
}

// dropParens removes the parenthesized remarks of a table cell.
func dropParens(s string) string {
	var b strings.Builder
	depth := 0
	for _, r := range s {
		switch {
		case r == '(':
			depth++
		case r == ')' && depth > 0:
			depth--
		case depth == 0:
			b.WriteRune(r)
		}
	}
	return b.String()
}
