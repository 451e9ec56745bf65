#!/usr/bin/env bash
# Efficiency benchmark: Balise's own CPU time per request at a fixed
# offered rate, against Squid and a naive CONNECT relay (proxy) and
# against unbound and dnsmasq (DNS), all started side by side in one run
# on loopback. On a small shared machine throughput moves with the
# neighbours; the CPU seconds a server spends per request at a rate it
# sustains move far less, so these are the figures to compare, as ratios
# taken within one run.
#
#   tests/bench/efficiency/run.sh                     # about 3 minutes after the build
#   ROUNDS=3 tests/bench/efficiency/run.sh            # steadier, about 7 minutes
#   PROFILE=/tmp/prof tests/bench/efficiency/run.sh   # plus perf profiles of Balise
#   BASELINE=f563ad8 tests/bench/efficiency/run.sh    # this build against an earlier one, side by side
#
# Paths measured (Balise has a 1,000,000-domain list loaded throughout):
#   connect  new CONNECT to origin.bench.test + TLS handshake + one request
#            per connection. Balise resolves the name through a DNS server
#            (proxy.resolver, a local responder answering 127.0.0.1), as it
#            does in production; Squid reads it from a hosts file; the naive
#            relay (tests/bench/proxy/relay) maps it without resolving.
#   plain    plain HTTP GETs (absolute URI) over kept-alive client
#            connections to http://origin.bench.test; Balise and Squid.
#   dns      A queries, Zipf-distributed (exponent ZIPF_S) over a universe of
#            1,000,000 names, 30 % under listed domains; every target
#            blocks the same 1,000,000 domains (NXDOMAIN), caches up to
#            CACHE answers (unbound: byte sizes giving about as many
#            messages; dnsmasq: DNSMASQ_CACHE, see below) and forwards
#            misses to one local responder (tests/bench/dns/responder).
#            The caches are filled by a warm-up with another draw of the
#            same mix, so that they are full and evicting; rate limiting
#            is off in Balise.
# For each path and target: the CPU run sends a fixed rate (the server's
# utime+stime from /proc/PID/stat, its threads and children included,
# before and after, divided by the requests answered) and the max run sends
# as fast as the client can (req/s or qps). Targets take turns within each
# round; with ROUNDS > 1 the median is shown.
#
# Environment: DURATION (s per CPU run, default 10), MAX_DURATION (s per
#   max run, default 5), ROUNDS (default 1), CONNECT_RATE (default 300),
#   PLAIN_RATE (default 3000), DNS_RATE (default 10000), CACHE (default
#   100000), ZIPF_S (default 0.9), WARM_QUERIES (default 400000, at
#   most WARM_SECONDS per target, default 15), DNSMASQ_CACHE (default
#   10000: once full, a 100,000-entry dnsmasq 2.90 cache answers a few
#   dozen queries per second, so dnsmasq keeps its classic maximum),
#   CLIENTS/OUTSTANDING (dnsperf -c/-q of max runs, default 8/200),
#   PROFILE (a directory: then one more CPU run per path under
#   `perf record` of Balise; reports are written there and the tops printed).
# Needs: go, squid, unbound, unbound-control, dnsmasq, dnsperf, curl
#   (and perf for PROFILE). Not part of CI.
set -euo pipefail

DURATION=${DURATION:-10}
MAX_DURATION=${MAX_DURATION:-5}
ROUNDS=${ROUNDS:-1}
CONNECT_RATE=${CONNECT_RATE:-300}
PLAIN_RATE=${PLAIN_RATE:-3000}
DNS_RATE=${DNS_RATE:-10000}
CACHE=${CACHE:-100000}
ZIPF_S=${ZIPF_S:-0.9}
WARM_QUERIES=${WARM_QUERIES:-400000}
WARM_SECONDS=${WARM_SECONDS:-15}
DNSMASQ_CACHE=${DNSMASQ_CACHE:-10000}
CLIENTS=${CLIENTS:-8}
OUTSTANDING=${OUTSTANDING:-200}
PROFILE=${PROFILE:-}
LIST_SIZE=1000000

tools=(go squid unbound unbound-control dnsmasq dnsperf curl python3)
[[ -n $PROFILE ]] && tools+=(perf)
for tool in "${tools[@]}"; do
	command -v "$tool" >/dev/null || { echo "run.sh: $tool is not installed" >&2; exit 2; }
