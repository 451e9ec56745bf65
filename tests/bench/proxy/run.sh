#!/usr/bin/env bash
# Proxy benchmark: the same origin reached directly, through Balise (policy
# on, one million listed domains), Squid and tinyproxy, all on loopback.
#
#   tests/bench/proxy/run.sh            # full run (3 rounds of 5 s per measure)
#   ROUNDS=1 DURATION=3s IDLE=2000 tests/bench/proxy/run.sh   # shorter
#
# Prints, per target: plain HTTP req/s (wrk, absolute-URI requests), new
# CONNECT + TLS + one request per second, keep-alive HTTPS req/s, MB/s of
# 1 GB through one tunnel, and the proxy's RSS with IDLE idle tunnels.
# Targets take turns within each round and the median of the rounds is
# shown, so that a busy machine penalizes every target alike. Only 200
# answers count; failures (all rounds) are printed next to each figure.
# Needs: go, wrk, squid, tinyproxy. Not part of .ci/run.
set -euo pipefail

DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-3}
CONC=${CONC:-32}
IDLE=${IDLE:-10000}
BYTES=${BYTES:-1073741824}
. "$(dirname "$0")/../lib.sh"
bench_work bench

for tool in go wrk squid tinyproxy; do
	command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done

# Idle tunnels need two descriptors each in the proxy.
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
FDS=$(ulimit -n)
MAXIDLE=$(( (FDS - 1000) / 2 ))
if (( IDLE > MAXIDLE )); then
	echo "note: open-file limit $FDS allows $MAXIDLE idle tunnels, not $IDLE" >&2
	IDLE=$MAXIDLE
fi

echo "building..." >&2
(cd "$ROOT" && go build -o "$WORK/balise" ./cmd/balise &&
	go build -o "$WORK/origin" ./tests/bench/proxy/origin &&
	go build -o "$WORK/client" ./tests/bench/proxy/client)

H_HTTP=127.0.0.1:18080 H_HTTPS=127.0.0.1:18443 H_SRC=127.0.0.1:18444
P_BALISE=127.0.0.1:13130 P_SQUID=127.0.0.1:13128 P_TINY=127.0.0.1:13129

"$WORK/origin" -http $H_HTTP -https $H_HTTPS -source $H_SRC -cert "$WORK/origin.pem" -bytes "$BYTES" >"$WORK/origin.log" 2>&1 &
PIDS+=($!)
disown $! 2>/dev/null || true

echo "generating one million listed domains..." >&2
awk 'BEGIN { for (i = 0; i < 1000000; i++) printf "d%07d.bench-list.test\n", i }' >"$WORK/domains.txt"
cat >"$WORK/balise.toml" <<TOML
timezone = "UTC"

[[list]]
name = "bench-list"
category = "networking"
files = ["domains.txt"]

[metrics]
listen = "127.0.0.1:19464"

[dns]
listen = []

[proxy]
listen = "$P_BALISE"
connect_ports = [18443, 18444]
# The byte source (18444) is not TLS; the origin is on loopback.
opaque_ports = [18444]
allow_destinations = ["127.0.0.0/8", "::1/128"]
idle_timeout = "30m"
max_tunnels_per_client = 0
TOML
"$WORK/balise" serve --config "$WORK/balise.toml" >"$WORK/balise.log" 2>&1 &
BALISE_PID=$!
PIDS+=($BALISE_PID)
disown $BALISE_PID

mkdir -p "$WORK/squid" && chmod 777 "$WORK/squid"
cat >"$WORK/squid/squid.conf" <<CONF
http_port $P_SQUID
acl loopback_src src 127.0.0.0/8
http_access allow loopback_src
http_access deny all
cache deny all
cache_mem 8 MB
access_log none
cache_store_log none
cache_log $WORK/squid/cache.log
pid_filename $WORK/squid/squid.pid
coredump_dir $WORK/squid
max_filedescriptors $FDS
shutdown_lifetime 1 seconds
via off
forwarded_for delete
CONF
squid -N -f "$WORK/squid/squid.conf" >"$WORK/squid/out.log" 2>&1 &
SQUID_PID=$!
PIDS+=($SQUID_PID)
disown $SQUID_PID

