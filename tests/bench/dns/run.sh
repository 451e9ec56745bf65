#!/usr/bin/env bash
# DNS benchmark of Balise against dnsmasq, unbound and a bare miekg/dns
# responder (the Go-stack ceiling), all on loopback, in one run.
#
# One dnsperf query file serves every target: 70% allowed names that the
# targets answer from memory (Balise from its cache, after one warm-up
# pass), 30% names of a 1,000,000-domain list that Balise blocks
# (dnsmasq and unbound answer NXDOMAIN for the same names from local
# data). The script prints, per target, the best of ROUNDS runs (QPS,
# average latency, lost queries), Balise's ratios, Balise's resident
# memory with the list loaded, and the lost queries and p99 latency while
# Balise reloads the list (SIGHUP) under about half its maximum rate.
#
# Usage: tests/bench/dns/run.sh            (from anywhere in the repository)
# Environment: DURATION (s per run, default 10), ROUNDS (default 3),
#   CLIENTS (dnsperf -c, default 8), OUTSTANDING (dnsperf -q, default 200),
#   LIST_SIZE (default 1000000), RELOAD_DURATION (s, default 20),
#   BALISE_UDP_SOCKETS (udp_sockets, default 0 = one per CPU).
# Needs: go, dnsperf, dnsmasq, unbound. Not part of CI.
#
# To compare UDP socket settings of the filter alone (SO_REUSEPORT socket
# count, batched or single-datagram system calls), run
# tests/bench/dns/filteronly against tests/bench/dns/responder with
# dnsperf; see the comment at the top of filteronly/main.go.
set -euo pipefail

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-8}
OUTSTANDING=${OUTSTANDING:-200}
LIST_SIZE=${LIST_SIZE:-1000000}
RELOAD_DURATION=${RELOAD_DURATION:-20}
BALISE_UDP_SOCKETS=${BALISE_UDP_SOCKETS:-0}

for tool in go dnsperf dnsmasq unbound; do
	command -v "$tool" >/dev/null || { echo "run.sh: $tool is not installed" >&2; exit 2; }
done

. "$(dirname "$0")/../lib.sh"
bench_work dnsbench

# Ports: chosen free by the kernel a moment before use.
P_RESP=$(freeport); P_BALISE=$(freeport); P_METRICS=$(freeport); P_DNSMASQ=$(freeport); P_UNBOUND=$(freeport)

echo "== building" >&2
(cd "$ROOT" && go build -o "$WORK/balise" ./cmd/balise && go build -o "$WORK/responder" ./tests/bench/dns/responder)

echo "== generating a ${LIST_SIZE}-domain list and the query file" >&2
awk -v n="$LIST_SIZE" 'BEGIN { for (i = 0; i < n; i++) printf "bench%07d.example\n", i }' >"$WORK/list.txt"
awk -v n="$LIST_SIZE" 'BEGIN {
	srand(20261122)
	for (i = 0; i < 100000; i++) {
		if (rand() < 0.7) printf "host%d.allowed.test A\n", int(rand() * 1000)
		else printf "bench%07d.example A\n", int(rand() * n)
	}
}' >"$WORK/queries.txt"

# dnsmasq and unbound answer the same names from local data.
{
	for i in $(seq 0 999); do echo "host-record=host$i.allowed.test,192.0.2.1"; done
	awk '$1 ~ /^bench/ { print "address=/" $1 "/" }' "$WORK/queries.txt" | sort -u
} >"$WORK/dnsmasq.conf"
{
	cat <<EOF
server:
	interface: 127.0.0.1@$P_UNBOUND
	port: $P_UNBOUND
	do-daemonize: no
	chroot: ""
	username: ""
	pidfile: ""
	directory: "$WORK"
	use-syslog: no
	logfile: ""
	verbosity: 0
	num-threads: 2
	so-reuseport: yes
	access-control: 127.0.0.0/8 allow
	do-not-query-localhost: yes
EOF
	for i in $(seq 0 999); do echo "	local-data: \"host$i.allowed.test. 3600 IN A 192.0.2.1\""; done
	awk '$1 ~ /^bench/ { print "\tlocal-zone: \"" $1 ".\" always_nxdomain" }' "$WORK/queries.txt" | sort -u
} >"$WORK/unbound.conf"

cat >"$WORK/balise.toml" <<EOF
timezone = "UTC"
default_action = "block"

[[list]]
name = "benchlist"
category = "networking"
files = ["$WORK/list.txt"]

[metrics]
listen = "127.0.0.1:$P_METRICS"

[proxy]
listen = []

[dns]
listen = "127.0.0.1:$P_BALISE"
upstreams = ["127.0.0.1:$P_RESP"]
rate_limit = 0
cache_size = 200000
udp_sockets = $BALISE_UDP_SOCKETS
EOF

echo "== starting the targets" >&2
"$WORK/responder" -listen "127.0.0.1:$P_RESP" -reuseport 2 2>"$WORK/responder.log" &
RESP_PID=$!
PIDS+=($RESP_PID)
dnsmasq --keep-in-foreground --no-resolv --no-hosts --no-poll --port="$P_DNSMASQ" --listen-address=127.0.0.1 \
	--bind-interfaces --user=root --pid-file= --cache-size=10000 --conf-file="$WORK/dnsmasq.conf" 2>"$WORK/dnsmasq.log" &
DNSMASQ_PID=$!
PIDS+=($DNSMASQ_PID)
unbound -d -c "$WORK/unbound.conf" >"$WORK/unbound.log" 2>&1 &
UNBOUND_PID=$!
PIDS+=($UNBOUND_PID)
"$WORK/balise" serve --config "$WORK/balise.toml" --log-format json 2>"$WORK/balise.log" &
BALISE_PID=$!
PIDS+=($BALISE_PID)