done

. "$(dirname "$0")/../lib.sh"
bench_work efficiency
trap 'echo "run.sh: line $LINENO failed: $BASH_COMMAND" >&2' ERR
ulimit -n 65536 2>/dev/null || true
LOAD_BEFORE=$(uptime)

P_HTTP=$(freeport tcp) P_HTTPS=$(freeport tcp) P_SRC=$(freeport tcp)
P_BALISE=$(freeport tcp) P_SQUID=$(freeport tcp) P_RELAY=$(freeport tcp) P_METRICS=$(freeport tcp)
P_NAMES=$(freeport udp) P_UP=$(freeport udp) P_BDNS=$(freeport udp) P_UNBOUND=$(freeport udp) P_DNSMASQ=$(freeport udp)
P_BASE=$(freeport tcp) P_BASE_METRICS=$(freeport tcp) P_BASE_DNS=$(freeport udp)
# BASELINE=REV adds "before", Balise built from git revision REV with the
# same configuration, to every table, so that a change is measured against
# what it replaces in one run (ratios "this ÷ before").
BASELINE=${BASELINE:-}
PROXIES="balise squid relay" PLAINS="balise squid" RESOLVERS="balise unbound dnsmasq"
if [[ -n $BASELINE ]]; then
	PROXIES="balise before squid relay" PLAINS="balise before squid" RESOLVERS="balise before unbound dnsmasq"
fi
ORIGIN=origin.bench.test

echo "== [${SECONDS}s] building" >&2
(cd "$ROOT" && go build -o "$WORK/balise" ./cmd/balise &&
	for t in proxy/origin proxy/client proxy/relay dns/responder dns/querygen; do
		go build -o "$WORK/${t#*/}" "./tests/bench/$t" || exit 1
	done)
if [[ -n $BASELINE ]]; then
	git -C "$ROOT" worktree add -q --detach "$WORK/before-src" "$BASELINE"
	(cd "$WORK/before-src" && go build -o "$WORK/balise-before" ./cmd/balise)
	git -C "$ROOT" worktree remove --force "$WORK/before-src"
fi

echo "== [${SECONDS}s] generating the list and the query files" >&2
"$WORK/querygen" -n "$WARM_QUERIES" -s "$ZIPF_S" -seed 1 -queries "$WORK/q-warm.txt" -list "$WORK/list.txt" -list-size $LIST_SIZE
# Each round (and the profile) draws new CPU and max query files from the
# same mix, so that the caches stay in the same steady state.
draw() { # seed: writes q-cpu.txt and q-max.txt
	"$WORK/querygen" -n $((DNS_RATE * DURATION * 11 / 10 + 1000)) -s "$ZIPF_S" -seed "$1" -queries "$WORK/q-cpu.txt" &&
		"$WORK/querygen" -n 1000000 -s "$ZIPF_S" -seed $(($1 + 1)) -queries "$WORK/q-max.txt"
}
awk '{ print "local-zone: \"" $1 ".\" always_nxdomain" }' "$WORK/list.txt" >"$WORK/unbound-zones.conf"
awk '{ print "address=/" $1 "/" }' "$WORK/list.txt" >"$WORK/dnsmasq-list.conf"
echo "127.0.0.1 $ORIGIN" >"$WORK/hosts"

# Unbound's caches are sized in bytes: about 260 bytes per message and
# 500 per RRset entry (measured with unbound-control stats on this mix).
UB_MSG=$((CACHE * 260 / 1048576 + 1))m
UB_RRSET=$((CACHE * 500 / 1048576 + 1))m

cat >"$WORK/balise.toml" <<EOF
timezone = "UTC"
default_action = "block"

[[list]]
name = "bench-list"
category = "networking"
files = ["$WORK/list.txt"]

[metrics]
listen = "127.0.0.1:$P_METRICS"

[proxy]
listen = "127.0.0.1:$P_BALISE"
connect_ports = [$P_HTTPS]
resolver = "127.0.0.1:$P_NAMES"
allow_destinations = ["127.0.0.0/8", "::1/128"]
max_tunnels_per_client = 0

