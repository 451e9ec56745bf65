package config

import (
	"strings"
	"testing"
	"time"
)

func TestConsoleDefaults(t *testing.T) {
	c := mustParse(t, "/etc/balise/balise.toml", "[exceptions]\n[console]\naccounts_file = \"accounts\"\n")
	s := c.Console
	if s == nil {
		t.Fatal("Console is nil")
	}
	if len(s.Listen) != 1 || s.Listen[0] != "127.0.0.1:9465" || !s.Loopback() {
		t.Errorf("Listen = %v", s.Listen)
	}
	if len(s.Officers) != 1 || s.Officers[0] != "RSI" || len(s.Auditors) != 0 {
		t.Errorf("Officers = %v, Auditors = %v", s.Officers, s.Auditors)
	}
	if s.SessionIdle != 30*time.Minute || s.AccountsFile != "/etc/balise/accounts" || s.SMTPURL != "" {
		t.Errorf("got %+v", s)
	}
	if c.Exceptions.NotifyFormat != "json" {
		t.Errorf("NotifyFormat = %q", c.Exceptions.NotifyFormat)
	}
	if c := mustParse(t, "/etc/balise/balise.toml", ""); c.Console != nil {
		t.Error("Console without [console] is not nil")
	}
}

func TestConsoleErrors(t *testing.T) {
	tests := []struct {
		name, toml, want string
	}{
		{"no tls beyond loopback", "[exceptions]\n[console]\naccounts_file = \"a\"\nlisten = \"0.0.0.0:9465\"\n", "b.toml:4:10: console.listen: tls_cert and tls_key are required"},
		{"cert without key", "[exceptions]\n[console]\naccounts_file = \"a\"\ntls_cert = \"c.pem\"\n", "console: tls_cert and tls_key go together"},
		{"no exceptions", "[console]\naccounts_file = \"a\"\n", "console: needs an [exceptions] table"},
		{"nobody", "[exceptions]\n[console]\n", "nobody could sign in"},
		{"smtp", "[exceptions]\n[console]\naccounts_file = \"a\"\nsmtp_url = \"http://mail\"\n", "b.toml:4:12: console.smtp_url: invalid URL"},
		{"smtp creds", "[exceptions]\n[console]\naccounts_file = \"a\"\nsmtp_url = \"smtp://u:p@mail:25\"\n", "console.smtp_url: the URL must not hold credentials"},
		{"notify_to", "[exceptions]\n[console]\naccounts_file = \"a\"\nnotify_to = [\"not an address\"]\n", "b.toml:4:14: console.notify_to[0]: invalid e-mail address"},
		{"idle", "[exceptions]\n[console]\naccounts_file = \"a\"\nsession_idle = \"0s\"\n", "b.toml:4:16: console.session_idle: must be more than 0s"},
		{"unknown key", "[exceptions]\n[console]\naccounts_file = \"a\"\nofficer = [\"x\"]\n", "console.officer"},
		{"notify_format", "[exceptions]\nnotify_format = \"mattermost\"\n", "b.toml:2:17: exceptions.notify_format"},
	}
	for _, tt := range tests {
		_, err := Parse("b.toml", []byte(tt.toml))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want %q", tt.name, err, tt.want)
		}
	}
	// TLS beyond loopback is accepted with a certificate; loopback without.
	for _, ok := range []string{
		"[exceptions]\n[console]\naccounts_file = \"a\"\nlisten = \"10.0.0.5:9465\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n",
		"[exceptions]\n[console]\naccounts_file = \"a\"\nlisten = [\"[::1]:9465\", \"localhost:9466\"]\n",
		"[exceptions]\nnotify_format = \"teams\"\n[console]\naccounts_file = \"a\"\nsmtp_url = \"smtps://mail.example:465\"\nnotify_to = [\"rsi@example.org\"]\n",
	} {
		if _, err := Parse("ok.toml", []byte(ok)); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
}
