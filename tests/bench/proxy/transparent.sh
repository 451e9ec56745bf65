#!/usr/bin/env bash
# Transparent-mode benchmark across network namespaces (needs root):
# a workstation, a gateway running Balise and an "internet" with the
# benchmark origin, joined by veth pairs. Measures new TLS connections per
# second (connect + handshake + one request) and MB/s through one
# connection, for: plain forwarding (no Balise), Balise transparent
# (iptables REDIRECT), and Balise as an explicit proxy on the gateway.
#
#   sudo tests/bench/proxy/transparent.sh
#   DURATION=3s BYTES=268435456 sudo tests/bench/proxy/transparent.sh
set -euo pipefail

DURATION=${DURATION:-10s}
CONC=${CONC:-32}
BYTES=${BYTES:-1073741824}
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
WORK=$(mktemp -d /tmp/balise-tbench.XXXXXX)
SFX=$(printf '%04x' $(( $$ & 0xffff )))
WS=tws$SFX GW=tgw$SFX IN=tin$SFX
PIDS=()

cleanup() {
	for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
	sleep 0.5
	for ns in $WS $GW $IN; do ip netns del "$ns" 2>/dev/null || true; done
	rm -rf "$WORK"
}
trap cleanup EXIT

[[ $(id -u) == 0 ]] || { echo "needs root" >&2; exit 1; }

echo "building..." >&2
(cd "$ROOT" && go build -o "$WORK/balise" ./cmd/balise &&
	go build -o "$WORK/origin" ./tests/bench/proxy/origin &&
	go build -o "$WORK/client" ./tests/bench/proxy/client)

for ns in $WS $GW $IN; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip link add w$SFX netns $WS type veth peer name gw$SFX netns $GW
ip link add gi$SFX netns $GW type veth peer name i$SFX netns $IN
ip -n $WS addr add 10.71.0.2/24 dev w$SFX
ip -n $GW addr add 10.71.0.1/24 dev gw$SFX
ip -n $GW addr add 10.72.0.1/24 dev gi$SFX
ip -n $IN addr add 10.72.0.2/24 dev i$SFX
for l in "$WS w$SFX" "$GW gw$SFX" "$GW gi$SFX" "$IN i$SFX"; do set -- $l; ip -n "$1" link set "$2" up; done
ip -n $WS route add default via 10.71.0.1
ip -n $IN route add default via 10.72.0.1
ip netns exec $GW sysctl -q -w net.ipv4.ip_forward=1

ip netns exec $IN "$WORK/origin" -http 10.72.0.2:80 -https 10.72.0.2:443 -source 10.72.0.2:4444 \
	-cert "$WORK/origin.pem" -bytes "$BYTES" >"$WORK/origin.log" 2>&1 &
PIDS+=($!)

cat >"$WORK/balise.toml" <<TOML
timezone = "UTC"
[metrics]
listen = "127.0.0.1:19465"
[dns]
listen = []
[proxy]
listen = "10.71.0.1:3128"
allowed_clients = ["10.71.0.0/24"]
connect_ports = [443, 4444]
opaque_ports = [4444]
transparent_http = "0.0.0.0:3129"
transparent_https = "0.0.0.0:3130"
max_tunnels_per_client = 0
TOML
ip netns exec $GW "$WORK/balise" serve --config "$WORK/balise.toml" >"$WORK/balise.log" 2>&1 &
PIDS+=($!)
sleep 3

client() { ip netns exec $WS "$WORK/client" -cert "$WORK/origin.pem" -c "$CONC" -d "$DURATION" "$@"; }
measure() {
	local a b
	a=$(client "$@" -target 10.72.0.2:443 connect | sed 's/^connect: //')
	b=$(client "$@" -target 10.72.0.2:4444 tunnel | sed 's/.* = //')
	printf '%-24s | %-30s | %s\n' "$LABEL" "$a" "$b"
}

printf '%-24s | %-30s | %s\n' path "new TLS conn + 1 req" "one connection"
LABEL="forwarded, no Balise" measure
ip netns exec $GW iptables -t nat -A PREROUTING -i gw$SFX -p tcp --dport 443 -j REDIRECT --to-ports 3130
ip netns exec $GW iptables -t nat -A PREROUTING -i gw$SFX -p tcp --dport 4444 -j REDIRECT --to-ports 3130
LABEL="Balise transparent" measure
ip netns exec $GW iptables -t nat -F PREROUTING
LABEL="Balise explicit" measure -proxy 10.71.0.1:3128
