package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// listenNotify opens a unixgram socket like systemd's and returns a getenv
// pointing NOTIFY_SOCKET at it and a function reading the next message.
func listenNotify(t *testing.T, name string) (func(string) string, func() string) {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	getenv := func(k string) string {
		if k == "NOTIFY_SOCKET" {
			return name
		}
		return ""
	}
	next := func() string {
		t.Helper()
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 4096)
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("reading notification: %v", err)
		}
		return string(buf[:n])
	}
	return getenv, next
}

func TestNotifier(t *testing.T) {
	for _, name := range []string{
		filepath.Join(t.TempDir(), "notify.sock"),
		"@balise-test-" + strings.ReplaceAll(t.Name(), "/", "-"), // abstract namespace
	} {
		getenv, next := listenNotify(t, name)
		n := newNotifier(getenv)
		if n == nil {
			t.Fatal("newNotifier with NOTIFY_SOCKET set = nil")
		}
		if err := n.ready("serving"); err != nil {
			t.Fatal(err)
		}
		if got := next(); got != "READY=1\nSTATUS=serving" {
			t.Errorf("ready sent %q, want READY=1 and STATUS", got)
		}
		before := monotonicUsec()
		if err := n.reloading(); err != nil {
			t.Fatal(err)
		}
		got := next()
		after := monotonicUsec()
		var usec int64
		if !strings.HasPrefix(got, "RELOADING=1\nMONOTONIC_USEC=") {
			t.Fatalf("reloading sent %q, want RELOADING=1 and MONOTONIC_USEC", got)
		}
		if _, err := fmt.Sscan(strings.TrimPrefix(got, "RELOADING=1\nMONOTONIC_USEC="), &usec); err != nil || usec < before || usec > after {
			t.Errorf("MONOTONIC_USEC = %d (%v), want within [%d, %d]", usec, err, before, after)
		}
		if err := n.stopping(); err != nil {
			t.Fatal(err)
		}
		if got := next(); got != "STOPPING=1" {
			t.Errorf("stopping sent %q, want STOPPING=1", got)
		}
	}
}

func TestNotifierWatchdog(t *testing.T) {
	getenv, next := listenNotify(t, filepath.Join(t.TempDir(), "wd.sock"))
	n := newNotifier(getenv)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { n.runWatchdog(ctx, 10*time.Millisecond, nil, nil); close(done) }()
	for range 3 {
		if got := next(); got != "WATCHDOG=1" {
			t.Errorf("watchdog sent %q, want WATCHDOG=1", got)
		}
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("runWatchdog did not return after cancel")
	}
}

func TestWatchdogWithheldWhileNotAlive(t *testing.T) {
	getenv, next := listenNotify(t, filepath.Join(t.TempDir(), "wd.sock"))
	n := newNotifier(getenv)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var calls, failures atomic.Int32
	alive := func() error {
		if calls.Add(1) <= 3 {
			return errors.New("dns self-query timed out")
		}
		return nil
	}
	go n.runWatchdog(ctx, 10*time.Millisecond, alive, func(error) { failures.Add(1) })
	if got := next(); got != "WATCHDOG=1" {
		t.Fatalf("watchdog sent %q, want WATCHDOG=1", got)
	}
	if f := failures.Load(); f != 3 {
		t.Errorf("first ping after %d failed checks, want 3 (no ping while a check fails)", f)
	}
}

func TestNotifierUnset(t *testing.T) {
	n := newNotifier(func(string) string { return "" })
	if n != nil {
		t.Fatalf("newNotifier without NOTIFY_SOCKET = %v, want nil", n)
	}
	if err := n.ready("x"); err != nil {
		t.Errorf("nil notifier ready = %v, want nil", err)
	}
}

func TestNotifierMissingSocket(t *testing.T) {
	n := newNotifier(func(string) string { return filepath.Join(t.TempDir(), "absent.sock") })
	if err := n.ready("x"); err == nil {
		t.Error("ready to a missing socket = nil, want an error")
	}
}

func TestWatchdogInterval(t *testing.T) {
	tests := []struct {
		usec, pid string
		want      time.Duration
		ok        bool
	}{
		{"", "", 0, false},
		{"garbage", "", 0, false},
		{"0", "", 0, false},
		{"30000000", "", 15 * time.Second, true},
		{"30000000", "4242", 15 * time.Second, true},
		{"30000000", "1", 0, false},
	}
	for _, tt := range tests {
		env := map[string]string{"WATCHDOG_USEC": tt.usec, "WATCHDOG_PID": tt.pid}
		got, ok := watchdogInterval(func(k string) string { return env[k] }, 4242)
		if got != tt.want || ok != tt.ok {
			t.Errorf("watchdogInterval(USEC=%q, PID=%q) = %v, %v; want %v, %v", tt.usec, tt.pid, got, ok, tt.want, tt.ok)
		}
	}
}