[dns]
listen = "127.0.0.1:$P_BDNS"
upstreams = ["127.0.0.1:$P_UP"]
rate_limit = 0
cache_size = $CACHE
EOF

sed -e "s/127.0.0.1:$P_METRICS\"/127.0.0.1:$P_BASE_METRICS\"/" -e "s/127.0.0.1:$P_BALISE\"/127.0.0.1:$P_BASE\"/" \
	-e "s/127.0.0.1:$P_BDNS\"/127.0.0.1:$P_BASE_DNS\"/" "$WORK/balise.toml" >"$WORK/before.toml"

mkdir -p "$WORK/squid" && chmod 777 "$WORK/squid"
cat >"$WORK/squid/squid.conf" <<EOF
http_port 127.0.0.1:$P_SQUID
acl loopback_src src 127.0.0.0/8
http_access allow loopback_src
http_access deny all
hosts_file $WORK/hosts
cache deny all
cache_mem 8 MB
access_log none
cache_store_log none
cache_log $WORK/squid/cache.log
pid_filename $WORK/squid/squid.pid
coredump_dir $WORK/squid
visible_hostname bench
pinger_enable off
shutdown_lifetime 1 seconds
via off
forwarded_for delete
EOF

cat >"$WORK/unbound.conf" <<EOF
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
	extended-statistics: yes
	num-threads: 2
	so-reuseport: yes
	access-control: 127.0.0.0/8 allow
	do-not-query-localhost: no
	module-config: "iterator"
	# Unbound answers names under test. (RFC 6761) itself by default.
	local-zone: "test." nodefault
	msg-cache-size: $UB_MSG
	rrset-cache-size: $UB_RRSET
	include: "$WORK/unbound-zones.conf"
remote-control:
	control-enable: yes
	control-interface: "$WORK/unbound.ctl"
	control-use-cert: no
forward-zone:
	name: "."
	forward-addr: 127.0.0.1@$P_UP
EOF

echo "== [${SECONDS}s] starting the targets" >&2
start() { # name command...: runs in the background, logs to $WORK/name.log
	local name=$1
	shift
	"$@" >"$WORK/$name.log" 2>&1 &
	PIDS+=($!)
	eval "PID_${name}=$!"
	disown $!
}
start origin "$WORK/origin" -http 127.0.0.1:$P_HTTP -https 127.0.0.1:$P_HTTPS -source 127.0.0.1:$P_SRC -cert "$WORK/origin.pem" -bytes 1
start names "$WORK/responder" -listen 127.0.0.1:$P_NAMES -a 127.0.0.1
start upstream "$WORK/responder" -listen 127.0.0.1:$P_UP -reuseport 2
start balise "$WORK/balise" serve --config "$WORK/balise.toml" --log-format json
[[ -z $BASELINE ]] || start before "$WORK/balise-before" serve --config "$WORK/before.toml" --log-format json
start squid squid -N -f "$WORK/squid/squid.conf"
start relay "$WORK/relay" -listen 127.0.0.1:$P_RELAY -hosts "$ORIGIN=127.0.0.1"
start unbound unbound -d -c "$WORK/unbound.conf"
start dnsmasq dnsmasq --keep-in-foreground --no-resolv --no-hosts --no-poll --port=$P_DNSMASQ \
	--listen-address=127.0.0.1 --bind-interfaces --user=root --pid-file= --cache-size="$DNSMASQ_CACHE" \
	--dns-forward-max=5000 --server=127.0.0.1#$P_UP --conf-file="$WORK/dnsmasq-list.conf" \
	--log-facility="$WORK/dnsmasq-stats.log"

