# Shared by the benchmark scripts (sourced, not run): the work directory,
# the background processes and their cleanup, and free loopback ports.

# ROOT is the repository.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# bench_work NAME makes WORK, a temporary directory readable by the
# servers started (Squid and unbound drop privileges), and arranges that
# on exit every process in PIDS is stopped (TERM, then KILL a second
# later) and WORK removed; an interrupt exits with 130.
bench_work() {
	WORK=$(mktemp -d "/tmp/balise-$1.XXXXXX")
	chmod 755 "$WORK"
	PIDS=()
	trap bench_cleanup EXIT
	trap 'exit 130' INT TERM
}

bench_cleanup() {
	local p
	for p in "${PIDS[@]}"; do
		kill "$p" 2>/dev/null || true
	done
	sleep 1
	for p in "${PIDS[@]}"; do
		kill -9 "$p" 2>/dev/null || true
	done
	rm -rf "$WORK"
}

# freeport [tcp|udp] prints a loopback port the kernel just found free
# (udp by default).
freeport() {
	python3 -c 'import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if sys.argv[1] == "tcp" else socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' "${1:-udp}"
}
