package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// reportPolicy is a break policy with a rule in report mode before it: the
// staff (loopback here) may use networking during a break window around
// now; a trial rule would block networking for them.
func reportPolicy(upstream, window, breakCategories string) string {
	return fmt.Sprintf(`timezone = "UTC"
default_action = "block"

[[group]]
name = "personnel"
networks = ["127.0.0.0/8"]

[[schedule]]
name = "pause"
windows = [%q]

[[rule]]
name = "essai-blocage"
groups = ["personnel"]
categories = ["networking"]
action = "block"
mode = "report"

[[rule]]
name = "pause"
groups = ["personnel"]
categories = [%s]
during = ["pause"]
action = "allow"

[metrics]
listen = "127.0.0.1:0"

[proxy]
listen = []

[dns]
listen = "127.0.0.1:0"
upstreams = [%q]
rate_limit = 0
`, window, breakCategories, upstream)
}

// window returns a daily window from now+from to now+to (UTC, minutes).
func window(now time.Time, from, to time.Duration) string {
	return fmt.Sprintf("sun-sat %s-%s", now.Add(from).UTC().Format("15:04"), now.Add(to).UTC().Format("15:04"))
}

// TestReportAndReplayEndToEnd runs Balise with a rule in report mode under
// real DNS queries: the decision lines say would=block with the rule's
// name while the break rule after it allows. The lines written are then
// replayed against a new policy (the break moved, forums added to it) and
// `balise replay` prints how many verdicts change, counts only.
func TestReportAndReplayEndToEnd(t *testing.T) {
	up := newDNSUpstream(t)
	now := time.Now()
	cur := reportPolicy(up.addr, window(now, -time.Hour, time.Hour), `"networking"`)
	in := startBalise(t, cur)
	for range 3 {
		for _, name := range []string{"www.facebook.com", "www.reddit.com"} {
			m := new(dns.Msg)
			m.SetQuestion(dns.Fqdn(name), dns.TypeA)
			r, err := dns.Exchange(m, in.Addr("dns-udp"))
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			want := dns.RcodeSuccess
			if name == "www.reddit.com" {
				want = dns.RcodeNameError
			}
			if r.Rcode != want {
				t.Errorf("%s: rcode %s, want %s", name, dns.RcodeToString[r.Rcode], dns.RcodeToString[want])
			}
		}
	}
	fb := in.WaitLog(0, 5*time.Second, func(l logLine) bool { return l.Msg() == "decision" && l.Str("service") == "facebook" })
	if fb.Str("verdict") != "allow" || fb.Str("rule") != "pause" || fb.Str("would") != "block" || fb.Str("would_rule") != "essai-blocage" {
		t.Errorf("facebook decision line = %v, want verdict allow, rule pause, would block, would_rule essai-blocage", fb)
	}
	rd := in.WaitLog(0, 5*time.Second, func(l logLine) bool { return l.Msg() == "decision" && l.Str("service") == "reddit" })
	if rd.Str("verdict") != "block" || rd.Str("would") != "" || rd.Str("would_rule") != "" {
		t.Errorf("reddit decision line = %v, want verdict block and no report", rd)
	}
	// explain shows the report too.
	out, stderr, code := runBalise(t, "explain", "--config", in.ConfigPath, "--offline", "--client", "127.0.0.1", "--host", "www.facebook.com")
	if code != 0 || !strings.Contains(out, "would     block — règle \"essai-blocage\" en mode rapport") {
		t.Errorf("explain = %d:\n%s%s", code, out, stderr)
	}
	if code := in.Stop(); code != 0 {
		t.Fatalf("stop: exit %d", code)
	}

	// The decision log, as an operator would extract it.
	var lines []string
	for _, raw := range strings.Split(in.Stderr(), "\n") {
		if strings.Contains(raw, `"msg":"decision"`) {
			lines = append(lines, raw)
		}
	}
	logPath := filepath.Join(t.TempDir(), "decisions.jsonl")
	if err := os.WriteFile(logPath, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}

	// The same policy changes nothing.
	out, stderr, code = runBalise(t, "replay", "--config", write("same.toml", cur), logPath)
	if code != 0 || !strings.Contains(out, "decisions replayed   6 (") || !strings.Contains(out, "would change             0\n") {
		t.Errorf("replay(same) = %d:\n%s%s", code, out, stderr)
	}
	// The break moved three hours later and forums added to it.
	next := reportPolicy(up.addr, window(now, 3*time.Hour, 4*time.Hour), `"networking", "forums"`)
	out, stderr, code = runBalise(t, "replay", "--config", write("moved.toml", next), logPath)
	if code != 0 {
		t.Fatalf("replay = %d: %s", code, stderr)
	}
	for _, want := range []string{
		"would change             3\n",
		"  allow -> block                       3\n",
		"  facebook                             3\n",
		"  personnel                            3\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("replay(moved) lacks %q:\n%s", want, out)
		}
	}
	// Forums are added to a break that no longer covers these decisions:
	// the reddit decisions stay blocked. With the window where it was,
	// they change.
	more := reportPolicy(up.addr, window(now, -time.Hour, time.Hour), `"networking", "forums"`)
	out, stderr, code = runBalise(t, "replay", "--config", write("forums.toml", more), logPath)
	if code != 0 || !strings.Contains(out, "  block -> allow                       3\n") || !strings.Contains(out, "  reddit                               3\n") {
		t.Errorf("replay(forums) = %d:\n%s%s", code, out, stderr)
	}
	for _, leak := range []string{"127.0.0.1", "facebook.com", "reddit.com"} {
		if strings.Contains(out, leak) {
			t.Errorf("replay output shows %q:\n%s", leak, out)
		}
	}
	t.Logf("replay output:\n%s", out)
}