alive() { # name
	local pid
	pid=$(eval echo "\$PID_$1")
	kill -0 "$pid" 2>/dev/null && return 0
	echo "run.sh: $1 exited; its log:" >&2
	tail -20 "$WORK/$1.log" >&2
	exit 1
}
ready() { # name command...: retries the command for 60 s
	local name=$1
	shift
	for _ in $(seq 1 120); do
		alive "$name"
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.5
	done
	echo "run.sh: $name is not ready; its log:" >&2
	tail -20 "$WORK/$name.log" >&2
	exit 1
}
echo "$ORIGIN A" >"$WORK/one.txt"
echo "www.bench0000001.example A" >>"$WORK/one.txt"
dns_ok() { # port: both queries answered
	dnsperf -s 127.0.0.1 -p "$1" -d "$WORK/one.txt" -n 1 -t 1 2>/dev/null | grep -q 'Queries completed: *2 '
}
via_proxy() { # proxy: plain HTTP and a tunnel to the origin by name
	curl -sf -o /dev/null -x "http://$1" "http://$ORIGIN:$P_HTTP/" &&
		curl -sf -o /dev/null --cacert "$WORK/origin.pem" -p -x "http://$1" "https://$ORIGIN:$P_HTTPS/"
}
via_relay() { curl -sf -o /dev/null --cacert "$WORK/origin.pem" -p -x "http://$1" "https://$ORIGIN:$P_HTTPS/"; }
ready origin test -s "$WORK/origin.pem"
ready names dns_ok $P_NAMES
ready upstream dns_ok $P_UP
ready balise via_proxy 127.0.0.1:$P_BALISE
ready squid via_proxy 127.0.0.1:$P_SQUID
ready relay via_relay 127.0.0.1:$P_RELAY
ready balise dns_ok $P_BDNS
[[ -z $BASELINE ]] || { ready before via_proxy 127.0.0.1:$P_BASE; ready before dns_ok $P_BASE_DNS; }
ready unbound dns_ok $P_UNBOUND
ready dnsmasq dns_ok $P_DNSMASQ


CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { # pid: utime+stime of the process, its threads and descendants
	# Processes come and go while cat reads: ignore the ones that vanish.
	{ cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v root="$1" '{
		pid = $1; rest = $0; sub(/^.*\) /, "", rest); split(rest, f, " ")
		parent[pid] = f[2]; t[pid] = f[12] + f[13]
	} END {
		in_tree[root] = 1; grew = 1
		while (grew) { grew = 0; for (p in parent) if (!(p in in_tree) && (parent[p] in in_tree)) { in_tree[p] = 1; grew = 1 } }
		for (p in in_tree) s += t[p]
		print s + 0
	}'
}
pid_of() { eval echo "\$PID_$1"; }
proxy_of() {
	case $1 in
	balise) echo 127.0.0.1:$P_BALISE ;;
	before) echo 127.0.0.1:$P_BASE ;;
	squid) echo 127.0.0.1:$P_SQUID ;;
	relay) echo 127.0.0.1:$P_RELAY ;;
	esac
}
dnsport_of() {
	case $1 in
	balise) echo $P_BDNS ;;
	before) echo $P_BASE_DNS ;;
	unbound) echo $P_UNBOUND ;;
	dnsmasq) echo $P_DNSMASQ ;;
	esac
}

for t in $RESOLVERS; do
	out=$(dnsperf -s 127.0.0.1 -p "$(dnsport_of $t)" -d "$WORK/one.txt" -n 1 -t 1 2>&1)
	grep -q 'NXDOMAIN 1 ' <<<"$out" || { echo "run.sh: $t does not block the list: $out" >&2; exit 1; }
done

declare -A V # key "path:target:field" -> space-separated values over rounds
add() { V[$1]+=" $2"; }

# client PATH TARGET RATE SECONDS: prints "done_per_s ok failed"
client() {
	local mode target conc=32
	case $1 in
	connect) mode=connect target=$ORIGIN:$P_HTTPS ;;
	plain) mode=plain target=$ORIGIN:$P_HTTP conc=64 ;;
	esac
	"$WORK/client" -proxy "$(proxy_of "$2")" -target "$target" -cert "$WORK/origin.pem" \
		-c $conc -d "$4s" -rate "$3" "$mode" |
		awk '{ for (i = 1; i <= NF; i++) { if ($i ~ /\/s$/) { r = $i; sub(/\/s$/, "", r) }
			if ($i ~ /^ok=/) o = substr($i, 4); if ($i ~ /^failed=/) f = substr($i, 8) } }
			END { printf "%.0f %d %d\n", r, o, f }'
}

