package tests

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPackageDocs fails when a package of the module lacks its doc
// comment: "Package x …" for libraries, "Command x …" (or any comment) for
// main packages.
func TestPackageDocs(t *testing.T) {
	dirs := map[string]bool{}
	err := filepath.WalkDir("..", func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") && path != ".." || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(path, ".go") && !strings.HasSuffix(path, "_test.go") {
			dirs[filepath.Dir(path)] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) < 10 {
		t.Fatalf("found %d package directories, want the whole module", len(dirs))
	}
	for dir := range dirs {
		pkgs, err := parser.ParseDir(token.NewFileSet(), dir, func(fi os.FileInfo) bool {
			return !strings.HasSuffix(fi.Name(), "_test.go")
		}, parser.ParseComments|parser.PackageClauseOnly)
		if err != nil {
			t.Errorf("%s: %v", dir, err)
			continue
		}
		for name, pkg := range pkgs {
			documented, proper := false, false
			for _, f := range pkg.Files {
				if f.Doc == nil {
					continue
				}
				documented = true
				if name == "main" || strings.HasPrefix(f.Doc.Text(), "Package "+name+" ") {
					proper = true
				}
			}
			switch {
			case !documented:
				t.Errorf("package %s (%s) has no doc comment", name, dir)
			case !proper:
				t.Errorf("package %s (%s): doc comment should start %q", name, dir, "Package "+name+" ")
			}
		}
	}
}
