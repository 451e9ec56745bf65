package proxy

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// FuzzClientHelloDifferential feeds the same first flight to Balise's
// reader and to crypto/tls's server side. It fails when crypto/tls would
// choose a configuration for a server name Balise did not read (another
// name, or none) while Balise accepted the hello; and when reading the
// flight in pieces gives another result than reading it at once.
//
// The corpus in testdata/fuzz/FuzzClientHelloDifferential holds real
// hellos (crypto/tls, openssl s_client, curl) and the crafted shapes of
// firstFlights.
func FuzzClientHelloDifferential(f *testing.F) {
	for _, fl := range firstFlights(f) {
		if len(fl.data) < 4096 { // large shapes are in TestFirstFlights; small seeds mutate faster
			f.Add(fl.data)
		}
	}
	f.Add(captureHello(f, &tls.Config{ServerName: "tls12.test", MaxVersion: tls.VersionTLS12}))
	f.Add(splitRecords(f, captureHello(f, &tls.Config{ServerName: "split.test"}), 64))
	f.Fuzz(func(t *testing.T, data []byte) {
		ch, err := ParseClientHello(data)
		name, served := goServerName(data)
		if err == nil && served && ch.ServerName != name {
			t.Fatalf("crypto/tls serves %q, Balise read %q", name, ch.ServerName)
		}
		if err != nil && (ch.ServerName != "" || ch.SSLv2) {
			t.Fatalf("ServerName %q (SSLv2 %v) returned with error %v", ch.ServerName, ch.SSLv2, err)
		}
		// Fed in pieces, as bytes arrive: the same result.
		var h helloReader
		for _, cut := range []int{len(data) / 3, len(data) / 2, len(data) - 1} {
			if cut <= 0 || cut >= len(data) {
				continue
			}
			if pch, perr := h.feed(data[:cut]); perr != ErrIncomplete {
				if perr == nil && err != nil || perr == nil && pch.ServerName != ch.ServerName {
					t.Fatalf("prefix %d read %q (%v), whole flight %q (%v)", cut, pch.ServerName, perr, ch.ServerName, err)
				}
				return
			}
		}
		pch, perr := h.feed(data)
		if (perr == nil) != (err == nil) || pch.ServerName != ch.ServerName || pch.SSLv2 != ch.SSLv2 {
			t.Fatalf("incremental read %q (%v), whole flight %q (%v)", pch.ServerName, perr, ch.ServerName, err)
		}
	})
}

// TestRealClientHellos reads the hellos captured from openssl s_client
// and curl (the fuzz corpus) and checks the name in each.
func TestRealClientHellos(t *testing.T) {
	want := map[string]string{
		"openssl-sni":       "www.Example-Social.test",
		"openssl-nosni":     "",
		"openssl-tls12":     "old.test",
		"openssl-alpn":      "alpn.test",
		"openssl-bigrecord": "frag.test", // -split_send_frag 64: records of 64 bytes
		"curl":              "curl.test",
	}
	for file, name := range want {
		b, err := os.ReadFile(filepath.Join("testdata", "fuzz", "FuzzClientHelloDifferential", file))
		if err != nil {
			t.Fatal(err)
		}
		_, lit, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
		s, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lit, "[]byte("), ")"))
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		data := []byte(s)
		ins := [][]byte{data}
		if n := int(data[3])<<8 | int(data[4]); n+recordHeaderLen == len(data) {
			ins = append(ins, splitRecords(t, data, 1), splitRecords(t, data, 100))
		} else if file != "openssl-bigrecord" {
			t.Errorf("%s: not a single record", file)
		}
		for _, in := range ins {
			ch, err := ParseClientHello(in)
			if err != nil || ch.ServerName != name {
				t.Errorf("%s: ParseClientHello = %q, %v; want %q", file, ch.ServerName, err, name)
			}
			if goName, served := goServerName(in); !served || goName != name {
				t.Errorf("%s: crypto/tls serves %q (%v), want %q", file, goName, served, name)
			}
		}
	}
}