# cpu_run KEY PID COMMAND...: runs the command (which prints "rate ok
# failed ..."), records them and the CPU ms per 1,000 answers.
cpu_run() {
	local key=$1 pid=$2 t0 t1 out r ok f
	shift 2
	t0=$(cpu_ticks "$pid")
	out=$("$@")
	t1=$(cpu_ticks "$pid")
	read -r r ok f _ <<<"$out"
	add "$key:rate" "$r"
	add "$key:ok" "$ok"
	add "$key:failed" "$f"
	add "$key:cpu" "$(awk -v d=$((t1 - t0)) -v n="$ok" -v hz="$CLK_TCK" 'BEGIN { if (n > 0) printf "%.1f", d * 1000 / hz / n * 1000; else print "nan" }')"
	echo "   $key: $r/s, $ok answered, $f failed or lost, $((t1 - t0)) CPU ticks" >&2
}

# dnsperf_run PORT FILE [args...]: prints "qps completed lost nxdomain_pct"
dnsperf_run() {
	local port=$1 file=$2
	shift 2
	dnsperf -s 127.0.0.1 -p "$port" -d "$file" -c "$CLIENTS" -T 2 -q "$OUTSTANDING" "$@" 2>&1 |
		awk '/Queries per second/ { q = $4 } /Queries completed/ { c = $3 } /Queries lost/ { l = $3 }
			/Response codes/ { for (i = 1; i <= NF; i++) if ($i == "NXDOMAIN") { x = $(i + 1) } }
			END { printf "%.0f %d %d %.1f\n", q, c, l, (c > 0 ? x * 100 / c : 0) }'
}
dns_cpu() { # port: fixed-rate run on the CPU file; prints "qps completed lost nxdomain_pct"
	dnsperf_run "$1" "$WORK/q-cpu.txt" -Q "$DNS_RATE" -l "$DURATION"
}

# Cache misses (queries forwarded upstream) per target, around the
# fixed-rate DNS run.
balise_misses() { curl -s "http://127.0.0.1:${1:-$P_METRICS}/metrics" | awk '/^balise_dns_cache_misses_total/ { print $2 }'; }
balise_cache() { curl -s "http://127.0.0.1:$P_METRICS/metrics" | awk '/^balise_dns_cache_entries/ { print $2 }'; }
unbound_stat() { unbound-control -c "$WORK/unbound.conf" stats_noreset 2>/dev/null | awk -F= -v k="$1" '$1 == k { print $2 }'; }
dnsmasq_forwarded() {
	kill -USR1 "$PID_dnsmasq"
	sleep 0.5
	awk '/queries forwarded/ { for (i = 1; i <= NF; i++) if ($i == "forwarded") v = $(i + 1) } END { sub(/,/, "", v); print v + 0 }' "$WORK/dnsmasq-stats.log"
}
misses() { # target
	case $1 in
	balise) balise_misses ;;
	before) balise_misses "$P_BASE_METRICS" ;;
	unbound) unbound_stat total.num.cachemiss ;;
	dnsmasq) dnsmasq_forwarded ;;
	esac
}

echo "== [${SECONDS}s] warming up: proxies (1 s each), DNS caches ($WARM_QUERIES queries or $WARM_SECONDS s each)" >&2
for t in $PROXIES; do
	client connect $t "$CONNECT_RATE" 1 >/dev/null
	[[ $t == relay ]] || client plain $t "$PLAIN_RATE" 1 >/dev/null
done
for t in $RESOLVERS; do
	dnsperf_run "$(dnsport_of $t)" "$WORK/q-warm.txt" -n 1 -l "$WARM_SECONDS" >/dev/null
