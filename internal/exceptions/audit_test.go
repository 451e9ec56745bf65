package exceptions

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// buildLog records n requests and returns the log's lines.
func buildLog(t *testing.T, e *testEnv, n int) [][]byte {
	t.Helper()
	for i := 0; i < n; i++ {
		e.mustSubmit(t, sub(fmt.Sprintf("10.0.0.%d", i+1), "facebook", justification(i)))
	}
	data, err := os.ReadFile(e.log)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.SplitAfter(data, []byte("\n"))
	if len(lines[len(lines)-1]) == 0 {
		lines = lines[:len(lines)-1]
	}
	if len(lines) != n {
		t.Fatalf("log has %d lines, want %d", len(lines), n)
	}
	return lines
}

// rehash recomputes a line's own hash after an edit, as a forger would.
func rehash(t *testing.T, line []byte) []byte {
	t.Helper()
	body := append(append([]byte(nil), line[:len(line)-1-hashSuffixLen]...), '}')
	var e Event
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatal(err)
	}
	out, _ := encodeLine(e)
	return append(out, '\n')
}

func checkLineT(t *testing.T, line []byte, e *Event) {
	t.Helper()
	ev, err := checkLine(bytes.TrimSuffix(line, []byte("\n")))
	if err != nil {
		t.Fatal(err)
	}
	*e = ev
}

func writeLines(t *testing.T, path string, lines [][]byte) {
	t.Helper()
	if err := os.WriteFile(path, bytes.Join(lines, nil), 0o600); err != nil {
		t.Fatal(err)
	}
}

func wantLine(t *testing.T, err error, line int) {
	t.Helper()
	var ce *ChainError
	if !errors.As(err, &ce) {
		t.Fatalf("Verify = %v, want a ChainError at line %d", err, line)
	}
	if ce.Line != line {
		t.Fatalf("Verify = %v, want line %d", err, line)
	}
}

func TestVerifyDetectsTampering(t *testing.T) {
	tests := []struct {
		name string
		edit func(lines [][]byte) [][]byte
		line int
	}{
		{"flip a byte of the client", func(l [][]byte) [][]byte {
			l[2] = bytes.Replace(l[2], []byte(`"client":"10.0.0.3"`), []byte(`"client":"10.0.0.9"`), 1)
			return l
		}, 3},
		{"flip a byte of the hash", func(l [][]byte) [][]byte {
			i := len(l[1]) - 5
			l[1][i] ^= 1
			return l
		}, 2},
		{"flip a byte of prev", func(l [][]byte) [][]byte {
			i := bytes.Index(l[3], []byte(`"prev":"`)) + 10
			l[3][i] ^= 1
			return l
		}, 4},
		{"flip the last line", func(l [][]byte) [][]byte {
			l[4] = bytes.Replace(l[4], []byte(`"4h"`), []byte(`"7d"`), 1)
			return l
		}, 5},
		{"rewrite a line and its own hash", func(l [][]byte) [][]byte {
			l[2] = rehash(t, bytes.Replace(l[2], []byte(`"client":"10.0.0.3"`), []byte(`"client":"10.0.0.9"`), 1))
			return l
		}, 4},
		{"replace a line with one from another chain", func(l [][]byte) [][]byte {
			var e Event
			checkLineT(t, l[2], &e)
			e.Prev = strings.Repeat("1", 64)
			line, _ := encodeLine(e)
			l[2] = append(line, '\n')
			return l
		}, 3},
		{"delete a line", func(l [][]byte) [][]byte { return append(l[:1:1], l[2:]...) }, 2},
		{"delete the first line", func(l [][]byte) [][]byte { return l[1:] }, 1},
		{"swap two lines", func(l [][]byte) [][]byte { l[2], l[3] = l[3], l[2]; return l }, 3},
		{"duplicate a line", func(l [][]byte) [][]byte { return append(l[:3:3], l[2:]...) }, 4},
		{"torn last line", func(l [][]byte) [][]byte { l[4] = l[4][:20]; return l }, 5},
		{"blank line", func(l [][]byte) [][]byte { return append(l[:2:2], append([][]byte{[]byte("\n")}, l[2:]...)...) }, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, nil)
			lines := buildLog(t, e, 5)
			if err := Verify(e.log); err != nil {
				t.Fatalf("Verify(untouched) = %v, want nil", err)
			}
			if err := e.reg.Verify(context.Background()); err != nil {
				t.Fatalf("Register.Verify(untouched) = %v, want nil", err)
			}
			writeLines(t, e.log, tt.edit(lines))
			wantLine(t, Verify(e.log), tt.line)
			wantLine(t, e.reg.Verify(context.Background()), tt.line)
		})
	}
}

