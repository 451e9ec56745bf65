package main

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// notifier speaks systemd's service notification protocol (sd_notify(3)):
// datagrams such as "READY=1" sent to the unix socket named by
// $NOTIFY_SOCKET. A nil *notifier does nothing, so serve calls it
// unconditionally.
type notifier struct {
	addr *net.UnixAddr
}

// newNotifier returns a notifier for $NOTIFY_SOCKET, or nil when it is
// unset (not started by systemd with Type=notify). A name starting with
// "@" is an abstract socket.
func newNotifier(getenv func(string) string) *notifier {
	name := getenv("NOTIFY_SOCKET")
	if name == "" {
		return nil
	}
	return &notifier{addr: &net.UnixAddr{Name: name, Net: "unixgram"}}
}

// notify sends one state message ("READY=1", or several lines joined by
// "\n").
func (n *notifier) notify(state string) error {
	if n == nil {
		return nil
	}
	conn, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	return nil
}

// ready tells systemd that startup finished (listeners bound) or that a
// reload finished.
func (n *notifier) ready(status string) error {
	return n.notify("READY=1\nSTATUS=" + status)
}

// reloading tells systemd that a configuration reload started, with the
// monotonic timestamp systemd requires for Type=notify-reload.
func (n *notifier) reloading() error {
	return n.notify("RELOADING=1\nMONOTONIC_USEC=" + strconv.FormatInt(monotonicUsec(), 10))
}

// stopping tells systemd that the service is shutting down.
func (n *notifier) stopping() error {
	return n.notify("STOPPING=1")
}

// watchdogInterval returns how often to send WATCHDOG=1: half of
// $WATCHDOG_USEC, when it is set and $WATCHDOG_PID (if set) is pid.
func watchdogInterval(getenv func(string) string, pid int) (time.Duration, bool) {
	usec, err := strconv.ParseInt(getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || usec <= 0 {
		return 0, false
	}
	if p := getenv("WATCHDOG_PID"); p != "" && p != strconv.Itoa(pid) {
		return 0, false
	}
	return time.Duration(usec) * time.Microsecond / 2, true
}

// runWatchdog sends WATCHDOG=1 every interval until ctx ends, as long as
// alive (nil: always) reports no error; a failing check withholds the ping
// so that systemd restarts a hung process. onFail (may be nil) hears why.
func (n *notifier) runWatchdog(ctx context.Context, interval time.Duration, alive func() error, onFail func(error)) {
	if n == nil || interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if alive != nil {
				if err := alive(); err != nil {
					if onFail != nil {
						onFail(err)
					}
					continue
				}
			}
			_ = n.notify("WATCHDOG=1")
		}
	}
}

// monotonicUsec reads CLOCK_MONOTONIC in microseconds, the clock systemd
// compares MONOTONIC_USEC with.
func monotonicUsec() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return int64(ts.Sec)*1_000_000 + int64(ts.Nsec)/1_000
}
