package tests

import (
	"context"
	"debug/buildinfo"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/balise-net/balise/deploy"
)

// TestReleaseBuild builds Balise exactly as the container image does
// (deploy.BuildArgs, deploy.BuildEnv) and checks the result: a static
// executable carrying the release settings, which runs.
func TestReleaseBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary again; skipped with -short")
	}
	out := filepath.Join(t.TempDir(), "balise")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", deploy.BuildArgs(out)...)
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), deploy.BuildEnv...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(deploy.BuildArgs(out), " "), err, b)
	}

	// Static: no dynamic loader, no shared libraries.
	f, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("release binary has a %v program header: not static", p.Type)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("release binary needs shared libraries %v", libs)
	}

	// The settings recorded in the binary are the release ones.
	info, err := buildinfo.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string]string{}
	for _, s := range info.Settings {
		settings[s.Key] = s.Value
	}
	for key, want := range map[string]string{
		"CGO_ENABLED": "0",
		"-trimpath":   "true",
		"-tags":       "timetzdata",
	} {
		if got := settings[key]; got != want {
			t.Errorf("release binary build setting %s = %q, want %q", key, got, want)
		}
	}
	if info.Path != "github.com/balise-net/balise/cmd/balise" {
		t.Errorf("release binary main package %q", info.Path)
	}
	// -ldflags is not recorded with -trimpath: look for what -s and -w
	// remove.
	if slices.ContainsFunc(f.Sections, func(s *elf.Section) bool { return s.Name == ".symtab" }) {
		t.Error("release binary keeps its symbol table (-ldflags=-s not applied)")
	}
	if slices.ContainsFunc(f.Sections, func(s *elf.Section) bool {
		return strings.HasPrefix(s.Name, ".debug_") || strings.HasPrefix(s.Name, ".zdebug_")
	}) {
		t.Error("release binary keeps DWARF (-ldflags=-w not applied)")
	}

	// It runs, and checks the systemd example policy (which names a zone).
	ctx2, cancel2 := context.WithTimeout(context.Background(), time.Minute)
	defer cancel2()
	if b, err := exec.CommandContext(ctx2, out, "check", "--config", "../deploy/systemd/balise.toml").CombinedOutput(); err != nil {
		t.Errorf("release binary: balise check: %v\n%s", err, b)
	}
}
