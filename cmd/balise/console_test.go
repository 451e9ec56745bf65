package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/balise-net/balise/internal/exceptions"
	"github.com/balise-net/balise/internal/policy"
)

func TestConsolePasswd(t *testing.T) {
	file := filepath.Join(t.TempDir(), "accounts")
	passwd := func(stdin string, args ...string) (string, int) {
		var out, errb bytes.Buffer
		code := runConsole(append([]string{"passwd"}, args...), strings.NewReader(stdin), &out, &errb)
		return out.String() + errb.String(), code
	}
	if out, code := passwd("un long mot de passe\nun long mot de passe\n", "--accounts", file, "--role", "officer", "rsi"); code != 0 {
		t.Fatalf("passwd = %d %s", code, out)
	}
	data, _ := os.ReadFile(file)
	if !strings.Contains(string(data), "rsi:officer:$argon2id$v=19$") || strings.Contains(string(data), "un long mot de passe") {
		t.Fatalf("accounts file:\n%s", data)
	}
	if fi, _ := os.Stat(file); fi.Mode().Perm() != 0o600 {
		t.Errorf("accounts file mode %v, want 0600", fi.Mode().Perm())
	}
	if out, code := passwd("un long mot de passe\nun autre mot de passe\n", "--accounts", file, "--role", "auditor", "verif"); code != 1 || !strings.Contains(out, "differ") {
		t.Fatalf("mismatch = %d %s", code, out)
	}
	if out, code := passwd("court\ncourt\n", "--accounts", file, "--role", "auditor", "verif"); code != 1 || !strings.Contains(out, "12") {
		t.Fatalf("short = %d %s", code, out)
	}
	if _, code := passwd("x\nx\n", "--accounts", file, "--role", "admin", "verif"); code != 2 {
		t.Fatalf("bad role = %d, want 2", code)
	}
	if _, code := passwd("", "--accounts", file, "--role", "auditor", "verif"); code != 1 {
		t.Fatalf("no password on stdin = %d, want 1", code)
	}
	if _, code := passwd("x\n", "--accounts", file, "--role", "auditor", "--password", "x", "verif"); code != 2 {
		t.Fatal("a --password flag was accepted")
	}
}

// TestServeConsole runs balise serve with [console] and a local account:
// sign in, approve a request through the API, see the grant reach the
// policy within seconds, then extend it from the command line.
func TestServeConsole(t *testing.T) {
	dir := t.TempDir()
	accounts := filepath.Join(dir, "accounts")
	var out, errb bytes.Buffer
	if code := runConsole([]string{"passwd", "--accounts", accounts, "--role", "officer", "rsi"},
		strings.NewReader("un long mot de passe\nun long mot de passe\n"), &out, &errb); code != 0 {
		t.Fatal(errb.String())
	}
	path := filepath.Join(dir, "balise.toml")
	cfg := testPolicy + serveListeners + `
[exceptions]
grant_poll = "200ms"
notify_format = "slack"

[console]
listen = "127.0.0.1:0"
accounts_file = "accounts"
`
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	buf := &syncBuffer{}
	s := &server{path: path, log: slog.New(slog.NewJSONHandler(buf, nil)), getenv: func(string) string { return "" }}
	sigs := make(chan os.Signal, 1)
	result := make(chan int, 1)
	go func() { result <- s.run(t.Context(), sigs) }()
	var addr string
	deadline := time.Now().Add(10 * time.Second)
	for addr == "" && time.Now().Before(deadline) {
		for _, line := range strings.Split(buf.String(), "\n") {
			var l map[string]any
			if json.Unmarshal([]byte(line), &l) == nil && l["msg"] == "listening" && l["service"] == "console" {
				addr, _ = l["addr"].(string)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if addr == "" {
		t.Fatalf("the console did not listen:\n%s", buf.String())
	}
	waitFor(t, buf, "started", 0)
	reg := s.rt.exceptions.(*exceptions.Web).Register()
	client := netip.MustParseAddr("10.20.1.5")
	rc, err := reg.Submit(context.Background(), exceptions.Submission{Client: client, Name: "Julie", Service: "facebook",
		Justification: "Publication des offres d'emploi", Duration: 4 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Jar: jar}
	req, _ := http.NewRequest("POST", "http://"+addr+"/login", strings.NewReader(url.Values{"username": {"rsi"}, "password": {"un long mot de passe"}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var sess struct {
		CSRF string `json:"csrf_token"`
	}
	json.NewDecoder(resp.Body).Decode(&sess)
	resp.Body.Close()
	if resp.StatusCode != 200 || sess.CSRF == "" {
		t.Fatalf("login = %d", resp.StatusCode)
	}
	req, _ = http.NewRequest("POST", "http://"+addr+"/api/v1/requests/"+rc.ID+"/approve", strings.NewReader(`{"duration":"4h","subject":"client"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-CSRF-Token", sess.CSRF)
	resp, err = hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("approve = %d %s", resp.StatusCode, b)
	}
	// Live in the policy within seconds.
	for deadline := time.Now().Add(5 * time.Second); ; {
		d := s.rt.policy.Load().Decide(policy.Query{Host: "facebook.com", Client: client, Time: time.Now()})
		if d.Verdict == policy.Allow && d.Reason == policy.ReasonGrant {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the console's approval did not reach the policy: %+v", d)
		}
		time.Sleep(50 * time.Millisecond)
	}
	stdout, stderr, code := runCmd("exceptions", "--config", path, "extend", rc.ID, "--for", "1d", "--by", "rsi-cli")
	if code != 0 || !strings.Contains(stdout, rc.ID+" extended") {
		t.Fatalf("extend = %d %s %s", code, stdout, stderr)
	}
	if _, _, code := runCmd("exceptions", "--config", path, "extend", rc.ID, "--by", "x"); code != 2 {
		t.Fatalf("extend without --for/--until = %d, want 2", code)
	}
	if stdout, _, code := runCmd("exceptions", "--config", path, "verify"); code != 0 {
		t.Fatalf("verify = %d %s", code, stdout)
	}
	sigs <- syscall.SIGTERM
	select {
	case <-result:
	case <-time.After(15 * time.Second):
		t.Fatal("serve did not stop")
	}
}