func TestRegisterVerifyAgainstStore(t *testing.T) {
	t.Run("last line removed", func(t *testing.T) {
		e := newEnv(t, nil)
		lines := buildLog(t, e, 3)
		writeLines(t, e.log, lines[:2])
		if err := Verify(e.log); err != nil {
			t.Fatalf("Verify(file only) = %v, want nil: a truncated chain is still a chain", err)
		}
		wantLine(t, e.reg.Verify(context.Background()), 3)
		if _, err := e.reg.Submit(context.Background(), sub("10.9.9.9", "facebook", justification(50))); !errors.Is(err, ErrAudit) {
			t.Fatalf("Submit on a truncated log = %v, want ErrAudit", err)
		}
		if got := testCounter(e.reg.metrics.auditErrors); got != 1 {
			t.Fatalf("audit_write_errors_total = %v, want 1", got)
		}
	})
	t.Run("stored request edited", func(t *testing.T) {
		e := newEnv(t, nil)
		buildLog(t, e, 3)
		st := e.reg.opt.Store
		err := st.Update(context.Background(), func(tx Tx) error {
			q, err := tx.Request("EX-0002")
			if err != nil {
				return err
			}
			q.Justification = "something else entirely, rewritten later"
			return tx.PutRequest(q)
		})
		if err != nil {
			t.Fatal(err)
		}
		wantLine(t, e.reg.Verify(context.Background()), 2)
	})
}

