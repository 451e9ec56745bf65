#!/bin/sh
# Policy routing for Balise's TPROXY mode (nftables-tproxy.nft,
# iptables-tproxy.rules): packets marked TPROXY_MARK are delivered to a
# local socket (Balise's IP_TRANSPARENT listener) instead of being
# forwarded.
#
#   sh tproxy-routing.sh add     # once per boot, before Balise starts
#   sh tproxy-routing.sh del
#
# TPROXY_MARK (default 0x1) must match the rule set; TPROXY_TABLE (default
# 100) is a routing table unused on this gateway. IPv6 is configured when
# the kernel has it.
set -eu

MARK=${TPROXY_MARK:-0x1}
TABLE=${TPROXY_TABLE:-100}

case ${1:-} in
add)
	ip -4 rule add fwmark "$MARK/$MARK" lookup "$TABLE"
	ip -4 route add local 0.0.0.0/0 dev lo table "$TABLE"
	if [ -e /proc/net/if_inet6 ]; then
		ip -6 rule add fwmark "$MARK/$MARK" lookup "$TABLE"
		ip -6 route add local ::/0 dev lo table "$TABLE"
	fi
	;;
del)
	ip -4 rule del fwmark "$MARK/$MARK" lookup "$TABLE" || true
	ip -4 route flush table "$TABLE" || true
	if [ -e /proc/net/if_inet6 ]; then
		ip -6 rule del fwmark "$MARK/$MARK" lookup "$TABLE" || true
		ip -6 route flush table "$TABLE" || true
	fi
	;;
*)
	echo "usage: $0 add|del" >&2
	exit 2
	;;
esac
