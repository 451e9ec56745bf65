// Package tests holds Balise's end-to-end tests: they build the real
// binary once (TestMain), start it with generated configurations on
// loopback addresses at port 0, learn its listen addresses from its JSON
// log (msg="listening" lines, keys service and addr), and drive it with
// real clients over real sockets.
//
// The helpers, in harness_test.go, are shared by every end-to-end test:
//
//   - startBalise(t, configText) starts `balise serve` and returns an
//     *instance once it has logged msg="started"; startBaliseWith takes
//     options (no --config, extra arguments, environment).
//   - (*instance).Addr(service) is the address a service listens on:
//     "metrics", "dns-udp", "dns-tcp", "proxy", "transparent-http",
//     "transparent-https".
//   - (*instance).Reload, Signal, Stop, WriteConfig, WaitLog, Lines,
//     Stderr, Get, Metrics and MetricValue drive and observe it.
//   - runBalise(t, args...) runs a one-shot command (check, explain,
//     exceptions, version) and returns its output and exit code.
//   - requireTool(t, name) and requireRoot(t) skip a test that needs an
//     external tool or root, unless BALISE_E2E=1, where they fail it.
//   - listeners is a configuration fragment putting every listener on
//     127.0.0.1:0.
//
// Tests are bounded in time and clean up after themselves: every process
// is killed at the end of its test.
package tests
