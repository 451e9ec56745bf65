package proxy

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// refused marks a first flight Balise must refuse.
const refused = "<refused>"

// flight is a crafted first flight and what Balise must read in it: a
// server name, "" (a hello without one) or refused.
type flight struct {
	name string
	data []byte
	want string
	// opensslArgs are extra s_server arguments for this shape.
	opensslArgs []string
}

// padTo returns hp grown with unknown extensions so that its body is n
// bytes long.
func padTo(t testing.TB, hp helloParts, n int) helloParts {
	t.Helper()
	need := n - (len(hp.msg()) - 4)
	for typ := uint16(0xfa01); need > 0; typ++ {
		d := min(need-4, 65535)
		if d < 0 {
			t.Fatalf("padTo: cannot add %d bytes", need)
		}
		hp = hp.plus(helloExt{typ, make([]byte, d)})
		need -= 4 + d
	}
	if got := len(hp.msg()) - 4; got != n {
		t.Fatalf("padTo(%d) = %d", n, got)
	}
	return hp
}

// largestHello returns the largest ClientHello the format allows (body
// of 131396 bytes: 32-byte session id, 65534 bytes of cipher suites, 255
// compression methods, 65535 bytes of extensions), TLS 1.2 only since
// TLS 1.3 wants a single compression method.
func largestHello(t testing.TB, hp helloParts) helloParts {
	t.Helper()
	r := reader{b: hp.fixed}
	r.bytes(2)
	random := r.bytes(32)
	r.bytes(r.u8())
	suites := r.bytes(r.u16())
	fixed := append([]byte{3, 3}, random...)
	fixed = append(fixed, 32)
	fixed = append(fixed, bytes.Repeat([]byte{7}, 32)...)
	fixed = append(fixed, 0xff, 0xfe)
	fixed = append(fixed, suites...)
	for i := len(suites); i < 65534; i += 2 {
		fixed = append(fixed, 0xfe, byte(i)) // unassigned suites
	}
	fixed = append(fixed, 255, 0)
	fixed = append(fixed, bytes.Repeat([]byte{0x40}, 254)...)
	out := helloParts{fixed: fixed}
	for _, e := range hp.exts {
		if e.typ != 43 && e.typ != 51 { // supported_versions, key_share: TLS 1.2
			out.exts = append(out.exts, e)
		}
	}
	out = padTo(t, out, maxHelloLen)
	if n := len(out.msg()) - 4 - len(fixed) - 2; n != 65535 {
		t.Fatalf("largestHello: extensions of %d bytes", n)
	}
	return out
}

