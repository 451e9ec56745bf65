package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"aead.dev/minisign"
	"golang.org/x/crypto/blake2b"
	"golang.org/x/crypto/scrypt"

	"github.com/balise-net/balise/config"
)

// writeUpdate writes a catalog update: the embedded catalog with another
// version and serial, one service removed and one added.
func writeUpdate(t *testing.T, dir string) string {
	t.Helper()
	text := string(config.EmbeddedCatalogText())
	i := strings.Index(text, "\nversion = ")
	j := strings.Index(text[i+1:], "\n")
	text = text[:i] + "\nversion = \"2026-12-04.1\"\nserial = 2026120401" + text[i+1+j:]
	// Drop the first service (apple-podcasts), add one.
	a := strings.Index(text, "[[service]]")
	b := strings.Index(text[a+1:], "[[service]]")
	text = text[:a] + text[a+1+b:] + "\n[[service]]\nid = \"blogue-essai\"\nname = \"Blogue\"\ncategory = \"forums\"\ndomains = [\"blogue-essai.example\", \"autre-blogue.example\"]\n"
	p := filepath.Join(dir, "catalog.toml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCatalogCommands(t *testing.T) {
	dir := t.TempDir()
	cat := writeUpdate(t, dir)
	pub, priv, err := minisign.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	keyText, _ := priv.MarshalText()
	keyPath := filepath.Join(dir, "balise.key")
	pubPath := filepath.Join(dir, "balise.pub")
	pubText, _ := pub.MarshalText()
	os.WriteFile(keyPath, keyText, 0o600)
	os.WriteFile(pubPath, pubText, 0o644)

	var out, errb bytes.Buffer
	if code := runCatalog([]string{"sign", "--key", keyPath, cat}, strings.NewReader(""), &out, &errb); code != 0 {
		t.Fatalf("sign = %d: %s", code, errb.String())
	}
	if _, err := os.Stat(cat + ".minisig"); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{pubPath, pub.String()} {
		out.Reset()
		errb.Reset()
		if code := runCatalog([]string{"verify", "--key", key, cat}, nil, &out, &errb); code != 0 || !strings.Contains(out.String(), "ok, catalog 2026-12-04.1 (serial 2026120401)") {
			t.Errorf("verify --key %s = %d: %s%s", key, code, out.String(), errb.String())
		}
	}
	// Tampered: one byte changed.
	data, _ := os.ReadFile(cat)
	os.WriteFile(cat, bytes.Replace(data, []byte("blogue-essai.example"), []byte("blogue-essai.exampla"), 1), 0o644)
	errb.Reset()
	if code := runCatalog([]string{"verify", "--key", pubPath, cat}, nil, &out, &errb); code != 1 || !strings.Contains(errb.String(), "refused: signature") {
		t.Errorf("verify(tampered) = %d: %s", code, errb.String())
	}
	os.WriteFile(cat, data, 0o644)
	// Wrong key.
	other, _, _ := minisign.GenerateKey(rand.Reader)
	errb.Reset()
	if code := runCatalog([]string{"verify", "--key", other.String(), cat}, nil, &out, &errb); code != 1 || !strings.Contains(errb.String(), "refused: key") {
		t.Errorf("verify(other key) = %d: %s", code, errb.String())
	}
	// Unsigned.
	os.Remove(cat + ".minisig")
	errb.Reset()
	if code := runCatalog([]string{"verify", "--key", pubPath, cat}, nil, &out, &errb); code != 1 || !strings.Contains(errb.String(), "refused: unsigned") {
		t.Errorf("verify(unsigned) = %d: %s", code, errb.String())
	}

	out.Reset()
	if code := runCatalog([]string{"diff", cat}, nil, &out, &errb); code != 0 {
		t.Fatalf("diff = %d: %s", code, errb.String())
	}
	for _, want := range []string{
		"-> 2026-12-04.1 (serial 2026120401)\n",
		"+ service blogue-essai (forums, 2 domains)\n    + blogue-essai.example\n    + autre-blogue.example\n",
		"- service apple-podcasts (podcasts, ",
		"    - podcasts.apple.com\n",
		"1 services added, 1 removed, 0 changed; 2 domains added",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("diff lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if code := runCatalog([]string{"diff", cat, cat}, nil, &out, &errb); code != 0 || !strings.Contains(out.String(), "warning: the serial does not grow") ||
		!strings.Contains(out.String(), "0 services added, 0 removed, 0 changed; 0 domains added, 0 removed") {
		t.Errorf("diff(same) = %d:\n%s", code, out.String())
	}
	out.Reset()
	if code := runCatalog([]string{"show", cat}, nil, &out, &errb); code != 0 || !strings.Contains(out.String(), "serial    2026120401\n") || !strings.Contains(out.String(), "source    fichier / file\n") {
		t.Errorf("show = %d:\n%s%s", code, out.String(), errb.String())
	}
	out.Reset()
	if code := runCatalog([]string{"show"}, nil, &out, &errb); code != 0 || !strings.Contains(out.String(), "source    intégré / embedded\n") || !strings.Contains(out.String(), "\ndoh ") {
		t.Errorf("show = %d:\n%s%s", code, out.String(), errb.String())
	}
	// sign refuses a catalog without a serial.
	noSerial := filepath.Join(dir, "noserial.toml")
	os.WriteFile(noSerial, config.EmbeddedCatalogText(), 0o644)
	errb.Reset()
	if code := runCatalog([]string{"sign", "--key", keyPath, noSerial}, strings.NewReader(""), &out, &errb); code != 1 || !strings.Contains(errb.String(), "serial: missing") {
		t.Errorf("sign(no serial) = %d: %s", code, errb.String())
	}
}

// encryptedKey returns priv in minisign's password-protected format, with
// scrypt parameters cheap enough for a test.
func encryptedKey(t *testing.T, priv minisign.PrivateKey, password string) []byte {
	t.Helper()
	plainText, _ := priv.MarshalText()
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(plainText[strings.IndexByte(string(plainText), '\n')+1:])))
	if err != nil || len(raw) != 158 {
		t.Fatalf("unexpected key layout: %d bytes, %v", len(raw), err)
	}
	const ops, mem = 1 << 15, 1 << 20 // scrypt N=1024, r=8, p=1
	plain := raw[54:126]              // key id and Ed25519 key
	salt := make([]byte, 32)
	rand.Read(salt)
	stream, err := scrypt.Key([]byte(password), salt, 1024, 8, 1, 104)
	if err != nil {
		t.Fatal(err)
	}
	msg := append([]byte{0x45, 0x64}, plain...) // "Ed"
	sum := blake2b.Sum256(msg)
	ct := append(append([]byte{}, plain...), sum[:]...)
	for i := range ct {
		ct[i] ^= stream[i]
	}
	b := make([]byte, 158)
	copy(b, []byte{0x45, 0x64, 0x53, 0x63, 0x42, 0x32}) // Ed, Sc(rypt), B2
	copy(b[6:], salt)
	binary.LittleEndian.PutUint64(b[38:], ops)
	binary.LittleEndian.PutUint64(b[46:], mem)
	copy(b[54:], ct)
	return []byte("untrusted comment: minisign encrypted secret key\n" + base64.StdEncoding.EncodeToString(b) + "\n")
}

// TestCatalogSignEncryptedKey checks that sign reads the key's password
// from standard input.
func TestCatalogSignEncryptedKey(t *testing.T) {
	dir := t.TempDir()
	cat := writeUpdate(t, dir)
	pub, priv, err := minisign.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	keyPath := filepath.Join(dir, "balise.key")
	os.WriteFile(keyPath, encryptedKey(t, priv, "mot de passe"), 0o600)
	var out, errb bytes.Buffer
	if code := runCatalog([]string{"sign", "--key", keyPath, cat}, strings.NewReader("pas le bon\n"), &out, &errb); code != 1 || !strings.Contains(errb.String(), "wrong password") {
		t.Errorf("sign(wrong password) = %d: %s", code, errb.String())
	}
	if _, err := os.Stat(cat + ".minisig"); err == nil {
		t.Error("a signature was written with a wrong password")
	}
	errb.Reset()
	if code := runCatalog([]string{"sign", "--key", keyPath, cat}, strings.NewReader("mot de passe\n"), &out, &errb); code != 0 {
		t.Fatalf("sign = %d: %s", code, errb.String())
	}
	if code := runCatalog([]string{"verify", "--key", pub.String(), cat}, nil, &out, &errb); code != 0 {
		t.Errorf("verify = %d: %s", code, errb.String())
	}
}