cat >"$WORK/tinyproxy.conf" <<CONF
Port ${P_TINY##*:}
Listen 127.0.0.1
Timeout 1800
MaxClients $(( IDLE + 100 ))
Allow 127.0.0.1
ConnectPort 18443
ConnectPort 18444
LogLevel Critical
LogFile "$WORK/tinyproxy.log"
PidFile "$WORK/tinyproxy.pid"
DisableViaHeader Yes
CONF
tinyproxy -d -c "$WORK/tinyproxy.conf" >"$WORK/tinyproxy.out" 2>&1 &
TINY_PID=$!
PIDS+=($TINY_PID)
disown $TINY_PID

# Wait until every proxy forwards a request.
for p in $P_BALISE $P_SQUID $P_TINY; do
	for _ in $(seq 1 120); do
		code=$(curl -s -o /dev/null -w '%{http_code}' -x "http://$p" "http://$H_HTTP/" || true)
		[[ $code == 200 ]] && break
		sleep 0.5
	done
	[[ $code == 200 ]] || { echo "proxy $p not ready (last status $code)" >&2; cat "$WORK"/*.log >&2; exit 1; }
done

sleep 2
rss() { awk '/VmRSS/ { printf "%.0f MB", $2 / 1024 }' "/proc/$1/status"; }
BALISE_REST=$(rss $BALISE_PID)

cat >"$WORK/abs.lua" <<LUA
wrk.method = "GET"
wrk.path = "http://localhost:${H_HTTP##*:}/"
wrk.headers["Host"] = "localhost:${H_HTTP##*:}"
LUA

plain() { # $1: proxy or "" for direct; prints "rate failures"
	local out
	if [[ -z $1 ]]; then
		out=$(wrk -t2 -c64 -d"$DURATION" "http://localhost:${H_HTTP##*:}/")
	else
		out=$(wrk -t2 -c64 -d"$DURATION" -s "$WORK/abs.lua" "http://$1/")
	fi
	local rate bad
	rate=$(awk '/Requests\/sec/ { printf "%.0f", $2 }' <<<"$out")
	bad=$(awk '/Non-2xx/ { n = $NF } /Socket errors/ { for (i = 4; i <= NF; i += 2) e += $i } END { print n + e }' <<<"$out")
	echo "${rate:-0} ${bad:-0}"
}

client() { # $1 proxy, rest: client flags; prints "rate failures"
	"$WORK/client" -proxy "$1" -cert "$WORK/origin.pem" -c "$CONC" -d "$DURATION" "${@:2}" |
		awk '{ for (i = 1; i <= NF; i++) { if ($i ~ /\/s$/) { r = $i; sub(/\/s$/, "", r) } if ($i ~ /^failed=/) { f = substr($i, 8) } if ($i == "MB/s") r = $(i-1) } } END { printf "%.0f %d\n", r, f }'
}

idle() { # $1 proxy, $2 pid
	local log=$WORK/idle.$2.log
	"$WORK/client" -proxy "$1" -target $H_HTTPS -cert "$WORK/origin.pem" -n "$IDLE" idle >"$log" 2>&1 &
	local cpid=$!
	for _ in $(seq 1 600); do
		grep -q 'tunnels open' "$log" && break
		sleep 0.5
	done
	sleep 3
	echo "$(rss "$2") with $(awk '/tunnels open/ { print $2 " open, " $5 " failed" }' "$log")"
	kill "$cpid" 2>/dev/null || true
	wait "$cpid" 2>/dev/null || true
	sleep 2
}

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

TARGETS="direct balise squid tinyproxy"
proxy_of() {
	case $1 in
	direct) echo "" ;;
	balise) echo $P_BALISE ;;
	squid) echo $P_SQUID ;;
	tinyproxy) echo $P_TINY ;;
	esac
}
declare -A VAL FAIL
record() { # key, "rate failures"
	local r f
	read -r r f <<<"$2"
	VAL[$1]+=" $r"
	FAIL[$1]=$(( ${FAIL[$1]:-0} + f ))
}
for round in $(seq 1 "$ROUNDS"); do
	echo "round $round/$ROUNDS..." >&2
	for t in $TARGETS; do
		p=$(proxy_of $t)
		record "$t:plain" "$(plain "$p")"
		record "$t:connect" "$(client "$p" -target $H_HTTPS connect)"
		record "$t:keepalive" "$(client "$p" -target $H_HTTPS keepalive)"
		record "$t:tunnel" "$(client "$p" -target $H_SRC tunnel)"
	done
done
show() { # key unit
	local v
	v=$(median <<<"${VAL[$1]}")
	echo "$v $2 (fail ${FAIL[$1]})"
}
printf '%-10s | %-22s | %-22s | %-22s | %-18s | %s\n' target "plain HTTP" "new CONNECT+TLS+1 req" "keep-alive HTTPS" "1 GB tunnel" "RSS idle tunnels"
for t in $TARGETS; do
	case $t in
	direct) pid="" ;;
	balise) pid=$BALISE_PID ;;
	squid) pid=$SQUID_PID ;;
	tinyproxy) pid=$TINY_PID ;;
	esac
	if [[ -n $pid ]]; then e=$(idle "$(proxy_of $t)" "$pid"); else e="-"; fi
	printf '%-10s | %-22s | %-22s | %-22s | %-18s | %s\n' "$t" "$(show $t:plain req/s)" "$(show $t:connect /s)" \
		"$(show $t:keepalive req/s)" "$(show $t:tunnel MB/s)" "$e"
done
echo "(median of $ROUNDS rounds of $DURATION; Balise RSS at rest with the list loaded: $BALISE_REST; open-file limit $FDS)"
