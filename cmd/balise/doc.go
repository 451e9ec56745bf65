// Command balise is Balise's one binary: it enforces an institution's
// social-media policy at the network (DNS filter and HTTP(S) proxy), checks
// and explains policy files, and runs the exception register's officer
// commands.
//
// Usage:
//
//	balise serve   [--config FILE] [--log-format json|text] [--log-level debug|info|warn|error]
//	balise check   --config FILE [--strict]
//	balise explain --config FILE --client IP --host HOST [--user NAME] [--groups a,b] [--at RFC3339] [--json]
//	balise exceptions --config FILE COMMAND ...
//	balise identity reveal --config FILE --by NAME --reason TEXT PSEUDONYM
//	balise ca init --out DIR
//	balise catalog show [--config FILE | CATALOG] | diff [OLD] NEW | sign --key FILE CATALOG | verify --key PUB CATALOG [--sig FILE]
//	balise replay --config NEW.toml [--json] DECISIONS.jsonl
//	balise version
//
// serve without --config uses the embedded default configuration, which
// listens on loopback addresses only. check prints a summary and exits 0
// when the file is valid; otherwise it prints one line per problem,
// "FILE:LINE:COL: message" where the position is known and
// "FILE: key.path: message" otherwise, and exits 1. explain prints the
// decision the policy takes for one client, host and instant, and why.
//
// catalog is for whoever publishes catalog updates: show, diff, sign (the
// key's password on standard input) and verify. replay re-decides a
// decision log with a new configuration and prints how many verdicts
// change, by verdict, service and group (counts only).
//
// Exit codes: 0 success, 1 invalid input (a configuration with problems,
// an invalid client address or host name, a listener that cannot be bound),
// 2 usage error.
//
// serve reloads its configuration on SIGHUP (a configuration that fails to
// load or compile leaves the running one in place, logged and counted in
// balise_config_reloads_total{result="failure"}), stops gracefully on
// SIGINT and SIGTERM, applies signed catalog updates from [catalog]
// update_url the same way as a reload, and speaks the systemd notification protocol when
// $NOTIFY_SOCKET is set (Type=notify, WatchdogSec=).
package main
