package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// replayLog is a decision log as serve writes it (JSON lines), with a
// line of another kind and a summary line (repeats).
const replayLog = `{"time":"2026-05-12T16:30:01Z","level":"INFO","msg":"decision","at":"2026-05-12T16:30:01Z","front":"dns","client":"10.20.1.5","user":"","host":"www.facebook.com","service":"facebook","category":"networking","verdict":"allow","reason":"rule","rule":"diner","grant":"","until":"2026-05-12T17:00:00Z","would":"","would_rule":"","repeats":0}
{"time":"2026-05-12T16:31:01Z","level":"INFO","msg":"decision","at":"2026-05-12T16:31:01Z","front":"dns","client":"10.20.1.5","user":"","host":"www.facebook.com","service":"facebook","category":"networking","verdict":"allow","reason":"rule","rule":"diner","grant":"","until":"2026-05-12T17:00:00Z","would":"","would_rule":"","repeats":4}
{"time":"2026-05-12T16:40:00Z","level":"INFO","msg":"configuration reloaded"}
{"time":"2026-05-12T16:45:00Z","level":"INFO","msg":"decision","at":"2026-05-12T16:45:00Z","front":"connect","client":"10.20.30.7","user":"","host":"www.tiktok.com","service":"tiktok","category":"media-sharing","verdict":"allow","reason":"rule","rule":"communications","grant":"","until":"","would":"","would_rule":"","repeats":0}
{"time":"2026-05-12T18:00:00Z","level":"INFO","msg":"decision","at":"2026-05-12T18:00:00Z","front":"dns","client":"10.20.1.6","user":"","host":"fr.wikipedia.org","service":"wikipedia","category":"wikis","verdict":"block","reason":"default","rule":"","grant":"","until":"","would":"","would_rule":"","repeats":0}
not json
`

func TestReplay(t *testing.T) {
	logPath := writeConfig(t, replayLog)
	// Same policy: nothing changes.
	same := writeConfig(t, testPolicy)
	stdout, stderr, code := runCmd("replay", "--config", same, "--json", logPath)
	if code != 0 {
		t.Fatalf("replay = %d: %s", code, stderr)
	}
	var c replayCounts
	if err := json.Unmarshal([]byte(stdout), &c); err != nil {
		t.Fatal(err)
	}
	if c.Lines != 4 || c.Decisions != 7 || c.Skipped != 2 || c.Changed != 0 {
		t.Errorf("replay(same) = %+v, want 4 lines, 7 decisions, 2 skipped, 0 changed", c)
	}
	// The lunch break moved to 13:00-14:00 (12:30 EDT is now blocked),
	// and wikis allowed for everyone.
	moved := strings.Replace(testPolicy, `windows = ["mon-fri 12:00-13:00"]`, `windows = ["mon-fri 13:00-14:00"]`, 1) + `
[[rule]]
name = "wikis"
groups = ["*"]
categories = ["wikis"]
action = "allow"
`
	stdout, stderr, code = runCmd("replay", "--config", writeConfig(t, moved), logPath)
	if code != 0 {
		t.Fatalf("replay = %d: %s", code, stderr)
	}
	for _, want := range []string{
		"decisions replayed   7 (4 lignes / lines, 2 ignorées / skipped)\n",
		"would change             6\n",
		"  allow -> block                       5\n",
		"  block -> allow                       1\n",
		"  facebook                             5\n",
		"  wikipedia                            1\n",
		"  personnel                            6\n",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("replay output lacks %q:\n%s", want, stdout)
		}
	}
	// Counts only: no address, no host.
	for _, leak := range []string{"10.20.", "facebook.com", "wikipedia.org"} {
		if strings.Contains(stdout, leak) {
			t.Errorf("replay output shows %q:\n%s", leak, stdout)
		}
	}
}
