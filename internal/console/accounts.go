package console

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/argon2"
)

// The argon2id parameters of new hashes (OWASP's: 19 MiB, 2 passes, 1
// lane). Stored hashes carry their own, so these may grow later.
const (
	argonMemory  = 19 * 1024
	argonTime    = 2
	argonThreads = 1
	argonKeyLen  = 32
)

// account is one line of the accounts file: "user:role:$argon2id$...".
type account struct {
	user, role, hash string
}

// HashPassword returns the PHC-format argon2id hash of pw.
func HashPassword(pw string) string {
	salt := make([]byte, 16)
	rand.Read(salt)
	key := argon2.IDKey([]byte(pw), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, argonMemory, argonTime, argonThreads,
		base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(key))
}

// checkPassword reports whether pw matches the PHC argon2id hash.
func checkPassword(hash, pw string) bool {
	parts := strings.Split(hash, "$")
	if len(parts) != 6 || parts[1] != "argon2id" {
		return false
	}
	var v int
	var m, t uint32
	var p uint8
	if _, err := fmt.Sscanf(parts[2], "v=%d", &v); err != nil || v != argon2.Version {
		return false
	}
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &m, &t, &p); err != nil || m < 8 || m > 1<<21 || t < 1 || t > 64 || p < 1 {
		return false
	}
	salt, err1 := base64.RawStdEncoding.DecodeString(parts[4])
	key, err2 := base64.RawStdEncoding.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(key) < 16 || len(key) > 64 {
		return false
	}
	got := argon2.IDKey([]byte(pw), salt, t, m, p, uint32(len(key)))
	return subtle.ConstantTimeCompare(got, key) == 1
}

// dummyHash is checked against for unknown users, so that an unknown
// name costs the same time as a wrong password.
var dummyHash = "$argon2id$v=19$m=19456,t=2,p=1$YmFsaXNlLWR1bW15LXM$" + base64.RawStdEncoding.EncodeToString(make([]byte, 32))

// validAccountName is a local account's name: printable, no colon or
// space, at most 64 bytes.
func validAccountName(u string) bool {
	if u == "" || len(u) > 64 {
		return false
	}
	for _, c := range u {
		if c <= ' ' || c == ':' || c == 0x7f {
			return false
		}
	}
	return true
}

// readAccounts reads the accounts file (a missing file holds none).
func readAccounts(path string) ([]account, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []account
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 || !validAccountName(f[0]) || (f[1] != RoleOfficer && f[1] != RoleAuditor) {
			return nil, fmt.Errorf("%s:%d: want USER:officer|auditor:HASH (an argon2id hash)", path, n)
		}
		out = append(out, account{f[0], f[1], f[2]})
	}
	return out, sc.Err()
}

// WriteAccount sets user's role and password in the accounts file,
// creating it (mode 0600) when missing; the file is replaced atomically.
func WriteAccount(path, user, role, password string) error {
	if !validAccountName(user) {
		return fmt.Errorf("invalid user name %q (no spaces or colons, at most 64 bytes)", user)
	}
	if role != RoleOfficer && role != RoleAuditor {
		return fmt.Errorf("invalid role %q (officer or auditor)", role)
	}
	if len(password) < 12 {
		return errors.New("the password must have at least 12 characters")
	}
	accts, err := readAccounts(path)
	if err != nil {
		return err
	}
	var b bytes.Buffer
	b.WriteString("# Balise console accounts: USER:ROLE:ARGON2ID-HASH (balise console passwd)\n")
	done := false
	for _, a := range accts {
		if strings.EqualFold(a.user, user) {
			if done {
				continue
			}
			a = account{user, role, HashPassword(password)}
			done = true
		}
		fmt.Fprintf(&b, "%s:%s:%s\n", a.user, a.role, a.hash)
	}
	if !done {
		fmt.Fprintf(&b, "%s:%s:%s\n", user, role, HashPassword(password))
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".accounts-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	err = tmp.Chmod(0o600)
	if err == nil {
		_, err = tmp.Write(b.Bytes())
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
