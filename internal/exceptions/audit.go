package exceptions

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// The audit events.
const (
	EventReceived = "request_received"
	EventApproved = "approved"
	EventDenied   = "denied"
	EventRevoked  = "revoked"
	EventExpired  = "expired"
	EventPurged   = "purged"
	EventExported = "exported"
	// EventIdentityReveal is in reveal.go.
)

var zeroHash = hex.EncodeToString(make([]byte, sha256.Size))

// Event is one audit log line. Fields are written in this order; empty
// optional fields are left out. Seq, Prev and Hash are set by the log.
type Event struct {
	Seq   int64  `json:"seq"`
	Prev  string `json:"prev"`
	Time  string `json:"time"` // RFC 3339, UTC, milliseconds
	Event string `json:"event"`
	// ID is the request id (every event but purged and exported).
	ID       string   `json:"id,omitempty"`
	Client   string   `json:"client,omitempty"`
	User     string   `json:"user,omitempty"`
	Services []string `json:"services,omitempty"`
	Host     string   `json:"host,omitempty"`
	// Duration is the requested duration (request_received).
	Duration string `json:"duration,omitempty"`
	// Digest is the SHA-256 of the request's content (request_received).
	Digest string `json:"digest,omitempty"`
	// Subject, NotBefore and NotAfter describe a grant (approved, expired);
	// Subject alone is the pseudonym of an identity_reveal.
	Subject   string `json:"subject,omitempty"`
	NotBefore string `json:"not_before,omitempty"`
	NotAfter  string `json:"not_after,omitempty"`
	// Actor is who acted (the officer; "balise" for expiry).
	Actor  string `json:"actor,omitempty"`
	Reason string `json:"reason,omitempty"`
	Note   string `json:"note,omitempty"`
	// Before, Count and IDs describe a purge or an export.
	Before string `json:"before,omitempty"`
	Since  string `json:"since,omitempty"`
	Format string `json:"format,omitempty"`
	Count  *int   `json:"count,omitempty"` // set on purged, exported and identity_reveal

	IDs  []string `json:"ids,omitempty"`
	Hash string   `json:"hash,omitempty"`
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02T15:04:05.000Z07:00")
}

// encodeLine returns the line for e (without newline) with e.Seq and
// e.Prev already set: the JSON object whose last member "hash" is the
// SHA-256 of the bytes before it, closed with "}".
func encodeLine(e Event) ([]byte, error) {
	e.Hash = ""
	body, err := json.Marshal(e)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(body)
	line := append(body[:len(body)-1:len(body)-1], `,"hash":"`...)
	line = append(line, hex.EncodeToString(sum[:])...)
	line = append(line, `"}`...)
	return line, nil
}

func lineHash(line []byte) string {
	sum := sha256.Sum256(line)
	return hex.EncodeToString(sum[:])
}

const hashSuffixLen = len(`,"hash":"`) + 64 + len(`"}`)

// checkLine verifies one line on its own: valid JSON whose self hash
// matches. It returns the decoded event.
func checkLine(line []byte) (Event, error) {
	var e Event
	if len(line) < hashSuffixLen+2 || !bytes.HasPrefix(line[len(line)-hashSuffixLen:], []byte(`,"hash":"`)) ||
		!bytes.HasSuffix(line, []byte(`"}`)) {
		return e, errors.New("line does not end with its hash")
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		return e, fmt.Errorf("not a valid event: %v", err)
	}
	if dec.More() {
		return e, errors.New("trailing data after the event")
	}
	body := make([]byte, 0, len(line))
	body = append(body, line[:len(line)-hashSuffixLen]...)
	body = append(body, '}')
	sum := sha256.Sum256(body)
	if got := hex.EncodeToString(sum[:]); got != e.Hash || !bytes.Contains(line[len(line)-hashSuffixLen:], []byte(got)) {
		return e, errors.New("content does not match its hash (the line was edited)")
	}
	return e, nil
}

// ChainError is a broken audit log: Line is the first bad line (1-based).
type ChainError struct {
	Path string
	Line int
	Msg  string
}

func (e *ChainError) Error() string {
	return fmt.Sprintf("%s: line %d: %s", e.Path, e.Line, e.Msg)
}

// maxLine bounds one audit line (a purge of many ids is the longest).
const maxLine = 16 << 20

// Verify checks the hash chain of the audit log at path: every line is a
// valid event whose hash matches its content, whose seq follows the
// previous line's, and whose prev is the SHA-256 of the previous line. It
// returns nil when the chain holds (a missing file is an empty log) and a
// *ChainError naming the first bad line otherwise.
func Verify(path string) error {
	_, err := verifyFile(path)
	return err
}

