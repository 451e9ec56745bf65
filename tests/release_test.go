package tests

import (
	"context"
	"debug/buildinfo"
	"debug/elf"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestReleaseBuild checks the binary every end-to-end test drives, which
// TestMain builds exactly as the container image does (deploy.BuildArgs,
// deploy.BuildEnv): a static executable carrying the release settings,
// which runs.
func TestReleaseBuild(t *testing.T) {
	out := baliseBin

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
