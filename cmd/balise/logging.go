package main

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// serveEnv is what serve reads from its environment, injectable in tests.
// The zero value reads the real process environment.
type serveEnv struct {
	// getenv reads an environment variable (nil: os.Getenv).
	getenv func(string) string
	// exists reports whether a file exists (nil: os.Stat).
	exists func(string) bool
}

// defaultLogFormat is "json" under systemd (INVOCATION_ID or JOURNAL_STREAM
// set) or in a container (/.dockerenv, /run/.containerenv or
// KUBERNETES_SERVICE_HOST), where lines are collected by a log pipeline,
// and "text" on a terminal.
func defaultLogFormat(getenv func(string) string, exists func(string) bool) string {
	for _, v := range []string{"INVOCATION_ID", "JOURNAL_STREAM", "KUBERNETES_SERVICE_HOST"} {
		if getenv(v) != "" {
			return "json"
		}
	}
	for _, f := range []string{"/.dockerenv", "/run/.containerenv"} {
		if exists(f) {
			return "json"
		}
	}
	return "text"
}

// parseLevel parses a --log-level value.
func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.TrimSpace(s))); err != nil {
		return 0, fmt.Errorf("invalid log level %q (want debug, info, warn or error)", s)
	}
	return l, nil
}

// newLogger returns the process logger writing format ("json" or "text")
// to w at level.
func newLogger(w io.Writer, format string, level slog.Leveler) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: level}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("invalid log format %q (want json or text)", format)
}