done
RSS_BALISE=$(awk '/VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$PID_balise/status")

for round in $(seq 1 "$ROUNDS"); do
	echo "== [${SECONDS}s] round $round/$ROUNDS" >&2
	draw $((2 * round))
	for t in $PROXIES; do
		cpu_run "connect:$t" "$(pid_of $t)" client connect $t "$CONNECT_RATE" "$DURATION"
		read -r r _ f <<<"$(client connect $t 0 "$MAX_DURATION")"
		add "connect:$t:max" "$r"
		add "connect:$t:maxfailed" "$f"
	done
	for t in $PLAINS; do
		cpu_run "plain:$t" "$(pid_of $t)" client plain $t "$PLAIN_RATE" "$DURATION"
		read -r r _ f <<<"$(client plain $t 0 "$MAX_DURATION")"
		add "plain:$t:max" "$r"
		add "plain:$t:maxfailed" "$f"
	done
	for t in $RESOLVERS; do
		m0=$(misses $t)
		cpu_run "dns:$t" "$(pid_of $t)" dns_cpu "$(dnsport_of $t)"
		m1=$(misses $t)
		add "dns:$t:misses" "$(awk -v a="$m0" -v b="$m1" 'BEGIN { printf "%.0f", b - a }')"
		echo "   dns:$t: forwarded $m0 -> $m1" >&2
	done
	for t in $RESOLVERS; do
		read -r q c l x <<<"$(dnsperf_run "$(dnsport_of $t)" "$WORK/q-max.txt" -l "$MAX_DURATION")"
		add "dns:$t:max" "$q"
		add "dns:$t:maxlost" "$l"
		add "dns:$t:nx" "$x"
	done
done
CACHE_BALISE=$(balise_cache)
CACHE_UNBOUND="$(unbound_stat msg.cache.count) messages, $(unbound_stat rrset.cache.count) RRsets"
LOAD_AFTER=$(uptime)

med() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { if (NR) print a[int((NR + 1) / 2)]; else print "nan" }'; }
get() { med <<<"${V[$1]:-}"; }
sum() { tr ' ' '\n' | awk '{ s += $1 } END { printf "%.0f", s }' <<<"${V[$1]:-}"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0 && a == a + 0) printf "%.2f", a / b; else print "n/a" }'; }

echo
echo "Balise efficiency benchmark: $(nproc) CPUs, $ROUNDS round(s), CPU runs of ${DURATION} s at a fixed rate, max runs of ${MAX_DURATION} s"
echo "Balise $(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo '?'), $(squid -v | head -1 | sed 's/Squid Cache: Version/Squid/'), $(unbound -V | head -1 | sed 's/Version/unbound/'), $(dnsmasq --version | head -1 | awk '{ print "dnsmasq", $3 }'), 1,000,000 listed domains; Balise RSS after warm-up ${RSS_BALISE} MiB"
echo "load before: ${LOAD_BEFORE##*load average: }; after: ${LOAD_AFTER##*load average: }"
echo
echo "New CONNECT + TLS + 1 request to $ORIGIN (CPU at $CONNECT_RATE/s offered; max: 32 workers)"
printf "%-8s %10s %8s %14s %10s %8s\n" target "done/s" failed "CPU ms/1000" "max req/s" failed
for t in $PROXIES; do
	printf "%-8s %10s %8s %14s %10s %8s\n" $t "$(get connect:$t:rate)" "$(sum connect:$t:failed)" "$(get connect:$t:cpu)" \
		"$(get connect:$t:max)" "$(sum connect:$t:maxfailed)"
done
echo "Balise ÷ Squid, CPU per connection: $(ratio "$(get connect:balise:cpu)" "$(get connect:squid:cpu)");" \
	"Balise ÷ naive relay: $(ratio "$(get connect:balise:cpu)" "$(get connect:relay:cpu)");" \
	"max rate Balise ÷ Squid: $(ratio "$(get connect:balise:max)" "$(get connect:squid:max)")"
[[ -z $BASELINE ]] || echo "This build ÷ before ($BASELINE): CPU per connection $(ratio "$(get connect:balise:cpu)" "$(get connect:before:cpu)"), max rate $(ratio "$(get connect:balise:max)" "$(get connect:before:max)")"
echo
echo "Plain HTTP keep-alive to $ORIGIN (CPU at $PLAIN_RATE/s offered; max: 64 connections)"
printf "%-8s %10s %8s %14s %10s %8s\n" target "done/s" failed "CPU ms/1000" "max req/s" failed
for t in $PLAINS; do
	printf "%-8s %10s %8s %14s %10s %8s\n" $t "$(get plain:$t:rate)" "$(sum plain:$t:failed)" "$(get plain:$t:cpu)" \
		"$(get plain:$t:max)" "$(sum plain:$t:maxfailed)"
done
echo "Balise ÷ Squid, CPU per request: $(ratio "$(get plain:balise:cpu)" "$(get plain:squid:cpu)");" \
	"max rate Balise ÷ Squid: $(ratio "$(get plain:balise:max)" "$(get plain:squid:max)")"