// firstFlights returns the shapes the reader is held to: what real TLS
// stacks accept before and around the ClientHello, and what they refuse.
func firstFlights(t testing.TB) []flight {
	t.Helper()
	const name = "gate.test"
	rec := captureHello(t, &tls.Config{ServerName: name, NextProtos: []string{"h2", "http/1.1"}})
	hp := splitHello(t, rec)
	msg := hp.msg()
	noSNI := hp.with(extServerName, nil).msg()
	withSNI := func(d []byte) []byte { return records(hp.with(extServerName, d).msg(), 16384) }
	// The largest record: a hello of exactly 2^14 - 4 bytes of body in
	// one record, then one byte more.
	full := padTo(t, hp, maxRecordPayload-4).msg()
	over := padTo(t, hp, maxRecordPayload-3).msg()
	largest := largestHello(t, hp)
	alert := func(level, desc byte) []byte { return record(21, 3, []byte{level, desc}) }
	fs := []flight{
		{"single record", rec, name, nil},
		{"no server name", records(noSNI, 16384), "", nil},
		{"1-byte records", records(msg, 1), name, nil},
		{"7-byte records", records(msg, 7), name, nil},
		{"record version 3.0", record(22, 0, msg), name, nil},
		{"record version 3.4", record(22, 4, msg), name, nil},
		{"record version 3.255", record(22, 255, msg), name, nil},
		{"record version 2.0", append([]byte{22, 2, 0, byte(len(msg) >> 8), byte(len(msg))}, msg...), refused, nil},
		{"record version 0.1", append([]byte{22, 0, 1, byte(len(msg) >> 8), byte(len(msg))}, msg...), refused, nil},
		{"hello then change_cipher_spec, coalesced", concat(rec, record(20, 3, []byte{1})), name, nil},
		{"hello and more handshake bytes in one record", record(22, 1, concat(msg, []byte{11, 0, 0, 0})), name, nil},
		{"empty handshake record before", concat(record(22, 1, nil), rec), name, nil},
		{"empty handshake record between fragments", concat(record(22, 1, msg[:50]), record(22, 1, nil), record(22, 1, msg[50:])), name, nil},
		{"warning alert before", concat(warningAlert, rec), name, nil},
		{"4 warning alerts before", concat(bytes.Repeat(warningAlert, 4), rec), name, nil},
		{"5 warning alerts before", concat(bytes.Repeat(warningAlert, 5), rec), name, nil},
		{"warning alert between fragments", concat(record(22, 1, msg[:50]), warningAlert, record(22, 1, msg[50:])), name, nil},
		{"warning no_renegotiation before", concat(alert(1, 100), rec), name, nil},
		{"warning close_notify before", concat(alert(1, 0), rec), refused, nil},
		{"fatal alert before", concat(alert(2, 40), rec), refused, nil},
		{"alert of 3 bytes before", concat(record(21, 3, []byte{1, 90, 0}), rec), refused, nil},
		{"change_cipher_spec before", concat(record(20, 3, []byte{1}), rec), refused, nil},
		{"application data before", concat(record(23, 3, []byte("x")), rec), refused, nil},
		{"heartbeat before", concat(record(24, 3, []byte{1, 0, 0}), rec), refused, nil},
		{"hello request before", concat(record(22, 1, []byte{0, 0, 0, 0}), rec), refused, nil},
		{"record of 2^14 bytes", record(22, 1, full), name, nil},
		{"record of 2^14+1 bytes", record(22, 1, over), refused, nil},
		{"hello of 65536 bytes", records(padTo(t, hp, 65536).msg(), 16384), name, nil},
		{"hello of 65537 bytes", records(padTo(t, hp, 65537).msg(), 16384), name, nil},
		{"largest hello (131396 bytes)", records(largest.msg(), 16384), name, nil},
		{"hello of 131397 bytes", records(largest.msg(0), 16384), refused, nil},
		{"two host_names", withSNI(sniData(0, "first.test", 0, "second.test")), refused, nil},
		{"host_name then another type", withSNI(sniData(0, name, 1, "x")), refused, nil},
		{"another type then host_name", withSNI(sniData(1, "x", 0, name)), refused, nil},
		{"only another name type", withSNI(sniData(1, name)), refused, nil},
		{"bytes after the name list", withSNI(append(sniData(0, name), 0)), refused, nil},
		{"empty name list", withSNI(sniData()), refused, nil},
		{"empty name", withSNI(sniData(0, "")), refused, nil},
		{"name with a trailing dot", withSNI(sniData(0, name+".")), name + ".", nil},
		{"name with a space", withSNI(sniData(0, "gate test")), refused, nil},
		{"name with a NUL", withSNI(sniData(0, "gate.test\x00evil.test")), refused, nil},
		{"name of 255 bytes", withSNI(sniData(0, strings.Repeat("a", 251)+".tst")), strings.Repeat("a", 251) + ".tst", nil},
		{"name of 256 bytes", withSNI(sniData(0, strings.Repeat("a", 252)+".tst")), refused, nil},
		{"upper-case name", withSNI(sniData(0, "GATE.Test")), "GATE.Test", nil},
		{"server_name twice", records(hp.plus(helloExt{extServerName, sniData(0, "other.test")}).msg(), 16384), refused, nil},
		{"bytes after the extensions", records(hp.msg(0), 16384), refused, nil},
		// OpenSSL answers an SSLv2-format hello when its security level
		// lets it pick a signature algorithm without the extension.
		{"SSLv2 hello", ssl2Hello([3]byte{0, 0, 0x9c}, [3]byte{0, 0xc0, 0x2f}), "", []string{"-cipher", "ALL:@SECLEVEL=0"}},
		{"HTTP request", []byte("GET / HTTP/1.1\r\nHost: gate.test\r\n\r\n"), refused, nil},
		{"SSH banner", []byte("SSH-2.0-OpenSSH_9.6\r\n"), refused, nil},
	}
	return fs
}

