package exceptions

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func FuzzVerify(f *testing.F) {
	line1, _ := encodeLine(Event{Seq: 1, Prev: zeroHash, Time: "2026-11-20T14:00:00.000Z", Event: EventReceived, ID: "EX-0001", Client: "10.0.0.1"})
	line2, _ := encodeLine(Event{Seq: 2, Prev: lineHash(line1), Time: "2026-11-20T14:01:00.000Z", Event: EventApproved, ID: "EX-0001", Actor: "RSI"})
	good := append(append(append(line1, '\n'), line2...), '\n')
	f.Add(good)
	f.Add(line1)
	f.Add([]byte("{}\n"))
	f.Add([]byte(`{"seq":1,"hash":"` + zeroHash + `"}` + "\n"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "log.jsonl")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		h, err := verifyFile(path)
		if err != nil {
			return
		}
		// An accepted log is whole lines, each one valid on its own.
		if len(data) > 0 && data[len(data)-1] != '\n' {
			t.Fatalf("Verify accepted a log without a final newline: %q", data)
		}
		lines := bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n"))
		if len(data) > 0 && int64(len(lines)) != h.Seq {
			t.Fatalf("Verify accepted %d lines with head seq %d", len(lines), h.Seq)
		}
		for _, l := range lines {
			if len(data) > 0 {
				if _, err := checkLine(l); err != nil {
					t.Fatalf("Verify accepted an invalid line %q: %v", l, err)
				}
			}
		}
	})
}

func FuzzWebPost(f *testing.F) {
	f.Add("service=facebook&host=www.facebook.com&token=x&lang=fr&name=J&contact=&justification=aaaaaaaaaaaaaaaaaaaaaaaaa&duration=4h")
	f.Add("name=%zz")
	f.Add("justification=" + strings.Repeat("%00", 30))
	f.Add("duration=-1h&duration=4h")
	w := newWebEnv(f, nil)
	f.Fuzz(func(t *testing.T, body string) {
		req := httptest.NewRequest("POST", RequestPath, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.RemoteAddr = "10.0.0.1:1234"
		rec := httptest.NewRecorder()
		w.web.ServeHTTP(rec, req)
		// Without a valid token nothing is ever accepted.
		if rec.Code == http.StatusOK {
			t.Fatalf("POST %q = 200 without a token", body)
		}
		if strings.Contains(rec.Body.String(), "<script") {
			t.Fatalf("answer echoes markup: %s", rec.Body.String())
		}
	})
}