// verifyFile is Verify, also returning the head of a good chain.
func verifyFile(path string) (Head, error) {
	head := Head{Hash: zeroHash}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return head, nil
	}
	if err != nil {
		return head, err
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 64<<10)
	var off int64
	for n := 1; ; n++ {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			var long []byte
			long = append(long, line...)
			for errors.Is(err, bufio.ErrBufferFull) && len(long) <= maxLine {
				line, err = br.ReadSlice('\n')
				long = append(long, line...)
			}
			line = long
		}
		if err == io.EOF {
			if len(line) == 0 {
				return head, nil
			}
			return head, &ChainError{path, n, "incomplete last line (no newline)"}
		}
		if err != nil {
			return head, &ChainError{path, n, err.Error()}
		}
		body := line[:len(line)-1]
		e, cerr := checkLine(body)
		if cerr != nil {
			return head, &ChainError{path, n, cerr.Error()}
		}
		if e.Seq != head.Seq+1 {
			return head, &ChainError{path, n, fmt.Sprintf("seq %d, want %d (a line was removed, inserted or moved)", e.Seq, head.Seq+1)}
		}
		if e.Prev != head.Hash {
			return head, &ChainError{path, n, "prev does not match the previous line (a line was removed, inserted or moved)"}
		}
		head = Head{Seq: e.Seq, Hash: lineHash(body), Start: off, End: off + int64(len(line))}
		off = head.End
	}
}

// auditFile is the audit log opened for one append: locked, and checked
// against the head recorded in the store.
type auditFile struct {
	path string
	f    *os.File
}

// lockAudit opens the log for appending (creating it 0600, and its
// directory, when missing) and takes an exclusive flock on it. The lock
// serializes appenders across processes even if two stores were ever
// pointed at one log; it is released by unlock (or by the kernel if the
// process dies).
func lockAudit(path string, wait time.Duration) (*auditFile, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, err
	}
	_, statErr := os.Stat(path)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if errors.Is(statErr, os.ErrNotExist) {
		syncDir(filepath.Dir(path))
	}
	deadline := time.Now().Add(wait)
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return &auditFile{path: path, f: f}, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (a *auditFile) unlock() {
	syscall.Flock(int(a.f.Fd()), syscall.LOCK_UN)
	a.f.Close()
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// reconcile brings the file in line with the store's head h, under the
// lock. It returns how many bytes were moved to the .orphaned file. See
// the package documentation for the rules.
func (a *auditFile) reconcile(h Head) (int64, error) {
	fi, err := a.f.Stat()
	if err != nil {
		return 0, err
	}
	size := fi.Size()
	if size < h.End {
		return 0, fmt.Errorf("%w: %s is shorter than the register recorded (%d bytes, want at least %d): the log was cut or edited; run verify", ErrAudit, a.path, size, h.End)
	}
	if h.Seq > 0 {
		last := make([]byte, h.End-h.Start)
		if _, err := a.f.ReadAt(last, h.Start); err != nil {
			return 0, err
		}
		if len(last) == 0 || last[len(last)-1] != '\n' || lineHash(last[:len(last)-1]) != h.Hash {
			return 0, fmt.Errorf("%w: %s no longer holds, where the register expects it, the last line it recorded (seq %d): the log was edited or replaced; run verify", ErrAudit, a.path, h.Seq)
		}
	}
	if size == h.End {
		return 0, nil
	}
	if size-h.End > maxLine {
		return 0, fmt.Errorf("%w: %s has %d bytes past the register's last line (seq %d); run verify", ErrAudit, a.path, size-h.End, h.Seq)
	}
	tail := make([]byte, size-h.End)
	if _, err := a.f.ReadAt(tail, h.End); err != nil {
		return 0, err
	}
	if nl := bytes.IndexByte(tail, '\n'); nl >= 0 {
		// One complete line is an uncommitted append only if it is the
		// very next line of the chain, and nothing follows it.
		e, cerr := checkLine(tail[:nl])
		if nl != len(tail)-1 || cerr != nil || e.Seq != h.Seq+1 || e.Prev != h.Hash {
			return 0, fmt.Errorf("%w: %s has lines past the register's last line (seq %d) that it never committed; run verify", ErrAudit, a.path, h.Seq)
		}
	}
	// A torn line, or the next line of a transaction that never
	// committed: keep the bytes aside for investigation, then cut.
	o, err := os.OpenFile(a.path+".orphaned", os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return 0, err
	}
	fmt.Fprintf(o, "# %s: %d bytes past seq %d, removed from the log (never committed)\n", formatTime(time.Now()), len(tail), h.Seq)
	o.Write(tail)
	if tail[len(tail)-1] != '\n' {
		o.Write([]byte{'\n'})
	}
	if err := o.Sync(); err != nil {
		o.Close()
		return 0, err
	}
	o.Close()
	if err := a.f.Truncate(h.End); err != nil {
		return 0, err
	}
	if err := a.f.Sync(); err != nil {
		return 0, err
	}
	return int64(len(tail)), nil
}

// append writes e as the line after head h, fsyncs it and returns the
// new head. The caller commits the head in the same store transaction.
func (a *auditFile) append(h Head, e Event) (Head, error) {
	e.Seq = h.Seq + 1
	e.Prev = h.Hash
	line, err := encodeLine(e)
	if err != nil {
		return h, err
	}
	buf := append(line, '\n')
	if _, err := a.f.WriteAt(buf, h.End); err != nil {
		return h, err
	}
	if err := a.f.Sync(); err != nil {
		return h, err
	}
	return Head{Seq: e.Seq, Hash: lineHash(line), Start: h.End, End: h.End + int64(len(buf))}, nil
}