func TestRecoveryAfterCrash(t *testing.T) {
	ctx := context.Background()
	// simulate writes a line past the head without committing, as a
	// process killed between the fsync and the commit leaves it.
	uncommitted := func(t *testing.T, e *testEnv) {
		t.Helper()
		var h Head
		e.reg.opt.Store.View(ctx, func(tx ReadTx) error { h, _ = tx.Head(); return nil })
		a, err := lockAudit(e.log, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.append(h, Event{Event: EventReceived, ID: "EX-0004", Time: "2026-11-20T14:00:00.000Z"}); err != nil {
			t.Fatal(err)
		}
		a.unlock()
	}
	tests := []struct {
		name    string
		damage  func(t *testing.T, e *testEnv)
		wantErr bool
	}{
		{"uncommitted line", uncommitted, false},
		{"torn line", func(t *testing.T, e *testEnv) {
			f, _ := os.OpenFile(e.log, os.O_WRONLY|os.O_APPEND, 0)
			f.WriteString(`{"seq":4,"prev":"ab`)
			f.Close()
		}, false},
		{"two lines past the head", func(t *testing.T, e *testEnv) {
			uncommitted(t, e)
			data, _ := os.ReadFile(e.log)
			lines := bytes.SplitAfter(data, []byte("\n"))
			f, _ := os.OpenFile(e.log, os.O_WRONLY|os.O_APPEND, 0)
			f.Write(lines[len(lines)-2])
			f.Close()
		}, true},
		{"foreign line past the head", func(t *testing.T, e *testEnv) {
			f, _ := os.OpenFile(e.log, os.O_WRONLY|os.O_APPEND, 0)
			f.WriteString(`{"seq":99}` + "\n")
			f.Close()
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, nil)
			buildLog(t, e, 3)
			before, _ := os.ReadFile(e.log)
			tt.damage(t, e)
			st, err := OpenSQLite(ctx, e.db)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			r, err := Open(ctx, Options{Store: st, AuditLog: e.log, Clock: e.clock.Now})
			if err != nil {
				t.Fatal(err)
			}
			err = r.Repair(ctx)
			if tt.wantErr {
				if !errors.Is(err, ErrAudit) {
					t.Fatalf("Repair = %v, want ErrAudit", err)
				}
				if _, err := r.Submit(ctx, sub("10.1.1.1", "facebook", justification(77))); !errors.Is(err, ErrAudit) {
					t.Fatalf("Submit on a damaged log = %v, want ErrAudit", err)
				}
				if _, err := r.List(ctx, ""); err != nil {
					t.Fatalf("List on a damaged log = %v, want reads to work", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Repair = %v, want repaired", err)
			}
			after, _ := os.ReadFile(e.log)
			if !bytes.Equal(after, before) {
				t.Fatalf("log after repair differs from the committed log:\n%s\nwant\n%s", after, before)
			}
			if o, err := os.ReadFile(e.log + ".orphaned"); err != nil || !strings.Contains(string(o), "never committed") {
				t.Fatalf(".orphaned = %q, %v; want the removed bytes", o, err)
			}
			rc, err := r.Submit(ctx, sub("10.1.1.1", "facebook", justification(77)))
			if err != nil || rc.ID != "EX-0004" {
				t.Fatalf("Submit after repair = %v, %v; want EX-0004", rc.ID, err)
			}
			if err := r.Verify(ctx); err != nil {
				t.Fatalf("Verify after repair = %v", err)
			}
		})
	}
}

func TestRecoveryWhileAnotherWriterIsMidAppend(t *testing.T) {
	// A second register opening while the first holds the transaction must
	// wait, not cut the first one's uncommitted line.
	ctx := context.Background()
	e := newEnv(t, nil)
	buildLog(t, e, 2)
	started, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- e.reg.update(ctx, func(tx Tx, _ time.Time) ([]Event, error) {
			close(started)
			<-release
			return []Event{{Event: EventPurged, Actor: "t"}}, nil
		})
	}()
	<-started
	opened := make(chan error, 1)
	go func() {
		st, err := OpenSQLite(ctx, e.db)
		if err == nil {
			var r *Register
			r, err = Open(ctx, Options{Store: st, AuditLog: e.log})
			if err == nil {
				err = r.Repair(ctx)
			}
			if err == nil {
				err = r.Verify(ctx)
			}
			st.Close()
		}
		opened <- err
	}()
	time.Sleep(100 * time.Millisecond)
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("first writer: %v", err)
	}
	if err := <-opened; err != nil {
		t.Fatalf("second register: %v", err)
	}
	if err := e.reg.Verify(ctx); err != nil {
		t.Fatalf("Verify = %v", err)
	}
}

func TestLineFormat(t *testing.T) {
	e := newEnv(t, nil)
	lines := buildLog(t, e, 2)
	l1 := string(lines[0])
	for _, want := range []string{`{"seq":1,"prev":"` + zeroHash + `","time":"2026-11-20T14:00:00.000Z","event":"request_received","id":"EX-0001"`, `,"hash":"`} {
		if !strings.Contains(l1, want) {
			t.Errorf("line 1 = %s, want it to contain %s", l1, want)
		}
	}
	if strings.Contains(l1, "Julie") || strings.Contains(l1, "recrutement") {
		t.Errorf("line 1 = %s: personal fields must stay out of the log", l1)
	}
	if !strings.Contains(string(lines[1]), `"prev":"`+lineHash(bytes.TrimSuffix(lines[0], []byte("\n")))+`"`) {
		t.Errorf("line 2's prev is not the SHA-256 of line 1")
	}
}