echo "host1.allowed.test A" >"$WORK/one.txt"
wait_dns() { # port name pid
	for _ in $(seq 1 120); do
		if ! kill -0 "$3" 2>/dev/null; then
			echo "run.sh: $2 exited; its log:" >&2
			cat "$WORK/$2.log" >&2
			exit 1
		fi
		if dnsperf -s 127.0.0.1 -p "$1" -d "$WORK/one.txt" -n 1 -t 1 2>/dev/null | grep -q 'Queries completed: *1 '; then
			return 0
		fi
		sleep 0.5
	done
	echo "run.sh: $2 does not answer on port $1; its log:" >&2
	tail -20 "$WORK/$2.log" >&2
	exit 1
}
wait_dns "$P_RESP" responder "$RESP_PID"
wait_dns "$P_DNSMASQ" dnsmasq "$DNSMASQ_PID"
wait_dns "$P_UNBOUND" unbound "$UNBOUND_PID"
wait_dns "$P_BALISE" balise "$BALISE_PID"

# perf PORT [extra dnsperf args...]: prints "qps avg_latency_ms lost completed_pct"
perf() {
	local port=$1
	shift
	dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/queries.txt" -c "$CLIENTS" -T 2 -q "$OUTSTANDING" "$@" 2>&1 |
		awk '/Queries per second/ { q = $4 } /Average Latency/ { l = $4 * 1000 } /Queries lost/ { lost = $3 }
			/Response codes/ { rc = $0 } END { printf "%.0f %.3f %s\n", q, l, lost; print rc > "/dev/stderr" }'
}

echo "== warming up (one pass each: Balise fills its cache)" >&2
for port in $P_RESP $P_DNSMASQ $P_UNBOUND $P_BALISE; do
	perf "$port" -l 3 >/dev/null 2>&1
done
RSS_KB=$(awk '/VmRSS/ { print $2 }' "/proc/$BALISE_PID/status")

declare -A BEST_QPS BEST_LAT BEST_LOST
TARGETS=(balise dnsmasq unbound responder)
declare -A PORT=([balise]=$P_BALISE [dnsmasq]=$P_DNSMASQ [unbound]=$P_UNBOUND [responder]=$P_RESP)
for r in $(seq 1 "$ROUNDS"); do
	for t in "${TARGETS[@]}"; do
		read -r qps lat lost < <(perf "${PORT[$t]}" -l "$DURATION" 2>"$WORK/rc-$t.txt")
		echo "round $r  $t: $qps qps, avg ${lat} ms, lost $lost  ($(sed 's/^ *//' "$WORK/rc-$t.txt"))" >&2
		if [ -z "${BEST_QPS[$t]:-}" ] || [ "$qps" -gt "${BEST_QPS[$t]}" ]; then
			BEST_QPS[$t]=$qps BEST_LAT[$t]=$lat BEST_LOST[$t]=$lost
		fi
	done
done

echo
echo "DNS benchmark: dnsperf -c $CLIENTS -T 2 -q $OUTSTANDING -l $DURATION, best of $ROUNDS rounds, $(nproc) CPUs"
printf "%-10s %10s %12s %8s\n" target qps "avg ms" lost
for t in "${TARGETS[@]}"; do
	printf "%-10s %10s %12s %8s\n" "$t" "${BEST_QPS[$t]}" "${BEST_LAT[$t]}" "${BEST_LOST[$t]}"
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
echo "Balise / dnsmasq:   $(ratio "${BEST_QPS[balise]}" "${BEST_QPS[dnsmasq]}")"
echo "Balise / unbound:   $(ratio "${BEST_QPS[balise]}" "${BEST_QPS[unbound]}")"
echo "Balise / responder: $(ratio "${BEST_QPS[balise]}" "${BEST_QPS[responder]}")"
echo "Balise RSS with the ${LIST_SIZE}-domain list: $((RSS_KB / 1024)) MiB"

# Reload under load: about half the best rate, SIGHUP in the middle.
HALF=$((${BEST_QPS[balise]} / 2))
echo "== reload under ${HALF} qps for ${RELOAD_DURATION} s" >&2
dnsperf -s 127.0.0.1 -p "$P_BALISE" -d "$WORK/queries.txt" -c "$CLIENTS" -T 2 -q "$OUTSTANDING" -Q "$HALF" \
	-l "$RELOAD_DURATION" -v >"$WORK/reload.txt" 2>&1 &
DNSPERF_PID=$!
PIDS+=($DNSPERF_PID)
sleep $((RELOAD_DURATION / 3))
touch "$WORK/list.txt"
kill -HUP "$BALISE_PID"
wait "$DNSPERF_PID" || true
RELOADED=$(grep -c '"msg":"configuration reloaded"' "$WORK/balise.log" || true)
LOST=$(awk '/Queries lost/ { print $3 }' "$WORK/reload.txt")
P99=$(awk '/^> / { print $NF }' "$WORK/reload.txt" | sort -g | awk '{ v[NR] = $1 } END { i = int(NR * 0.99); if (i < 1) i = 1; printf "%.3f", v[i] * 1000 }')
MAXLAT=$(awk '/^> / { print $NF }' "$WORK/reload.txt" | sort -g | tail -1 | awk '{ printf "%.3f", $1 * 1000 }')
echo "Reload under load (-Q $HALF, ${RELOAD_DURATION} s, SIGHUP at $((RELOAD_DURATION / 3)) s, reloads logged: $RELOADED): lost $LOST, p99 ${P99} ms, max ${MAXLAT} ms"
