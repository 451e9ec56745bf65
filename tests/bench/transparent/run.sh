#!/usr/bin/env bash
# Transparent-mode benchmark across network namespaces, with the gateway
# rule sets of deploy/gateway/ (needs root, ip, nft).
#
# Three namespaces joined by veth pairs, documentation addresses only:
# a workstation (192.0.2.10), a gateway running Balise (192.0.2.1,
# 198.51.100.1) and an "internet" with the benchmark origin
# (tests/bench/proxy/origin: HTTPS on 203.0.113.10:443, a byte source on
# 203.0.113.20:443). The benchmark client (tests/bench/proxy/client) runs
# in the workstation and measures, for each path:
#
#   new conn/s   TCP connect + TLS handshake + one HTTPS request per
#                connection, CONC workers for DURATION (failures counted)
#   tunnel MB/s  BYTES read through one connection
#
# Paths: forwarded by the gateway without Balise; Balise transparent with
# nftables-redirect.nft; Balise transparent with nftables-tproxy.nft; Balise
# as the explicit proxy (CONNECT to 192.0.2.1:3128) on the same gateway.
#
#   sudo tests/bench/transparent/run.sh
#   DURATION=3s CONC=16 BYTES=268435456 sudo tests/bench/transparent/run.sh
set -euo pipefail

DURATION=${DURATION:-10s}
CONC=${CONC:-32}
BYTES=${BYTES:-1073741824}
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
GWDIR=$ROOT/deploy/gateway
WORK=$(mktemp -d /tmp/balise-gwbench.XXXXXX)
SFX=$(printf '%x' $(( $$ & 0xffff )))
WS=bb-ws-$SFX GW=bb-gw-$SFX IN=bb-in-$SFX
WSIF=gws$SFX
PIDS=()

BALISE_PID=
cleanup() {
	for pid in "${PIDS[@]}" $BALISE_PID; do
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	for ns in "$WS" "$GW" "$IN"; do ip netns del "$ns" 2>/dev/null || true; done
	rm -rf "$WORK"
}
trap cleanup EXIT

[[ $(id -u) == 0 ]] || { echo "needs root" >&2; exit 1; }
for tool in ip nft go; do command -v $tool >/dev/null || { echo "needs $tool" >&2; exit 1; }; done

echo "building..." >&2
(cd "$ROOT" && go build -o "$WORK/balise" ./cmd/balise &&
	go build -o "$WORK/origin" ./tests/bench/proxy/origin &&
	go build -o "$WORK/client" ./tests/bench/proxy/client)

for ns in "$WS" "$GW" "$IN"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip link add wse$SFX netns "$WS" type veth peer name "$WSIF" netns "$GW"
ip link add gwo$SFX netns "$GW" type veth peer name ine$SFX netns "$IN"
ip -n "$WS" addr add 192.0.2.10/24 dev wse$SFX
ip -n "$GW" addr add 192.0.2.1/24 dev "$WSIF"
ip -n "$GW" addr add 198.51.100.1/24 dev gwo$SFX
ip -n "$IN" addr add 198.51.100.2/24 dev ine$SFX
ip -n "$IN" addr add 203.0.113.10/32 dev lo
ip -n "$IN" addr add 203.0.113.20/32 dev lo
ip -n "$WS" link set wse$SFX up
ip -n "$GW" link set "$WSIF" up
ip -n "$GW" link set gwo$SFX up
ip -n "$IN" link set ine$SFX up
ip -n "$WS" route add default via 192.0.2.1
ip -n "$GW" route add 203.0.113.0/24 via 198.51.100.2
ip -n "$IN" route add 192.0.2.0/24 via 198.51.100.1
ip netns exec "$GW" sysctl -q -w net.ipv4.ip_forward=1

ip netns exec "$IN" "$WORK/origin" -http 203.0.113.10:80 -https 203.0.113.10:443 \
	-source 203.0.113.20:443 -cert "$WORK/origin.pem" -bytes "$BYTES" >"$WORK/origin.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do [[ -s $WORK/origin.pem ]] && break; sleep 0.1; done

# render FILE: the rule set with this laboratory's definitions (Balise runs
# as root here, so root is the account the loop guard exempts).
render() {
	sed -e "s/^define WS_IF = .*/define WS_IF = \"$WSIF\"/" \
		-e 's/^define BALISE_USER = .*/define BALISE_USER = "root"/' "$GWDIR/$1"
}

balise() { # balise MODE: (re)start Balise on the gateway
	[[ -n $BALISE_PID ]] && { kill "$BALISE_PID"; wait "$BALISE_PID" 2>/dev/null || true; }
	cat >"$WORK/balise.toml" <<TOML
timezone = "UTC"
[metrics]
listen = "127.0.0.1:9464"
[dns]
listen = []
[proxy]
listen = "192.0.2.1:3128"
allowed_clients = ["192.0.2.0/24"]
transparent_http = "[::]:3129"
transparent_https = "[::]:3130"
transparent_mode = "$1"
max_tunnels_per_client = 0
TOML
	ip netns exec "$GW" "$WORK/balise" serve --config "$WORK/balise.toml" >"$WORK/balise-$1.log" 2>&1 &
	BALISE_PID=$!
	for _ in $(seq 100); do grep -q '"started"\|msg=started' "$WORK/balise-$1.log" && return; sleep 0.1; done
	echo "balise did not start:" >&2; cat "$WORK/balise-$1.log" >&2; exit 1
}

client() { ip netns exec "$WS" "$WORK/client" -cert "$WORK/origin.pem" -c "$CONC" -d "$DURATION" "$@"; }
# decided MODE: connections Balise decided in that mode so far (proves the
# path went through Balise; "-" without Balise).
decided() {
	[[ -z $BALISE_PID ]] && { echo -; return; }
	ip netns exec "$GW" curl -s http://127.0.0.1:9464/metrics |
		awk -v m="mode=\"$1\"" 'index($0, "balise_proxy_requests_total{") == 1 && index($0, m) { s += $NF } END { print s + 0 }'
}
measure() { # measure LABEL MODE [client flags]
	local label=$1 mode=$2 a b before
	shift 2
	before=$(decided "$mode")
	a=$(client "$@" -target 203.0.113.10:443 connect | sed 's/^connect: //')
	b=$(client "$@" -target 203.0.113.20:443 tunnel | sed 's/.* = //')
	printf '%-30s | %-32s | %-10s | %s\n' "$label" "$a" "$b" "$before -> $(decided "$mode")"
}

printf 'duration %s, %d workers, %d bytes through one tunnel\n' "$DURATION" "$CONC" "$BYTES"
printf '%-30s | %-32s | %-10s | %s\n' path "new conn + TLS + 1 request" "one tunnel" "decided by Balise"
measure "forwarded, no Balise" none

balise redirect
render nftables-redirect.nft >"$WORK/redirect.nft"
ip netns exec "$GW" nft -f "$WORK/redirect.nft"
measure "Balise transparent (REDIRECT)" transparent
measure "Balise explicit (CONNECT)" explicit -proxy 192.0.2.1:3128
ip netns exec "$GW" nft delete table inet balise_gateway

balise tproxy
ip netns exec "$GW" sh "$GWDIR/tproxy-routing.sh" add
render nftables-tproxy.nft >"$WORK/tproxy.nft"
ip netns exec "$GW" nft -f "$WORK/tproxy.nft"
measure "Balise transparent (TPROXY)" transparent