[[ -z $BASELINE ]] || echo "This build ÷ before ($BASELINE): CPU per request $(ratio "$(get plain:balise:cpu)" "$(get plain:before:cpu)"), max rate $(ratio "$(get plain:balise:max)" "$(get plain:before:max)")"
echo
echo "DNS, Zipf s=$ZIPF_S over 1,000,000 names, 30 % blocked, cache $CACHE (CPU at $DNS_RATE qps offered; max: dnsperf -c $CLIENTS -q $OUTSTANDING)"
printf "%-8s %10s %6s %14s %14s %10s %6s %7s\n" target "done qps" lost "CPU ms/1000" "misses/1000" "max qps" lost "NXD %"
for t in $RESOLVERS; do
	n=$(get dns:$t:ok)
	printf "%-8s %10s %6s %14s %14s %10s %6s %7s\n" $t "$(get dns:$t:rate)" "$(sum dns:$t:failed)" "$(get dns:$t:cpu)" \
		"$(awk -v m="$(get dns:$t:misses)" -v n="$n" 'BEGIN { if (n > 0) printf "%.0f", m * 1000 / n; else print "n/a" }')" \
		"$(get dns:$t:max)" "$(sum dns:$t:maxlost)" "$(get dns:$t:nx)"
done
best=unbound
awk -v a="$(get dns:dnsmasq:max)" -v b="$(get dns:unbound:max)" 'BEGIN { exit !(a > b) }' && best=dnsmasq
echo "Balise ÷ unbound, CPU per query: $(ratio "$(get dns:balise:cpu)" "$(get dns:unbound:cpu)");" \
	"Balise ÷ dnsmasq: $(ratio "$(get dns:balise:cpu)" "$(get dns:dnsmasq:cpu)");" \
	"max qps Balise ÷ $best (the better): $(ratio "$(get dns:balise:max)" "$(get dns:$best:max)")"
[[ -z $BASELINE ]] || echo "This build ÷ before ($BASELINE): CPU per query $(ratio "$(get dns:balise:cpu)" "$(get dns:before:cpu)"), max qps $(ratio "$(get dns:balise:max)" "$(get dns:before:max)")"
echo "Cache entries at the end: Balise $CACHE_BALISE, unbound $CACHE_UNBOUND ($UB_MSG + $UB_RRSET), dnsmasq $DNSMASQ_CACHE (cache-size)"
echo "(CPU ms/1000: milliseconds of the server's CPU time per 1,000 answered requests; ÷ below 1 means Balise spends less)"

if [[ -n $PROFILE ]]; then
	mkdir -p "$PROFILE"
	echo "== [${SECONDS}s] profiling Balise (perf record, one CPU run per path)" >&2
	draw 1000
	for path in connect plain dns; do
		perf record -q -F 499 -g -p "$PID_balise" -o "$PROFILE/$path.data" >/dev/null 2>&1 &
		PERF=$!
		sleep 0.5
		case $path in
		dns) dns_cpu $P_BDNS >/dev/null ;;
		*) client $path balise "$( [[ $path == connect ]] && echo "$CONNECT_RATE" || echo "$PLAIN_RATE")" "$DURATION" >/dev/null ;;
		esac
		kill -INT $PERF
		wait $PERF || true
		perf report -i "$PROFILE/$path.data" --no-children --sort symbol --stdio -g none 2>/dev/null >"$PROFILE/$path.self.txt"
		perf report -i "$PROFILE/$path.data" --children --sort symbol --stdio -g none 2>/dev/null >"$PROFILE/$path.children.txt"
		echo
		echo "Balise profile, $path: self time, top 12 (kernel [k], Go [.])"
		awk '/^ +[0-9.]+%/ && n < 12 { print "   ", $1, $2, $3; n++ }' "$PROFILE/$path.self.txt"
		echo "Balise profile, $path: Go functions including callees, top 25 (runtime entry points left out)"
		awk '/^ +[0-9.]+%/ && $3 == "[.]" && $4 !~ /goexit|mstart|mcall|gowrap|systemstack|^runtime\.(schedule|park_m)$/ && n < 25 { print "   ", $1, $4; n++ }' \
			"$PROFILE/$path.children.txt"
	done
fi
