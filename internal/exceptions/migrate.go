package exceptions

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
)

// MigrateResult is what MigrateTo copied.
type MigrateResult struct {
	// Requests is the number of requests copied.
	Requests int
	// Head is the audit chain's head, the same in the source and the copy.
	Head Head
}

// MigrateTo copies this register (an embedded store and its audit log
// file) into dst, a PostgreSQL store that must be empty: every request,
// the next request number, and the audit log line for line (so every hash
// stays the same), in one transaction. The source is verified first and
// the copy after (Verify on dst, and the same chain head). The source is
// left untouched; stop `balise serve` first, so that nothing changes it
// during the copy (a change is detected and the copy refused).
func (r *Register) MigrateTo(ctx context.Context, dst *PGStore) (MigrateResult, error) {
	var res MigrateResult
	if keepsChain(r.opt.Store) {
		return res, errors.New("the source register is already in PostgreSQL")
	}
	if err := r.Verify(ctx); err != nil {
		return res, fmt.Errorf("the source register does not verify: %w", err)
	}
	var (
		reqs []Request
		head Head
		next string
	)
	err := r.opt.Store.View(ctx, func(tx ReadTx) error {
		var err error
		if head, err = tx.Head(); err != nil {
			return err
		}
		if reqs, err = tx.Requests(Filter{}); err != nil {
			return err
		}
		if m, ok := tx.(interface{ meta(string) (string, error) }); ok {
			next, err = m.meta("next_request")
		}
		return err
	})
	if err != nil {
		return res, err
	}
	lines, err := readLines(r.opt.AuditLog)
	if err != nil {
		return res, err
	}
	if int64(len(lines)) != head.Seq || (len(lines) > 0 && lineHash(lines[len(lines)-1]) != head.Hash) {
		return res, errors.New("the register changed during the copy: stop balise serve and try again")
	}
	err = dst.Update(ctx, func(t Tx) error {
		tx := t.(*pgTx)
		var n int64
		if err := tx.q.QueryRow(tx.ctx, `SELECT (SELECT count(*) FROM requests) + (SELECT count(*) FROM audit_events) +
			(SELECT seq FROM audit_head) + (SELECT count(*) FROM meta)`).Scan(&n); err != nil {
			return err
		}
		if n != 0 {
			return errors.New("the target database already holds a register: migrate only into an empty one")
		}
		for _, q := range reqs {
			if err := tx.PutRequest(q); err != nil {
				return fmt.Errorf("request %s: %w", q.ID, err)
			}
		}
		for i, line := range lines {
			e, err := checkLine(line)
			if err != nil {
				return &ChainError{r.opt.AuditLog, i + 1, err.Error()}
			}
			if err := tx.AppendEvent(e.Seq, e.Prev, lineHash(line), line); err != nil {
				return fmt.Errorf("event %d: %w", e.Seq, err)
			}
		}
		if err := tx.SetHead(Head{Seq: head.Seq, Hash: head.Hash}); err != nil {
			return err
		}
		if next == "" {
			next = strconv.Itoa(len(reqs) + 1)
		}
		return tx.setMeta("next_request", next)
	})
	if err != nil {
		return res, err
	}
	copyReg, err := Open(ctx, Options{Store: dst})
	if err != nil {
		return res, err
	}
	if err := copyReg.Verify(ctx); err != nil {
		return res, fmt.Errorf("the copy does not verify: %w", err)
	}
	copied, err := copyReg.head(ctx)
	if err != nil {
		return res, err
	}
	if copied.Seq != head.Seq || copied.Hash != head.Hash {
		return res, fmt.Errorf("the copy's chain head (seq %d) differs from the source's (seq %d)", copied.Seq, head.Seq)
	}
	return MigrateResult{Requests: len(reqs), Head: copied}, nil
}

// readLines returns the lines of the audit log (without newlines).
func readLines(path string) ([][]byte, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out [][]byte
	br := bufio.NewReaderSize(f, 64<<10)
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 && line[len(line)-1] == '\n' {
			out = append(out, line[:len(line)-1])
		} else if len(line) > 0 {
			return nil, fmt.Errorf("%s: incomplete last line", path)
		}
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
	}
}
