package deploy

import (
	"bufio"
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// instruction is one Dockerfile instruction with its continuation lines
// joined.
type instruction struct {
	Line int
	Cmd  string // upper case: FROM, RUN, COPY...
	Args string
}

// stage is one FROM ... [AS name] and its instructions.
type stage struct {
	Name, Base string
	Insts      []instruction
}

// parseDockerfile splits a Dockerfile into stages. It understands what
// Balise's Dockerfile uses: comments, parser directives, backslash
// continuations.
func parseDockerfile(data []byte) ([]stage, error) {
	var stages []stage
	sc := bufio.NewScanner(bytes.NewReader(data))
	var cur strings.Builder
	start := 0
	flush := func() error {
		text := strings.TrimSpace(cur.String())
		cur.Reset()
		if text == "" {
			return nil
		}
		cmd, args, _ := strings.Cut(text, " ")
		in := instruction{Line: start, Cmd: strings.ToUpper(cmd), Args: strings.TrimSpace(args)}
		if in.Cmd == "FROM" {
			f := strings.Fields(in.Args)
			s := stage{Base: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				s.Name = f[2]
			} else if len(f) != 1 {
				return fmt.Errorf("line %d: FROM %q", in.Line, in.Args)
			}
			stages = append(stages, s)
			return nil
		}
		if len(stages) == 0 {
			return fmt.Errorf("line %d: %s before FROM", in.Line, in.Cmd)
		}
		stages[len(stages)-1].Insts = append(stages[len(stages)-1].Insts, in)
		return nil
	}
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") {
			continue
		}
		if cur.Len() == 0 {
			start = n
		}
		if l, ok := strings.CutSuffix(line, `\`); ok {
			cur.WriteString(l + " ")
			continue
		}
		cur.WriteString(line)
		if err := flush(); err != nil {
			return nil, err
		}
	}
	return stages, sc.Err()
}

// shellWords splits a shell command line on blanks, honouring double and
// single quotes (no expansions: the Dockerfile needs none).
func shellWords(s string) ([]string, error) {
	var words []string
	var w strings.Builder
	inWord := false
	var quote rune
	for _, r := range s {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			w.WriteRune(r)
		case r == '"' || r == '\'':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		default:
			w.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unterminated quote in %q", s)
	}
	if inWord {
		words = append(words, w.String())
	}
	return words, nil
}

func TestShellWords(t *testing.T) {
	tests := []struct{ in, want string }{
		{`go build -trimpath "-ldflags=-s -w" -o /out/x ./cmd/x`, `go|build|-trimpath|-ldflags=-s -w|-o|/out/x|./cmd/x`},
		{`a 'b c'  d`, `a|b c|d`},
		{`-ldflags "-s -w"`, `-ldflags|-s -w`},
	}
	for _, tt := range tests {
		got, err := shellWords(tt.in)
		if err != nil || strings.Join(got, "|") != tt.want {
			t.Errorf("shellWords(%q) = %q, %v, want %q", tt.in, strings.Join(got, "|"), err, tt.want)
		}
	}
}

func TestDockerfile(t *testing.T) {
	stages, err := parseDockerfile(readFile(t, "container/Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	if len(stages) < 2 {
		t.Fatalf("%d stages, want a build stage and a runtime stage", len(stages))
	}
	for _, s := range stages {
		if !strings.Contains(s.Base, ":") || strings.HasSuffix(s.Base, ":latest") {
			t.Errorf("FROM %s: pin a tag", s.Base)
		}
	}
	build, final := stages[0], stages[len(stages)-1]
	if !strings.HasPrefix(build.Base, "golang:1.26") {
		t.Errorf("build stage FROM %s, want golang:1.26 (the module's Go version)", build.Base)
	}
	if !strings.HasPrefix(final.Base, "gcr.io/distroless/static") && final.Base != "scratch" {
		t.Errorf("final stage FROM %s, want distroless static or scratch", final.Base)
	}

	// The build stage runs exactly BuildArgs with BuildEnv.
	env := map[string]bool{}
	var builds [][]string
	for _, in := range build.Insts {
		switch in.Cmd {
		case "ENV":
			env[strings.ReplaceAll(in.Args, " ", "=")] = true
		case "RUN":
			for _, part := range strings.Split(in.Args, "&&") {
				w, err := shellWords(strings.TrimSpace(part))
				if err != nil {
					t.Fatalf("line %d: %v", in.Line, err)
				}
				for len(w) > 0 && strings.Contains(w[0], "=") { // VAR=value go build
					env[w[0]] = true
					w = w[1:]
				}
				if len(w) > 1 && w[0] == "go" && w[1] == "build" {
					builds = append(builds, w[1:])
				}
			}
		}
	}
	for _, e := range BuildEnv() {
		if !env[e] {
			t.Errorf("build stage does not set %s", e)
		}
	}
	if len(builds) != 1 {
		t.Fatalf("%d `go build` commands, want 1", len(builds))
	}
	out := ""
	if i := slices.Index(builds[0], "-o"); i >= 0 && i+1 < len(builds[0]) {
		out = builds[0][i+1]
	}
	if want := BuildArgs(out); !slices.Equal(builds[0], want) {
		t.Errorf("Dockerfile builds with\n\tgo %s\nwant (deploy.BuildArgs)\n\tgo %s", strings.Join(builds[0], " "), strings.Join(want, " "))
	}

	// The runtime stage: the binary, trust store and zone database copied
	// from the build, a non-root user, the ports, the entry point.
	var user, entry string
	copied := map[string]bool{}
	exposed := map[string]bool{}
	for _, in := range final.Insts {
		switch in.Cmd {
		case "USER":
			user = in.Args
		case "ENTRYPOINT":
			entry = in.Args
		case "EXPOSE":
			for _, p := range strings.Fields(in.Args) {
				exposed[p] = true
			}
		case "COPY":
			f := strings.Fields(in.Args)
			for _, a := range f[:len(f)-1] {
				if !strings.HasPrefix(a, "--") {
					copied[a] = true
				}
			}
		}
	}
	uid, _, _ := strings.Cut(user, ":")
	if uid == "" || uid == "0" || uid == "root" {
		t.Errorf("final stage USER %q, want a non-root user", user)
	}
	for _, want := range []string{"/etc/ssl/certs/ca-certificates.crt", "/usr/share/zoneinfo", out} {
		if !copied[want] {
			t.Errorf("final stage does not COPY %s from the build stage", want)
		}
	}
	if !slices.Contains(BuildFlags(), "-tags=timetzdata") {
		t.Error("BuildFlags lack -tags=timetzdata: the binary would depend on the image's zone database")
	}
	if !strings.Contains(entry, "/usr/local/bin/balise") {
		t.Errorf("ENTRYPOINT %s does not run /usr/local/bin/balise", entry)
	}
	for _, p := range []string{"5353/udp", "5353/tcp", "3128/tcp", "9464/tcp"} {
		if !exposed[p] {
			t.Errorf("final stage does not EXPOSE %s", p)
		}
	}
}
