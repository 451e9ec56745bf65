package exceptions

import (
	"bufio"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

// Verify checks the audit log's chain (see the package function Verify),
// then that it ends exactly at the head the store recorded (no line
// removed from or added at the end), and that every stored request still
// has the digest its request_received line recorded (the store was not
// edited). The error names the first bad line.
//
// With a store that keeps the chain (PostgreSQL) the same checks run on
// the stored events; ChainError.Path is then "audit_events" and Line the
// event's seq.
func (r *Register) Verify(ctx context.Context) error {
	if keepsChain(r.opt.Store) {
		return r.verifyStored(ctx)
	}
	path := r.opt.AuditLog
	fileHead, err := verifyFile(path)
	if err != nil {
		return err
	}
	var head Head
	var reqs []Request
	err = r.opt.Store.View(ctx, func(tx ReadTx) error {
		var err error
		if head, err = tx.Head(); err != nil {
			return err
		}
		reqs, err = tx.Requests(Filter{})
		return err
	})
	if err != nil {
		return err
	}
	switch {
	case fileHead.Seq < head.Seq:
		return &ChainError{path, int(fileHead.Seq) + 1, fmt.Sprintf("missing: the log ends at seq %d but the register recorded seq %d (lines were removed at the end)", fileHead.Seq, head.Seq)}
	case fileHead.Seq > head.Seq:
		return &ChainError{path, int(head.Seq) + 1, fmt.Sprintf("seq %d was never committed to the register (left by a crash: the next write removes it; or added by hand)", head.Seq+1)}
	case fileHead.Hash != head.Hash:
		return &ChainError{path, int(head.Seq), "differs from the last line the register recorded (the log was rewritten)"}
	}
	digests := map[string]digestAt{}
	err = readEvents(path, func(n int, e Event) error {
		if e.Event == EventReceived {
			digests[e.ID] = digestAt{e.Digest, n}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return checkDigests(path, reqs, digests)
}

// readEvents calls fn for every line of the log (1-based line numbers).
// The chain is not checked here.
func readEvents(path string, fn func(line int, e Event) error) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), maxLine+1)
	for n := 1; sc.Scan(); n++ {
		var e Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return &ChainError{path, n, "not a valid event"}
		}
		if err := fn(n, e); err != nil {
			return err
		}
	}
	return sc.Err()
}

// CSVHeader is the header row of a CSV export.
var CSVHeader = []string{"seq", "time", "event", "request_id", "client", "user", "services", "host",
	"duration", "subject", "not_before", "not_after", "actor", "reason", "note", "count", "digest", "hash"}

// Export writes the audit log's events at or after since (zero: all) to w
// as "csv" (CSVHeader, then one row per event) or "json" (an array of the
// events), after checking the chain, then records an exported event
// naming by. It returns the number of events written.
func (r *Register) Export(ctx context.Context, w io.Writer, format string, since time.Time, by string) (int, error) {
	if format != "csv" && format != "json" {
		return 0, fmt.Errorf("unknown format %q (csv or json)", format)
	}
	if err := checkOfficer(by); err != nil {
		return 0, err
	}
	var err error
	if keepsChain(r.opt.Store) {
		err = r.verifyStored(ctx)
	} else {
		err = Verify(r.opt.AuditLog)
	}
	if err != nil {
		return 0, fmt.Errorf("refusing to export a broken log: %w", err)
	}
	var events []Event
	err = r.eachEvent(ctx, func(_ int, e Event) error {
		if !since.IsZero() {
			t, err := time.Parse(time.RFC3339Nano, e.Time)
			if err == nil && t.Before(since) {
				return nil
			}
		}
		events = append(events, e)
		return nil
	})
	if err != nil {
		return 0, err
	}
	if format == "json" {
		if events == nil {
			events = []Event{}
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		err = enc.Encode(events)
	} else {
		cw := csv.NewWriter(w)
		cw.Write(CSVHeader)
		for _, e := range events {
			count := ""
			if e.Count != nil {
				count = strconv.Itoa(*e.Count)
			}
			cw.Write([]string{strconv.FormatInt(e.Seq, 10), e.Time, e.Event, e.ID, e.Client, cell(e.User),
				strings.Join(e.Services, " "), e.Host, e.Duration, e.Subject, e.NotBefore, e.NotAfter,
				cell(e.Actor), cell(e.Reason), cell(e.Note), count, e.Digest, e.Hash})
		}
		cw.Flush()
		err = cw.Error()
	}
	if err != nil {
		return 0, err
	}
	ev := Event{Event: EventExported, Actor: by, Format: format, Count: intp(len(events)), Since: formatTime(since)}
	return len(events), r.update(ctx, func(Tx, time.Time) ([]Event, error) { return []Event{ev}, nil })
}

// cell defuses spreadsheet formulas in free text (a cell starting with
// =, +, -, @, tab or CR is prefixed with an apostrophe).
func cell(s string) string {
	if s != "" && strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		return "'" + s
	}
	return s
}
