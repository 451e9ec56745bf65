package proxy

import (
	"bytes"
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"
)

// captureHello returns the bytes a crypto/tls client sends first.
func captureHello(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	go func() {
		tc := tls.Client(c1, cfg)
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		tc.Handshake()
	}()
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	var buf []byte
	tmp := make([]byte, 4096)
	for {
		n, err := c2.Read(tmp)
		buf = append(buf, tmp[:n]...)
		if _, perr := ParseClientHello(buf); perr != ErrIncomplete {
			return buf
		}
		if err != nil {
			t.Fatalf("capture: %v", err)
		}
	}
}

// splitRecords re-frames a single-record ClientHello into records of at
// most size bytes of payload each.
func splitRecords(t testing.TB, hello []byte, size int) []byte {
	t.Helper()
	payload := hello[5:]
	var out []byte
	for len(payload) > 0 {
		n := min(size, len(payload))
		out = append(out, 22, 3, 1, byte(n>>8), byte(n))
		out = append(out, payload[:n]...)
		payload = payload[n:]
	}
	return out
}

func TestParseClientHello(t *testing.T) {
	tls13 := captureHello(t, &tls.Config{ServerName: "www.Example-Social.test", NextProtos: []string{"h2", "http/1.1"}, MinVersion: tls.VersionTLS13})
	tls12 := captureHello(t, &tls.Config{ServerName: "old.example.test", MaxVersion: tls.VersionTLS12})
	noSNI := captureHello(t, &tls.Config{InsecureSkipVerify: true})
	tests := []struct {
		name    string
		data    []byte
		want    string
		wantErr error
	}{
		{"tls13", tls13, "www.Example-Social.test", nil},
		{"tls12", tls12, "old.example.test", nil},
		{"no sni", noSNI, "", nil},
		{"split 1-byte records", splitRecords(t, tls13, 1), "www.Example-Social.test", nil},
		{"split 100-byte records", splitRecords(t, tls13, 100), "www.Example-Social.test", nil},
		{"trailing bytes", append(append([]byte{}, tls12...), 23, 3, 3, 0, 1, 0), "old.example.test", nil},
		{"truncated", tls13[:len(tls13)-1], "", ErrIncomplete},
		{"header only", tls13[:3], "", ErrIncomplete},
		{"empty", nil, "", ErrIncomplete},
		{"http", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), "", ErrNotTLS},
		{"ssh", []byte("SSH-2.0-OpenSSH_9.6\r\n"), "", ErrNotTLS},
		{"alert record", []byte{21, 3, 3, 0, 2, 2, 40}, "", ErrNotTLS},
		{"server hello type", []byte{22, 3, 3, 0, 4, 2, 0, 0, 0}, "", ErrNotTLS},
		{"zero length record", []byte{22, 3, 1, 0, 0}, "", ErrIncomplete}, // skipped, as OpenSSL does
		{"huge record", []byte{22, 3, 1, 0xff, 0xff}, "", ErrNotTLS},
		{"tiny hello length", []byte{22, 3, 1, 0, 4, 1, 0, 0, 3}, "", ErrNotTLS},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ch, err := ParseClientHello(tt.data)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("ParseClientHello(%s) error = %v, want %v", tt.name, err, tt.wantErr)
			}
			if ch.ServerName != tt.want {
				t.Errorf("ParseClientHello(%s).ServerName = %q, want %q", tt.name, ch.ServerName, tt.want)
			}
		})
	}
	ch, _ := ParseClientHello(tls13)
	if len(ch.ALPN) != 2 || ch.ALPN[0] != "h2" {
		t.Errorf("ALPN = %q, want [h2 http/1.1]", ch.ALPN)
	}
}

func TestParseClientHelloMalformed(t *testing.T) {
	good := captureHello(t, &tls.Config{ServerName: "a.test"})
	// Corrupt the SNI's length fields: locate the name and damage the
	// two-byte length in front of it.
	i := bytes.Index(good, []byte("a.test"))
	if i < 0 {
		t.Fatal("name not found in hello")
	}
	bad := append([]byte(nil), good...)
	bad[i-1] = 0xff
	if _, err := ParseClientHello(bad); err == nil {
		t.Errorf("ParseClientHello(bad sni length) = nil error, want an error")
	}
	ctrl := append([]byte(nil), good...)
	ctrl[i] = 0x01
	if _, err := ParseClientHello(ctrl); err == nil {
		t.Errorf("ParseClientHello(control char in name) = nil error, want an error")
	}
}

// TestReadClientHelloSplitReads feeds a hello byte by byte over a real
// socket: the reader must reassemble it.
func TestReadClientHelloSplitReads(t *testing.T) {
	hello := splitRecords(t, captureHello(t, &tls.Config{ServerName: "split.test"}), 50)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			return
		}
		defer c.Close()
		c.(*net.TCPConn).SetNoDelay(true)
		for i := range hello {
			c.Write(hello[i : i+1])
			if i%97 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
		time.Sleep(time.Second)
	}()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, ch, err := readClientHello(c, nil, time.Now().Add(5*time.Second), helloLimit)
	if err != nil {
		t.Fatalf("readClientHello: %v", err)
	}
	if ch.ServerName != "split.test" || !bytes.Equal(got, hello) {
		t.Errorf("readClientHello = %q (%d bytes), want split.test (%d bytes)", ch.ServerName, len(got), len(hello))
	}
}

func FuzzParseClientHello(f *testing.F) {
	f.Add(captureHello(f, &tls.Config{ServerName: "seed.test"}))
	f.Add(captureHello(f, &tls.Config{ServerName: "seed12.test", MaxVersion: tls.VersionTLS12}))
	f.Add(splitRecords(f, captureHello(f, &tls.Config{ServerName: "split.test"}), 64))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add([]byte{22, 3, 1, 0, 4, 1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		ch, err := ParseClientHello(data)
		if err != nil && ch.ServerName != "" {
			t.Fatalf("ServerName %q returned with error %v", ch.ServerName, err)
		}
		if err == nil {
			if len(ch.ServerName) > 255 {
				t.Fatalf("ServerName too long: %d", len(ch.ServerName))
			}
			for _, c := range []byte(ch.ServerName) {
				if c <= ' ' || c >= 0x7f {
					t.Fatalf("ServerName %q has a forbidden byte", ch.ServerName)
				}
			}
			// Any strict prefix of a complete hello is incomplete or
			// fails; it never yields a different name.
			for _, cut := range []int{len(data) / 2, len(data) - 1} {
				if cut <= 0 {
					continue
				}
				pch, perr := ParseClientHello(data[:cut])
				if perr == nil && pch.ServerName != ch.ServerName {
					t.Fatalf("prefix %d parsed to %q, full to %q", cut, pch.ServerName, ch.ServerName)
				}
			}
		}
	})
}