// readFlight is what ParseClientHello makes of a complete first flight:
// the name, "" or refused (an unfinished hello at the end of the flight
// is refused too).
func readFlight(data []byte) string {
	ch, err := ParseClientHello(data)
	if err != nil {
		return refused
	}
	return ch.ServerName
}

// TestFirstFlights holds the reader to each shape, and checks it against
// crypto/tls: whenever crypto/tls serves a name, Balise read that name or
// refused.
func TestFirstFlights(t *testing.T) {
	for _, f := range firstFlights(t) {
		got := readFlight(f.data)
		if got != f.want {
			t.Errorf("%s: Balise read %q, want %q", f.name, got, f.want)
		}
		if name, served := goServerName(f.data); served && got != refused && got != name {
			t.Errorf("%s: crypto/tls serves %q, Balise read %q", f.name, name, got)
		}
	}
}

// openSSLHostname is what s_server prints when its servername callback
// sees a name.
var openSSLHostname = regexp.MustCompile(`Hostname in TLS extension: "([^"]*)"`)

// opensslFlight sends data to a fresh `openssl s_server` and reports
// whether it answered with a ServerHello, and the server name it read.
func opensslFlight(t *testing.T, bin, dir string, data []byte, extra []string) (answered bool, name string, hasName bool) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(bin, "s_server", "-accept", addr, "-naccept", "1",
		"-cert", filepath.Join(dir, "c.pem"), "-key", filepath.Join(dir, "k.pem"),
		"-servername", "other.invalid", "-cert2", filepath.Join(dir, "c.pem"), "-key2", filepath.Join(dir, "k.pem"))
	cmd.Args = append(cmd.Args, extra...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	stdin, _ := cmd.StdinPipe() // s_server stops at EOF on stdin
	defer stdin.Close()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	var c net.Conn
	for i := 0; ; i++ {
		c, err = net.Dial("tcp", addr)
		if err == nil {
			break
		}
		if i == 100 {
			t.Fatalf("s_server did not listen: %v\n%s", err, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write(data)
	c.(*net.TCPConn).CloseWrite()
	var resp bytes.Buffer
	resp.ReadFrom(c)
	c.Close()
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		<-done
	}
	r := resp.Bytes()
	answered = len(r) > 5 && r[0] == 22 && r[5] == 2
	if m := openSSLHostname.FindSubmatch(out.Bytes()); m != nil {
		return answered, string(m[1]), true
	}
	return answered, "", false
}

// TestFirstFlightsOpenSSL sends each shape to a real `openssl s_server`:
// when it answers with a ServerHello or reads a server name, Balise read
// the very name OpenSSL read, or refused. A shape OpenSSL answers and
// Balise refuses is allowed (Balise is stricter); the table logged with
// -v shows both, and crypto/tls's reading.
func TestFirstFlightsOpenSSL(t *testing.T) {
	bin, err := exec.LookPath("openssl")
	if err != nil {
		if os.Getenv("BALISE_E2E") == "1" {
			t.Fatal("BALISE_E2E=1 but openssl is not installed")
		}
		t.Skip("openssl is not installed")
	}
	if testing.Short() {
		t.Skip("starts one openssl s_server per shape")
	}
	dir := t.TempDir()
	gen := exec.Command(bin, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", filepath.Join(dir, "k.pem"),
		"-out", filepath.Join(dir, "c.pem"), "-subj", "/CN=gate.test", "-days", "1")
	if out, err := gen.CombinedOutput(); err != nil {
		t.Fatalf("openssl req: %v\n%s", err, out)
	}
	var table strings.Builder
	for _, f := range firstFlights(t) {
		got := readFlight(f.data)
		answered, name, hasName := opensslFlight(t, bin, dir, f.data, f.opensslArgs)
		goName, served := goServerName(f.data)
		fmt.Fprintf(&table, "%-45s openssl=%-5v name=%-12q go=%-5v name=%-12q balise=%q\n", f.name, answered, trunc(name), served, trunc(goName), trunc(got))
		if got == refused || (!answered && !hasName) {
			continue
		}
		// OpenSSL answered, or read a name before failing later on.
		if !hasName {
			name = ""
		}
		if got != name {
			t.Errorf("%s: OpenSSL read %q (answered %v), Balise read %q", f.name, name, answered, got)
		}
	}
	t.Logf("first flights:\n%s", table.String())
}

func trunc(s string) string {
	if len(s) > 12 {
		return s[:9] + "..."
	}
	return s
}
