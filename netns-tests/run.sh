#!/usr/bin/env bash
# anonnet end-to-end tests in network namespaces, in the shape of the Linux kernel's
# tools/testing/selftests/wireguard/netns.sh: one script builds a client, two relays,
# an exit and an "internet" (router + servers) over veth links (see lib.sh), runs
# named cases that each print "PASS name" or "FAIL name: reason", removes everything
# it created (trap on EXIT, INT, TERM), and ends with exactly one line
# "N passed, M failed" (exit status 1 if M > 0).
#
# Usage (root): netns-tests/run.sh [--only REGEX] [--keep-logs]
#   --only REGEX   run only the cases whose name matches REGEX (extended regex);
#                  what they need (gateways, a running `anonnet up`) is started anyway
#   --keep-logs    keep the logs directory (they are kept anyway when a case fails)
# ANONNET_BIN=/path/to/anonnet, ANONNET_HOSTILE=/path/to/hostile_client and
# ANONNET_FLOOD=/path/to/handshake_flood override the binaries (default: cargo build
# --release --bin anonnet --example hostile_client --example handshake_flood).
# ANONNET_FLOOD_SECS (default 300) is how long the handshake-flood case floods.
# Addresses: 198.18.0.0/15, 2001:db8::/32 (underlay), 100.64.0.0/10, fd00::/8
# (tunnel), 10.0.0.1 (an unreachable policy target). Nothing runs in the machine's
# own network namespace.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=netns-tests/lib.sh
. "$HERE/lib.sh"
AN_METRICS=127.0.0.1:9477
# shellcheck source=netns-tests/cases.sh
. "$HERE/cases.sh"

cases_args 2,17 "$@"
cases_preflight "is the testbed up? scripts/testbed.sh down"
cases_start anonnet-netns www '*.bin' anonnet

# ---------------------------------------------------------------------------------
# Setup: binary, packages, network, servers

if [ "$(id -u)" = 0 ] && ! an_install_missing; then abort "could not install the tools"; fi
if [ -n "${ANONNET_BIN:-}" ]; then
  src_bin=$ANONNET_BIN
  src_examples=$(dirname "$ANONNET_BIN")/examples
else
  export PATH="$HOME/.cargo/bin:$PATH"
  an_say "building (cargo build --release --bin anonnet --example hostile_client --example handshake_flood)"
  (cd "$ROOT" && cargo build --release --quiet --bin anonnet --example hostile_client --example handshake_flood) ||
    abort "cargo build failed"
  src_bin=${CARGO_TARGET_DIR:-$ROOT/target}/release/anonnet
  src_examples=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples
fi
[ -x "$src_bin" ] || abort "no anonnet binary at $src_bin"
# Private copies: a rebuild during the run must not change the binaries under the test.
cp "$src_bin" "$AN_DIR/anonnet" || abort "cannot copy $src_bin"
AN_BIN=$AN_DIR/anonnet
# private_copy NAME SOURCE: prints the copy's path, or nothing if SOURCE is missing.
private_copy() {
  [ -x "$2" ] || return 0
  cp "$2" "$AN_DIR/$1" && echo "$AN_DIR/$1"
}
HOSTILE=$(private_copy hostile_client "${ANONNET_HOSTILE:-$src_examples/hostile_client}")
FLOOD=$(private_copy handshake_flood "${ANONNET_FLOOD:-$src_examples/handshake_flood}")
FLOOD_SECS=${ANONNET_FLOOD_SECS:-300}
HAS_UP=0; an_has_cmd up && HAS_UP=1
HAS_DOWN=0; an_has_cmd down && HAS_DOWN=1
HAS_EXIT=0; an_has_opt gateway --exit && HAS_EXIT=1
an_say "binary $src_bin: up=$HAS_UP down=$HAS_DOWN gateway --exit=$HAS_EXIT"

an_say "network: namespaces ${AN_NS[*]}"
an_topology_up || abort "could not build the test network"
an_say "servers on inet: http :80 :443 :25, dnsmasq, iperf3"
an_services_start || abort "could not start the servers"
an_configs || abort "could not create keys and configs"
BIG_SHA=$(cat "$AN_DIR/big.sha256")

# Network state of client and exit before anything of anonnet ran there.
SNAP_CLIENT=$AN_DIR/snap-client-pre
SNAP_EXIT=$AN_DIR/snap-exit-pre
an_snapshot client "$SNAP_CLIENT"
an_snapshot exit "$SNAP_EXIT"

# an_snapshot without resolv.conf (the exit's is its own business).
snap_net() { an_snapshot "$1" "$2"; sed -i '/^## \/etc\/resolv.conf/,$d' "$2"; }

# by_section FILE: a snapshot's lines, each after its section's "## " header, sorted
# (the kernel may list routes in another order once addresses were put back).
by_section() { awk '/^## /{h = $0} {print h " | " $0}' "$1" | sort; }
# same_as_before NS PRE: the current state of NS equals PRE, else fail with the diff.
same_as_before() {
  local ns=$1 pre=$2 now=$AN_DIR/snap-$1-now d
  if [ "$ns" = exit ]; then
    snap_net "$ns" "$now"
    sed '/^## \/etc\/resolv.conf/,$d' "$pre" >"$now.pre"
    pre=$now.pre
  else
    an_snapshot "$ns" "$now"
  fi
  d=$(diff -u <(by_section "$pre") <(by_section "$now") | tail -n +3)
  [ -z "$d" ] && return 0
  note "state of $ns differs from before (- before, + now):"
  while IFS= read -r line; do note "  $line"; done < <(grep '^[-+@]' <<<"$d" | head -30)
  fail "$ns is not as it was before: $(grep -c '^[-+]' <<<"$d") lines differ"
}

GW_REASON=''
# Starts gw1, gw2 and the exit if they are not running.
ensure_gateways() {
  local gw
  for gw in gw1 gw2 exit; do
    an_running "$gw" && continue
    if [ "$gw" = exit ] && [ "$HAS_EXIT" = 0 ]; then
      GW_REASON="gw1 and gw2 run, but the binary has no 'gateway --exit'"
      return 1
    fi
    an_start_gateway "$gw" 2>"$AN_DIR/start-$gw.err" || {
      GW_REASON="$gw did not start"
      logs "$AN_DIR/$gw.log"
      return 1
    }
  done
}

# Log sizes when the first `up` was ready: the server-side checks look only at what
# came later (the baseline ran over the plain path, from the client's own address).
declare -A OFF=()
mark_logs() {
  local f
  for f in http80 http443 http25 iperf3 dnsmasq; do
    OFF[$f]=$(stat -c %s "$AN_DIR/$f.log" 2>/dev/null || echo 0)
  done
}
since_mark() { tail -c +$((${OFF[$1]:-0} + 1)) "$AN_DIR/$1.log"; }

# The traffic filters of the leak checks. Allowed on the client's wire: UDP between
# the client and gw1:9000, ARP, and IPv6 neighbour discovery (ICMPv6 133-136).
C4=$(an_v4 client)
ALLOWED="udp and ((src host $C4 and dst host 198.18.2.2 and dst port $AN_PORT) or (src host 198.18.2.2 and src port $AN_PORT and dst host $C4))"
LEAK="not arp and not (icmp6 and ip6[40] >= 133 and ip6[40] <= 136) and not ($ALLOWED)"

# start_capture NAME FILTER [MAX_PACKETS]: tcpdump on the client's eth0, printing the
# matching packets (headers only) to $AN_DIR/NAME.txt.
start_capture() {
  local name=$1 filter=$2 max=${3:-}
  local -a count=()
  [ -n "$max" ] && count=(-c "$max")
  an_start2 "cap-$name" client "$AN_DIR/$name.txt" "$AN_DIR/$name.err" \
    tcpdump -i eth0 -n -l -s 128 "${count[@]}" "$filter"
  an_wait_log "$AN_DIR/$name.err" 'listening on' 10 "$AN_LAST_PID"
}
# stop_capture NAME: stops it (SIGINT: it flushes); CAP_COUNT = packets it printed.
stop_capture() {
  an_stop "cap-$1" INT 5
  CAP_COUNT=$(grep -c . "$AN_DIR/$1.txt" 2>/dev/null)
  CAP_COUNT=${CAP_COUNT:-0}
}

UP_REASON=''
# A running `anonnet up` in client (started if needed), with the leak capture running
# from right after it is ready.
ensure_up() {
  [ "$HAS_UP" = 1 ] || { UP_REASON="the binary has no 'up' subcommand"; return 1; }
  ensure_gateways || { UP_REASON="gateways: $GW_REASON"; return 1; }
  an_running client-up && return 0
  [ -f "$AN_DIR/client-up.log" ] && cat "$AN_DIR/client-up.log" >>"$AN_DIR/client-up.old.log"
  if ! an_start_client "$AN_DIR/client.toml" 20; then
    if an_running client-up; then
      UP_REASON="'anonnet up' printed no 'anonnet up:' line within 20 s"
      an_stop client-up TERM 5
    else
      an_stop client-up TERM 1
      UP_REASON="'anonnet up' ended (status $AN_RC) before it was ready"
    fi
    return 1
  fi
  [ -n "${OFF[http80]:-}" ] || mark_logs
  if ! an_running cap-leak && [ ! -f "$AN_DIR/leak.txt" ]; then
    start_capture leak "$LEAK" || { UP_REASON="tcpdump (leak capture) did not start"; return 1; }
    start_capture allowed "$ALLOWED" 50 || { UP_REASON="tcpdump did not start"; return 1; }
  fi
}
need_up() {
  ensure_up && return 0
  logs "$AN_DIR/client-up.log"
  fail "needs a running 'anonnet up': $UP_REASON"
}
# Stops a running `anonnet up` with SIGTERM; AN_RC is its status.
ensure_down() {
  AN_RC=0
  an_running client-up || return 0
  an_stop client-up TERM 10
}

declare -A BASE=() TUN=()
# iperf NS KEY SECONDS ARGS...: iperf3 from NS to the server, result "Mbit/s loss%"
# in IPERF_OUT, or fails with iperf3's error.
iperf() {
  local ns=$1 key=$2 secs=$3 out
  shift 3
  out=$AN_DIR/iperf-$key-$ns.json
  an_in "$ns" $((secs + 25)) iperf3 -c "$AN_SERVER4" -t "$secs" --connect-timeout 5000 -J "$@" \
    >"$out" 2>"$out.err"
  IPERF_OUT=$("$(an_python)" - "$out" <<'EOF'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception as e:
    err = open(sys.argv[1] + ".err").read() + open(sys.argv[1]).read()
    print("ERR iperf3 printed no JSON:", err[:200].replace("\n", " ")); sys.exit()
if d.get("error"):
    print("ERR", d["error"]); sys.exit()
end = d.get("end", {})
s = end.get("sum_received") or end.get("sum") or {}
if "sum" in end and "lost_percent" in end["sum"]:
    s = end["sum"]
print("OK %.1f %.2f" % (s.get("bits_per_second", 0) / 1e6, s.get("lost_percent", 0.0)))
EOF
  )
  case $IPERF_OUT in
    OK*) IPERF_OUT=${IPERF_OUT#OK } ;;
    *) fail "iperf3 ($key): ${IPERF_OUT#ERR }"; return 1 ;;
  esac
}
# iperf_fmt KEY "Mbit/s loss": "Mbit/s" (TCP) or "Mbit/s, loss%" (UDP); "-" if empty.
iperf_fmt() {
  [ -z "$2" ] && { echo -; return; }
  if [ "$1" = udp50 ]; then awk '{printf "%s, %s%%", $1, $2}' <<<"$2"; else echo "${2%% *}"; fi
}
IPERF_KEYS=(tcp1 tcp4 tcp1-rev tcp4-rev udp50)
declare -A IPERF_ARGS=([tcp1]="" [tcp4]="-P 4" [tcp1-rev]="-R" [tcp4-rev]="-P 4 -R" [udp50]="-u -b 50M -l 1200 -w 2M")
declare -A IPERF_LABEL=([tcp1]="TCP 1 stream, up" [tcp4]="TCP 4 streams, up" [tcp1-rev]="TCP 1 stream, down (-R)"
  [tcp4-rev]="TCP 4 streams, down (-R)" [udp50]="UDP -b 50M (rate, loss)")
IPERF_SECS=4

# ---------------------------------------------------------------------------------
# Cases

case_topology() {
  local ns out
  for ns in client gw1 gw2 exit; do
    an_in "$ns" 10 ping -n -q -c 1 -W 2 "$AN_SERVER4" >/dev/null || fail "$ns cannot ping $AN_SERVER4" || return
    an_in "$ns" 10 ping -n -q -c 1 -W 2 "$AN_SERVER6" >/dev/null || fail "$ns cannot ping $AN_SERVER6" || return
  done
  for ns in gw1 gw2 exit; do
    an_in client 10 ping -n -q -c 1 -W 2 "$(an_v4 "$ns")" >/dev/null || fail "client cannot ping $ns" || return
  done
  # The servers answer over the plain path (port 25 too: a listener is there).
  for port in 80 443 25; do
    out=$(an_in client 10 curl -sS -o /dev/null -w '%{http_code}' "http://$AN_SERVER4:$port/" 2>&1)
    [ "$out" = 200 ] || fail "http on port $port: $out" || return
  done
  out=$(an_in client 10 curl -sS -o /dev/null -w '%{http_code}' "http://[$AN_SERVER6]/" 2>&1)
  [ "$out" = 200 ] || fail "http on [$AN_SERVER6]: $out" || return
  out=$(an_in client 15 getent ahostsv4 "$AN_DNS_NAME")
  grep -q "^$AN_SERVER4 " <<<"$out" || fail "plain DNS: '$out'" || return
  out=$(an_in client 15 getent ahostsv6 "$AN_DNS_NAME")
  grep -q "^$AN_SERVER6 " <<<"$out" || fail "plain DNS (AAAA): '$out'" || return
  out=$(an_in cont 10 curl -sS -o /dev/null -w '%{http_code}' "http://$AN_SERVER4/" 2>&1)
  [ "$out" = 200 ] || fail "http from cont (routed through the client): $out" || return
  note "6 namespaces (cont is routed through the client), servers answer on http :80 :443 :25, DNS and iperf3; big.bin sha256 ${BIG_SHA:0:16}…"
}

case_baseline() {
  local key
  for key in "${IPERF_KEYS[@]}"; do
    # shellcheck disable=SC2086
    iperf client "$key" "$IPERF_SECS" ${IPERF_ARGS[$key]} || return
    BASE[$key]=$IPERF_OUT
  done
  note "plain path, TCP 1 stream: $(awk '{printf "%.2f Gbit/s", $1 / 1000}' <<<"${BASE[tcp1]}")"
}

case_gateways() {
  ensure_gateways || fail "$GW_REASON" || return
  local l
  while IFS= read -r l; do note "$l"; done < <(grep -h ' listening on ' "$AN_DIR"/gw1.log "$AN_DIR"/gw2.log "$AN_DIR"/exit.log | cut -c1-150)
}

case_up() {
  local out
  need_up || return
  logs "$AN_DIR/client-up.log"
  note "$(grep -m1 '^anonnet up:' "$AN_DIR/client-up.log")"
  out=$(ip -n client addr show dev anon0 2>&1) || fail "no anon0: $out" || return
  grep -q 'inet 100\.64\.0\.2/32' <<<"$out" || fail "anon0 lacks 100.64.0.2/32: $out" || return
  grep -q 'inet6 fd00:64::2/128' <<<"$out" || fail "anon0 lacks fd00:64::2/128: $out" || return
  grep -q 'mtu 1280 ' <<<"$(ip -n client link show anon0)" || fail "anon0 MTU is not 1280" || return
  out=$(ip netns exec client cat /etc/resolv.conf)
  grep -Eq '^nameserver (100\.64\.0\.53|fd00:64::53)' <<<"$out" ||
    fail "resolv.conf does not name 100.64.0.53 / fd00:64::53: $(tr '\n' ' ' <<<"$out")" || return
  grep -q "$AN_SERVER4" <<<"$out" && { fail "resolv.conf still names the plain resolver $AN_SERVER4"; return 1; }
  return 0
}

case_ping_v4() {
  local out
  need_up || return
  out=$(an_in client 15 ping -n -c 3 -W 2 "$AN_SERVER4" 2>&1) || fail "ping $AN_SERVER4: $(tail -2 <<<"$out" | tr '\n' ' ')" || return
  note "$(grep -E 'rtt|round-trip' <<<"$out")"
  ip -n client route get "$AN_SERVER4" | grep -q 'dev anon0' || note "(route get $AN_SERVER4: $(ip -n client route get "$AN_SERVER4" | head -1))"
}

case_ping_v6() {
  local out
  need_up || return
  out=$(an_in client 15 ping -6 -n -c 3 -W 2 "$AN_SERVER6" 2>&1) || fail "ping $AN_SERVER6: $(tail -2 <<<"$out" | tr '\n' ' ')" || return
  note "$(grep -E 'rtt|round-trip' <<<"$out")"
}

case_http() {
  local t0 t1 sha err=$AN_DIR/curl.err
  need_up || return
  t0=$(an_now_ms)
  an_in client 180 curl -sS --max-time 170 -o "$AN_DIR/dl.bin" "http://$AN_SERVER4/big.bin" 2>"$err" ||
    fail "curl http://$AN_SERVER4/big.bin: $(head -c 300 "$err")" || return
  t1=$(an_now_ms)
  sha=$(sha256sum <"$AN_DIR/dl.bin" | cut -d' ' -f1)
  rm -f "$AN_DIR/dl.bin"
  [ "$sha" = "$BIG_SHA" ] || fail "sha256 of the download differs: $sha, expected $BIG_SHA" || return
  TUN[http]=$(awk -v b="$AN_BIG_BYTES" -v ms=$((t1 - t0 + 1)) 'BEGIN { printf "%.1f", b * 8 / ms / 1000 }')
  # The same over IPv6 (TCP segmentation offload for IPv6 on both TUN devices).
  an_in client 180 curl -sS --max-time 170 -o "$AN_DIR/dl6.bin" "http://[$AN_SERVER6]/big.bin" 2>"$err" ||
    fail "curl http://[$AN_SERVER6]/big.bin: $(head -c 300 "$err")" || return
  sha=$(sha256sum <"$AN_DIR/dl6.bin" | cut -d' ' -f1)
  rm -f "$AN_DIR/dl6.bin"
  [ "$sha" = "$BIG_SHA" ] || fail "sha256 of the IPv6 download differs: $sha, expected $BIG_SHA" || return
  note "50 MiB over HTTP in $(((t1 - t0) / 1000)).$(((t1 - t0) % 1000 / 100)) s (${TUN[http]} Mbit/s), sha256 equal; the same over IPv6, sha256 equal"
}

case_dns() {
  local off out
  need_up || return
  logs "$AN_DIR/dnsmasq.log"
  off=$(stat -c %s "$AN_DIR/dnsmasq.log")
  out=$(an_in client 20 getent hosts "$AN_DNS_NAME") || fail "getent hosts $AN_DNS_NAME failed" || return
  out=$(an_in client 20 getent ahostsv4 "$AN_DNS_NAME")
  grep -q "^$AN_SERVER4 " <<<"$out" || fail "getent ahostsv4: '$(head -1 <<<"$out")'" || return
  out=$(an_in client 20 getent ahostsv6 "$AN_DNS_NAME")
  grep -q "^$AN_SERVER6 " <<<"$out" || fail "getent ahostsv6: '$(head -1 <<<"$out")'" || return
  sleep 0.2 # dnsmasq's log write
  out=$(tail -c +$((off + 1)) "$AN_DIR/dnsmasq.log" | grep "query\[.*\] $AN_DNS_NAME from")
  grep -Eq "from ($(an_v4 exit)|$(an_v6 exit))\$" <<<"$out" ||
    fail "dnsmasq saw no query from the exit: $(head -2 <<<"$out" | tr '\n' ' ')" || return
  if grep -Ev "from ($(an_v4 exit)|$(an_v6 exit))\$" <<<"$out" | grep -q .; then
    fail "dnsmasq saw queries from elsewhere: $(grep -Ev "from ($(an_v4 exit)|$(an_v6 exit))\$" <<<"$out" | head -2 | tr '\n' ' ')"
    return 1
  fi
  note "$(head -1 <<<"$out" | sed 's/^.*dnsmasq\[[0-9]*\]: //')"
}

iperf_case() {
  local key=$1 mbps loss
  need_up || return
  # shellcheck disable=SC2086
  iperf client "$key" "$IPERF_SECS" ${IPERF_ARGS[$key]} || return
  TUN[$key]=$IPERF_OUT
  read -r mbps loss <<<"$IPERF_OUT"
  note "${IPERF_LABEL[$key]}, Mbit/s: $(iperf_fmt "$key" "$IPERF_OUT") through 3 hops, $(iperf_fmt "$key" "${BASE[$key]:-}") on the plain path"
  awk -v m="$mbps" 'BEGIN { exit !(m >= 1) }' || fail "only $mbps Mbit/s" || return
  if [ "$key" = udp50 ]; then
    awk -v l="$loss" 'BEGIN { exit !(l < 5) }' || fail "UDP loss $loss% (>= 5%)" || return
  fi
}
case_iperf_tcp1() { iperf_case tcp1; }
case_iperf_tcp4() { iperf_case tcp4; }
case_iperf_tcp1_rev() { iperf_case tcp1-rev; }
case_iperf_tcp4_rev() { iperf_case tcp4-rev; }
case_iperf_udp() { iperf_case udp50; }

# TUN offloads: anon0 and the exit's TUN have TSO on, and while TCP runs through the 3
# hops, anon0 carries TCP packets of 2,000 bytes and more (its MTU is 1280): super-packets
# the kernel hands anonnet (upload, -Q out) and segment runs anonnet coalesced into
# one write (download, -Q in).
case_tun_offload() {
  local dev out dir want what n
  need_up || return
  for dev in client:anon0 exit:anonexit0; do
    out=$(an_in "${dev%%:*}" 10 ethtool -k "${dev#*:}" 2>&1) ||
      fail "ethtool -k ${dev#*:} in ${dev%%:*}: $(head -2 <<<"$out" | tr '\n' ' ')" || return
    grep -q '^tcp-segmentation-offload: on' <<<"$out" ||
      fail "${dev#*:} in ${dev%%:*}: $(grep '^tcp-segmentation-offload' <<<"$out")" || return
  done
  for dir in out in; do
    an_start2 "cap-gso-$dir" client "$AN_DIR/gso-$dir.txt" "$AN_DIR/gso-$dir.err" \
      tcpdump -i anon0 -Q "$dir" -n -l -c 5 'tcp and greater 2000'
    an_wait_log "$AN_DIR/gso-$dir.err" 'listening on' 10 "$AN_LAST_PID" ||
      fail "tcpdump on anon0 did not start" || return
    if [ "$dir" = out ]; then iperf client "gso-$dir" 2 || return; else iperf client "gso-$dir" 2 -R || return; fi
    an_stop "cap-gso-$dir" INT 5
    if [ "$dir" = out ]; then
      want=" > ${AN_SERVER4//./\\.}\\.5201: " what=to
    else
      want=" IP ${AN_SERVER4//./\\.}\\.5201 > " what=from
    fi
    n=$(grep -Ec -- "$want" "$AN_DIR/gso-$dir.txt")
    [ "$n" -ge 5 ] ||
      fail "anon0 -Q $dir: $n TCP packets >= 2000 bytes $what the iperf3 server during 2 s of iperf3 (expected 5): $(head -2 "$AN_DIR/gso-$dir.txt" | tr '\n' ' ')" || return
    note "anon0 -Q $dir: $(head -1 "$AN_DIR/gso-$dir.txt" | grep -Eo 'IP .* > [^:]*|length [0-9]+$' | tr '\n' ' ')"
  done
}

# pmtu FAMILY-FLAG TARGET SIZE: SIZE (1280 B packets) with DF passes, SIZE+1 fails
# locally with "message too long"/"mtu".
pmtu() {
  local fam=$1 dst=$2 size=$3 out t0 t1
  need_up || return
  out=$(an_in client 15 ping "$fam" -n -c 3 -W 2 -M "do" -s "$size" "$dst" 2>&1) ||
    fail "1280-byte DF ping (-s $size) to $dst failed: $(tail -2 <<<"$out" | tr '\n' ' ')" || return
  t0=$(an_now_ms)
  out=$(an_in client 15 ping "$fam" -n -c 1 -W 2 -M "do" -s $((size + 1)) "$dst" 2>&1) &&
    { fail "1281-byte DF ping (-s $((size + 1))) to $dst went through (MTU > 1280?)"; return 1; }
  t1=$(an_now_ms)
  grep -Eiq 'message too long|mtu' <<<"$out" ||
    fail "1281-byte DF ping failed without a local 'message too long' error (black hole?): $(tail -2 <<<"$out" | tr '\n' ' ')" || return
  note "-s $size ok; -s $((size + 1)): $(grep -Eim1 'message too long|mtu' <<<"$out") ($((t1 - t0)) ms)"
}
case_pmtu_v4() { pmtu -4 "$AN_SERVER4" 1252; }
case_pmtu_v6() { pmtu -6 "$AN_SERVER6" 1232; }

# tcp_connect HOST PORT: prints "OK ms", "TIMEOUT ms" or "ERR errno ms message".
tcp_connect() {
  an_in client 15 "$(an_python)" - "$1" "$2" <<'EOF'
import socket, sys, time
t = time.monotonic()
ms = lambda: int((time.monotonic() - t) * 1000)
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=8).close()
    print("OK", ms())
except socket.timeout:
    print("TIMEOUT", ms())
except OSError as e:
    print("ERR", e.errno, ms(), e.strerror)
EOF
}

case_policy_port25() {
  local r code errno ms
  need_up || return
  r=$(tcp_connect "$AN_SERVER4" 25)
  read -r code errno ms _ <<<"$r"
  case $code in
    OK) fail "TCP to $AN_SERVER4:25 connected (the exit policy should reject port 25)"; return 1 ;;
    TIMEOUT) fail "TCP to $AN_SERVER4:25 timed out after ${errno} ms (should be rejected at once)"; return 1 ;;
    ERR) ;;
    *) fail "connect test printed: $r"; return 1 ;;
  esac
  # 113 EHOSTUNREACH (ICMP prohibited/filtered), 101 ENETUNREACH, 13 EACCES, 1 EPERM,
  # 111 ECONNREFUSED (a RST): all a fast rejection.
  case $errno in 113 | 101 | 13 | 1 | 111) ;; *) fail "TCP to :25: unexpected error: $r"; return 1 ;; esac
  [ "$ms" -lt 2000 ] || fail "TCP to :25 was rejected only after $ms ms" || return
  note "TCP $AN_SERVER4:25 rejected in $ms ms: ${r#ERR * * }"
  r=$(an_in client 20 curl -sS --max-time 10 -o /dev/null -w '%{http_code}' "http://$AN_SERVER4:443/" 2>&1)
  [ "$r" = 200 ] || fail "but $AN_SERVER4:443 did not work: $r" || return
  note "TCP $AN_SERVER4:443 works (HTTP $r)"
}

# blocked_ping FLAG TARGET: the ping fails and shows an ICMP error that came through
# the tunnel (not from the client's plain router 198.18.1.1 / 2001:db8:1::1).
blocked_ping() {
  local fam=$1 dst=$2 out err
  out=$(an_in client 15 ping "$fam" -n -c 2 -W 2 -w 6 "$dst" 2>&1) &&
    { fail "ping $dst got replies: $(grep -m1 'bytes from' <<<"$out")"; return 1; }
  err=$(grep -m1 '^From ' <<<"$out")
  [ -n "$err" ] || fail "ping $dst failed without an ICMP error (silent drop): $(tail -2 <<<"$out" | tr '\n' ' ')" || return
  grep -Eq '^From (198\.18\.1\.1|2001:db8:1::1) ' <<<"$err" &&
    { fail "the ICMP error came from the client's plain router, not through the tunnel: $err"; return 1; }
  note "ping $dst: $err"
}

case_policy_exit_self() {
  need_up || return
  an_in client 10 ping -n -q -c 1 -W 2 "$AN_SERVER4" >/dev/null || fail "control: ping $AN_SERVER4 fails too" || return
  blocked_ping -4 "$(an_v4 exit)" || return
  blocked_ping -6 "$(an_v6 exit)" || return
}

case_policy_private() {
  need_up || return
  an_in client 10 ping -n -q -c 1 -W 2 "$AN_SERVER4" >/dev/null || fail "control: ping $AN_SERVER4 fails too" || return
  blocked_ping -4 10.0.0.1
}

# udp_ask NS HOST PORT: sends "ping" to HOST:PORT over UDP from NS and prints the
# answer (from any address), "TIMEOUT" or "ERR errno" (an ICMP error).
udp_ask() {
  an_in "$1" 15 "$(an_python)" - "$2" "$3" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
try:
    # Unconnected: a service bound to 0.0.0.0 may answer from another address.
    s.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
    print(s.recvfrom(100)[0].decode(errors="replace"))
except socket.timeout:
    print("TIMEOUT")
except OSError as e:
    print("ERR", e.errno)
EOF
}

# The exit host's own services stay out of reach of its clients, also on an address it
# got after it started (its policy lists only the addresses it had then).
case_exit_host_services() {
  local added=198.18.99.1 port=7777 r dst ping_out='' fails=()
  need_up || return
  ip -n exit addr add "$added/32" dev lo || fail "cannot add $added to the exit" || return
  an_start udp-echo exit "$AN_DIR/udp-echo.log" "$(an_python)" -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 7777))
print("listening", flush=True)
while True:
    data, peer = s.recvfrom(100)
    s.sendto(b"echo from the exit host", peer)
'
  if an_wait_log "$AN_DIR/udp-echo.log" listening 10 "${AN_PID[udp-echo]}"; then
    r=$(udp_ask exit "$added" "$port")
    [ "$r" = "echo from the exit host" ] || fails+=("control: the service does not answer on the exit itself ($r)")
    for dst in "$added" "$(an_v4 exit)"; do
      r=$(udp_ask client "$dst" "$port")
      case $r in TIMEOUT | ERR*) ;; *) fails+=("UDP $dst:$port through the tunnel answered: $r") ;; esac
    done
    ping_out=$(an_in client 10 ping -n -c 1 -W 2 "$added" 2>&1) && fails+=("ping $added through the tunnel got a reply")
  else
    fails+=("the UDP service did not start")
  fi
  an_stop udp-echo TERM 3
  ip -n exit addr del "$added/32" dev lo
  [ ${#fails[@]} -eq 0 ] || fail "${fails[*]}" || return
  note "UDP service on 0.0.0.0:$port of the exit: no answer through the tunnel at $added (added after start) or $(an_v4 exit)"
  note "ping $added: $(grep -m1 '^From ' <<<"$ping_out" || echo 'no answer')"
}

case_traceroute() {
  local out last fam dst
  need_up || return
  for fam in 4 6; do
    dst=$AN_SERVER4; [ "$fam" = 6 ] && dst=$AN_SERVER6
    out=$(an_in client 60 traceroute "-$fam" -n -q 1 -w 2 -m 10 "$dst" 2>&1)
    last=$(tail -1 <<<"$out")
    awk -v d="$dst" '{ exit !($2 == d) }' <<<"$last" ||
      fail "traceroute -$fam $dst did not complete: $(tail -n +2 <<<"$out" | tr -s ' ' | tr '\n' ';')" || return
    note "traceroute -$fam: $(tail -n +2 <<<"$out" | awk '{printf "%s%s", (NR > 1 ? " -> " : ""), $2}')"
  done
}

case_server_addresses() {
  local all bad
  need_up || return
  # Self-contained: one IPv4 and one IPv6 request through the tunnel.
  an_in client 20 curl -sS --max-time 10 -o /dev/null "http://$AN_SERVER4/" || fail "GET over IPv4 failed" || return
  an_in client 20 curl -sS --max-time 10 -o /dev/null "http://[$AN_SERVER6]/" || fail "GET over IPv6 failed" || return
  sleep 0.2
  all=$(for f in http80 http443 http25 iperf3 dnsmasq; do since_mark "$f" | sed "s/^/$f: /"; done)
  grep -q "^http80: .*$(an_v4 exit) - - " <<<"$all" || fail "the HTTP log shows no request from $(an_v4 exit)" || return
  grep -q "^http80: $(an_v6 exit) - - " <<<"$all" || fail "the HTTP log shows no request from $(an_v6 exit)" || return
  bad=$(grep -E "(^|[^0-9])198\.18\.1\.2([^0-9]|\$)|2001:db8:1::2([^0-9a-f]|\$)|(^|[^0-9])100\.(6[4-9]|[7-9][0-9]|1[01][0-9]|12[0-7])\.[0-9]+\.[0-9]+|(^|[^0-9a-f:])fd[0-9a-f]{2}:" <<<"$all")
  [ -z "$bad" ] || { note "offending lines:"; while IFS= read -r l; do note "  $l"; done < <(head -5 <<<"$bad"); fail "the servers saw the client's or a tunnel address"; return 1; }
  note "servers saw $(grep -oE "$(an_v4 exit)|$(an_v6 exit)" <<<"$all" | sort | uniq -c | awk '{printf "%s%s x%s", (NR > 1 ? ", " : ""), $2, $1}'), no client or tunnel address"
}

case_leak() {
  local leaks allowed drops
  need_up || return
  logs "$AN_DIR/leak.err"
  an_running cap-leak || fail "the leak capture is not running (did it start with 'up'?)" || return
  # Some traffic of our own, so that the case means something when run alone.
  an_in client 10 ping -n -q -c 2 -W 2 "$AN_SERVER4" >/dev/null
  an_in client 15 getent hosts "$AN_DNS_NAME" >/dev/null
  stop_capture leak
  leaks=$CAP_COUNT
  stop_capture allowed
  allowed=$CAP_COUNT
  drops=$(grep -Eo '[0-9]+ packets dropped by kernel' "$AN_DIR/leak.err" | head -1)
  if [ "$leaks" -gt 0 ]; then
    note "packets on the client's wire other than UDP to/from 198.18.2.2:$AN_PORT:"
    while IFS= read -r l; do note "  $l"; done < <(head -10 "$AN_DIR/leak.txt" | cut -c1-160)
    fail "$leaks leaked packets"
    return 1
  fi
  [ "$allowed" -gt 0 ] || fail "the capture saw no UDP to gw1 at all (is it capturing?)" || return
  note "0 packets besides UDP with 198.18.2.2:$AN_PORT ($allowed of those sampled; ${drops:-no drop count})"
}

# `anonnet check` against the whoami server on inet: every check passes, and the
# server saw the exit's address. Then, with the kill switch deleted by hand, the
# kill-switch check fails (status 1), and tcpdump sees its datagram on the wire.
# Runs after `leak`: that datagram is a leak on purpose.
case_check() {
  local out rc js url="http://$AN_DNS_NAME:$AN_WHOAMI_PORT/"
  need_up || return
  logs "$AN_DIR/check.txt" "$AN_DIR/whoami.log"
  an_in client 40 "$AN_BIN" check --server "$url" >"$AN_DIR/check.txt" 2>&1
  rc=$?
  [ "$rc" = 0 ] || fail "check exited with $rc: $(grep -m1 '^FAIL\|ERROR' "$AN_DIR/check.txt")" || return
  for c in tunnel kill-switch dns exit-address ipv6 mtu; do
    grep -q "^PASS $c: " "$AN_DIR/check.txt" || fail "no 'PASS $c' line" || return
  done
  grep -q '^anonnet check: 6 passed, 0 failed$' "$AN_DIR/check.txt" || fail "summary: $(tail -1 "$AN_DIR/check.txt")" || return
  grep -q "^PASS exit-address: the server saw $(an_v4 exit) (the exit" "$AN_DIR/check.txt" ||
    fail "$(grep '^PASS exit-address' "$AN_DIR/check.txt")" || return
  grep -q "^$(an_v4 exit) " "$AN_DIR/whoami.log" || fail "the whoami server did not log a request from the exit $(an_v4 exit)" || return
  grep -q "^PASS mtu: a 1280-byte ping" "$AN_DIR/check.txt" || fail "$(grep '^PASS mtu' "$AN_DIR/check.txt")" || return
  js=$(an_in client 40 "$AN_BIN" check --json --server "$url" 2>>"$AN_DIR/check.txt")
  out=$("$(an_python)" -c 'import json, sys; v = json.load(sys.stdin); print(v["passed"], v["failed"], len(v["checks"]))' <<<"$js" 2>&1)
  [ "$out" = "6 0 6" ] || fail "check --json: passed failed checks = $out" || return
  note "$(grep -c '^PASS' "$AN_DIR/check.txt") PASS lines; $(grep '^PASS exit-address' "$AN_DIR/check.txt" | cut -c1-100)"
  # A broken kill switch: the check says so, and its datagram is on the wire.
  start_capture check-leak "udp and dst host 192.0.2.1" || fail "tcpdump did not start" || return
  ip netns exec client nft delete table inet anonnet || fail "cannot delete the kill switch" || return
  an_in client 40 "$AN_BIN" check --server "$url" >"$AN_DIR/check-broken.txt" 2>&1
  rc=$?
  logs "$AN_DIR/check-broken.txt"
  sleep 0.3
  stop_capture check-leak
  an_stop client-up TERM 10
  [ "$rc" = 1 ] || fail "check with no kill switch exited with $rc" || return
  grep -q '^FAIL kill-switch: .*not in the kernel.*left directly' "$AN_DIR/check-broken.txt" ||
    fail "no kill-switch FAIL: $(grep 'kill-switch' "$AN_DIR/check-broken.txt")" || return
  [ "$CAP_COUNT" -ge 1 ] || fail "tcpdump saw no datagram to 192.0.2.1 although the check says it left" || return
  grep -q '^anonnet check: 5 passed, 1 failed$' "$AN_DIR/check-broken.txt" || fail "summary: $(tail -1 "$AN_DIR/check-broken.txt")" || return
  note "kill switch deleted: FAIL kill-switch, status 1, tcpdump saw $CAP_COUNT probe datagram(s) on eth0; up stopped (status $AN_RC)"
}

# pcap_capture NAME NS IFACE FILTER: tcpdump in NS on IFACE into $AN_DIR/NAME.pcap.
pcap_capture() {
  an_start2 "pcap-$1" "$2" /dev/null "$AN_DIR/$1.pcap.err" \
    tcpdump -i "$3" -n --immediate-mode -U -s 96 -w "$AN_DIR/$1.pcap" "$4"
  an_wait_log "$AN_DIR/$1.pcap.err" 'listening on' 10 "$AN_LAST_PID"
}

# pings NS COUNT: COUNT pings 0.1 s apart to the server; prints "p50 p99" in ms.
pings() {
  an_in "$1" 30 ping -n -c "$2" -i 0.1 -W 2 "$AN_SERVER4" 2>/dev/null |
    sed -n 's/.*time=\([0-9.]*\) ms.*/\1/p' | sort -n |
    awk '{ v[NR] = $1 } END { if (NR == 0) { print "- -"; exit }
      printf "%s %s\n", v[int((NR - 1) * 0.5) + 1], v[int((NR - 1) * 0.99) + 1] }'
}

# fetch_1m NS: fetches 1m.bin; prints the seconds it took, or nothing.
fetch_1m() {
  an_in "$1" 60 curl -sS --max-time 50 -o /dev/null -w '%{time_total}' \
    "http://$AN_SERVER4/1m.bin" 2>/dev/null
}

# Constant mode (PipeNet, padding_mode = "constant"): on the client's wire the link to
# gw1 carries the same number of full-size datagrams per 100 ms each way while the
# client is idle and while it fetches 1 MB, which the exit's internet side shows
# plainly. Also the price: ping and a 1 MB fetch in the default mode and in constant
# mode at 500 cells/s.
case_constant_rate() {
  local rate=500 off_ping off_fetch ping fetch t_idle t_busy t_end out
  need_up || return
  head -c 1048576 /dev/urandom >"$AN_DIR/www/1m.bin"
  off_ping=$(pings client 50)
  off_fetch=$(fetch_1m client)
  [ -n "$off_fetch" ] || fail "the 1 MB fetch failed in the default mode" || return
  ensure_down
  sed "s/^\[client\]\$/[client]\npadding_mode = \"constant\"\nconstant_rate = $rate/" \
    "$AN_DIR/client.toml" >"$AN_DIR/client-constant.toml"
  if ! an_start_client "$AN_DIR/client-constant.toml" 20; then
    logs "$AN_DIR/client-up.log"
    fail "'anonnet up' in constant mode did not come up"
    return 1
  fi
  logs "$AN_DIR/client-up.log"
  pcap_capture constant-client client eth0 "udp and host 198.18.2.2 and port $AN_PORT" ||
    fail "tcpdump on the client did not start" || return
  pcap_capture constant-exit exit eth0 "host $AN_SERVER4" ||
    fail "tcpdump on the exit did not start" || return
  # Let the other circuits of the pool come up, then watch 3 s of an idle client.
  sleep 3
  t_idle=$(an_now_ms)
  sleep 3
  t_busy=$(an_now_ms)
  ping=$(pings client 30)
  fetch=$(fetch_1m client)
  t_end=$(an_now_ms)
  sleep 0.5
  an_stop pcap-constant-client INT 5
  an_stop pcap-constant-exit INT 5
  ensure_down
  [ -n "$fetch" ] || fail "the 1 MB fetch failed in constant mode" || return
  tcpdump -n -tt -r "$AN_DIR/constant-client.pcap" >"$AN_DIR/constant-client.txt" 2>/dev/null
  tcpdump -n -tt -r "$AN_DIR/constant-exit.pcap" >"$AN_DIR/constant-exit.txt" 2>/dev/null
  out=$("$(an_python)" - "$t_idle" "$t_busy" "$t_end" "$rate" "$AN_DIR/constant-client.txt" \
    "$AN_DIR/constant-exit.txt" <<'PY'
import re, sys
t_idle, t_busy, t_end = (int(x) / 1000 for x in sys.argv[1:4])
rate = int(sys.argv[4])
client_lines = open(sys.argv[5]).read().splitlines()
exit_lines = open(sys.argv[6]).read().splitlines()
line = re.compile(r"^(\d+\.\d+) IP (\S+) > (\S+): UDP, length (\d+)")
bins = {}
sizes = {}
for l in client_lines:
    m = line.match(l)
    if not m:
        continue
    t, src, dst, n = float(m[1]), m[2], m[3], int(m[4])
    up = dst.startswith("198.18.2.2.")
    sizes[(up, n)] = sizes.get((up, n), 0) + 1
    if t_idle <= t < t_end:
        b = int((t - t_idle) * 10)
        bins[(up, b)] = bins.get((up, b), 0) + 1
idle_bins = int((t_busy - t_idle) * 10)
busy_bins = int((t_end - t_busy) * 10)
def stats(up, lo, hi):
    c = [bins.get((up, b), 0) for b in range(lo, hi)]
    return sum(c) / len(c), min(c), max(c)
def exit_bytes(lo, hi):
    n = 0
    for l in exit_lines:
        m = re.match(r"^(\d+\.\d+) .*length (\d+)", l)
        if m and lo <= float(m[1]) < hi:
            n += int(m[2])
    return n
total = sum(sizes.values())
full = sum(v for (up, n), v in sizes.items() if n == 1452)
res = []
ok = True
for up, name in ((True, "to gw1"), (False, "from gw1")):
    i, imin, imax = stats(up, 0, idle_bins)
    b, bmin, bmax = stats(up, idle_bins, idle_bins + busy_bins)
    res.append(f"{name}: idle {i:.1f} ({imin}-{imax}), busy {b:.1f} ({bmin}-{bmax}) per 100 ms")
    # The same mean idle and busy, the configured rate, and no window more than 3
    # datagrams (6%) off it (a slot on a window's edge moves with timer jitter).
    if abs(b - i) > 0.03 * i or abs(i - rate / 10) > 0.1 * rate / 10:
        ok = False
    if min(imin, bmin) < rate / 10 - 3 or max(imax, bmax) > rate / 10 + 3:
        ok = False
others = sorted(f"{n}x{v}" for (up, n), v in sizes.items() if n != 1452)
print("OK" if ok and full >= 0.99 * total else "BAD",
      f"{full}/{total} datagrams of 1452 bytes (others: {' '.join(others) or 'none'});",
      "; ".join(res) + ";",
      f"exit's internet side: {exit_bytes(t_idle, t_busy)} bytes idle,",
      f"{exit_bytes(t_busy, t_end)} bytes busy")
PY
  )
  note "default mode: ping p50/p99 ${off_ping/ / / } ms, 1 MB in ${off_fetch} s"
  note "constant mode, $rate cells/s: ping p50/p99 ${ping/ / / } ms, 1 MB in ${fetch} s"
  note "client's link: ${out#* }"
  case $out in
    OK*) ;;
    *) fail "the client's link shows the traffic: ${out#* }"; return 1 ;;
  esac
}

# The flow-correlation attack (docs/SECURITY.md, timing analysis) on real captures:
# CORR_N clients, each in its own namespace with `anonnet up` on the testbed's path
# (gw1, gw2, exit: all share the gateways) and one UDP flow of its own on/off pattern
# and sizes (netns-tests/correlate.py) to a responder on the server. tcpdump records
# each client's link to gw1 and the exit's internet side; the attack matches every
# client to the exit-side flow that correlates best. Run with padding off, adaptive
# (the default config, which must pad) and constant: off must be matched, constant
# must not, and each row's cost is noted.
CORR_N=8
CORR_SECS=30
CORR_PORT=46001
CORR_RATE=100
corr_ns() { echo "corr$1"; }

# corr_topology: namespaces corr1..CORR_N on inet, 198.18.(40+i).2 and
# 2001:db8:(40+i)::2, each with its own resolv.conf.
corr_topology() {
  local i ns
  for ((i = 1; i <= CORR_N; i++)); do
    ns=$(corr_ns "$i")
    [ ! -e "/run/netns/$ns" ] || { an_err "namespace $ns exists already"; return 1; }
    an_ns_add "$ns" || return 1
    an_resolv "$ns" "$AN_SERVER4" || return 1
    an_attach "$ns" $((40 + i)) || return 1
    an_wait_dad "$ns" || return 1
  done
}

# corr_cleanup: stops what runs in corr1..CORR_N and deletes them.
corr_cleanup() {
  local i ns name
  for ((i = 1; i <= CORR_N; i++)); do
    for name in "flow$i" "cap-corr$i" "corr$i-up"; do an_running "$name" && an_stop "$name" TERM 10; done
  done
  an_running cap-corr-exit && an_stop cap-corr-exit INT 5
  an_running corr-serve && an_stop corr-serve TERM 5
  for ((i = 1; i <= CORR_N; i++)); do
    ns=$(corr_ns "$i")
    [ -e "/run/netns/$ns" ] && ip netns del "$ns"
    [ -d "/etc/netns/$ns" ] && rm -rf -- "/etc/netns/${ns:?}"
  done
  return 0
}

# corr_run MODE EXTRA_TOML: one round; CORR_OUT gets the attack's line, CORR_FLOWS
# "sent answered p50 p99" of every flow (one per line).
corr_run() {
  local mode=$1 extra=$2 i ns start py pids=() left
  py=$(an_python)
  for ((i = 1; i <= CORR_N; i++)); do
    ns=$(corr_ns "$i")
    an_client_config "$AN_DIR/$ns-$mode.toml" "$AN_DIR/$ns-state" "198.18.2.2:$AN_PORT"
    [ -z "$extra" ] || sed -i "s/^\[client\]\$/[client]\n${extra//$'\n'/\\n}/" "$AN_DIR/$ns-$mode.toml"
    an_start "$ns-up" "$ns" "$AN_DIR/$ns-up-$mode.log" "$AN_BIN" up --config "$AN_DIR/$ns-$mode.toml"
  done
  for ((i = 1; i <= CORR_N; i++)); do
    ns=$(corr_ns "$i")
    an_wait_log "$AN_DIR/$ns-up-$mode.log" '^anonnet up:' 20 "${AN_PID[$ns-up]}" || {
      logs "$AN_DIR/$ns-up-$mode.log"
      fail "$mode: 'anonnet up' in $ns did not come up"
      return 1
    }
  done
  for ((i = 1; i <= CORR_N; i++)); do
    ns=$(corr_ns "$i")
    an_start2 "cap-$ns" "$ns" /dev/null "$AN_DIR/$ns-$mode.pcap.err" tcpdump -i eth0 -n \
      --immediate-mode -U -s 96 -w "$AN_DIR/$ns-$mode.pcap" "udp and host 198.18.2.2 and port $AN_PORT"
    an_wait_log "$AN_DIR/$ns-$mode.pcap.err" 'listening on' 10 "$AN_LAST_PID" ||
      fail "$mode: tcpdump in $ns did not start" || return
  done
  an_start2 cap-corr-exit exit /dev/null "$AN_DIR/corr-exit-$mode.pcap.err" tcpdump -i eth0 -n \
    --immediate-mode -U -s 96 -w "$AN_DIR/corr-exit-$mode.pcap" \
    "udp and host $AN_SERVER4 and portrange $CORR_PORT-$((CORR_PORT + CORR_N - 1))"
  an_wait_log "$AN_DIR/corr-exit-$mode.pcap.err" 'listening on' 10 "$AN_LAST_PID" ||
    fail "$mode: tcpdump on the exit did not start" || return
  # Every flow starts at the same moment, after the clients' pools are up.
  start=$(($(date +%s) + 4))
  echo "$start" >"$AN_DIR/corr-start-$mode"
  for ((i = 1; i <= CORR_N; i++)); do
    ns=$(corr_ns "$i")
    an_start "flow$i" "$ns" "$AN_DIR/flow$i-$mode.out" "$py" "$HERE/correlate.py" flow \
      "$AN_SERVER4" $((CORR_PORT + i - 1)) "$i" "$start" "$CORR_SECS"
    pids+=("$AN_LAST_PID")
  done
  # The flows end by themselves one second after the window.
  for ((left = (CORR_SECS + 20) * 10; left > 0; left--)); do
    for i in "${pids[@]}"; do an_alive "$i" && break; done
    an_alive "$i" || break
    sleep 0.1
  done
  [ "$left" -gt 0 ] || fail "$mode: the flows did not end within $((CORR_SECS + 20)) s" || return
  for ((i = 1; i <= CORR_N; i++)); do
    ns=$(corr_ns "$i")
    an_stop "flow$i" TERM 1
    an_stop "cap-$ns" INT 5
    an_stop "$ns-up" TERM 10
    tcpdump -n -q -tt -r "$AN_DIR/$ns-$mode.pcap" >"$AN_DIR/$ns-$mode.txt" 2>/dev/null
  done
  an_stop cap-corr-exit INT 5
  tcpdump -n -q -tt -r "$AN_DIR/corr-exit-$mode.pcap" >"$AN_DIR/corr-exit-$mode.txt" 2>/dev/null
  CORR_FLOWS=$(cat "$AN_DIR"/flow*-"$mode".out)
  CORR_OUT=$("$py" "$HERE/correlate.py" attack "$start" "$CORR_SECS" \
    $(for ((i = 1; i <= CORR_N; i++)); do echo "$AN_DIR/$(corr_ns "$i")-$mode.txt"; done) \
    -- "$AN_DIR/corr-exit-$mode.txt" "$CORR_PORT")
  [ -n "$CORR_OUT" ] || fail "$mode: the attack printed nothing" || return
}

# corr_note MODE OFF_BYTES: one row of the table from CORR_OUT and CORR_FLOWS.
corr_note() {
  local top1 tpr true wrong bytes rtt
  read -r top1 tpr true wrong bytes <<<"$CORR_OUT"
  rtt=$(awk 'NF == 1' <<<"$CORR_FLOWS" | sort -n |
    awk '{ v[NR] = $1 } END { printf "%s / %s", v[int((NR - 1) * 0.5) + 1], v[int((NR - 1) * 0.99) + 1] }')
  note "$(printf '%-9s top-1 %5.1f%%, TPR at 1%% FPR %5.1f%%, score true %.2f / wrong %.2f; client links %+.0f%% bytes; round trip p50 / p99 %s ms; %s requests answered' \
    "$1:" "$(awk -v x="$top1" 'BEGIN { print x * 100 }')" "$(awk -v x="$tpr" 'BEGIN { print x * 100 }')" \
    "$true" "$wrong" "$(awk -v a="$bytes" -v b="$2" 'BEGIN { print (a / b - 1) * 100 }')" "$rtt" \
    "$(awk 'NF == 2 { s += $1; a += $2 } END { printf "%d/%d", a, s }' <<<"$CORR_FLOWS")")"
}

case_flow_correlation() {
  local off adaptive constant off_bytes sent answered top1 true
  ensure_gateways || fail "gateways: $GW_REASON" || return
  corr_topology || { corr_cleanup; fail "could not add the clients' namespaces"; return 1; }
  an_start corr-serve inet "$AN_DIR/corr-serve.log" "$(an_python)" -u "$HERE/correlate.py" serve \
    "$AN_SERVER4" "$CORR_PORT" "$CORR_N"
  an_wait_log "$AN_DIR/corr-serve.log" '^serving' 10 "$AN_LAST_PID" ||
    { corr_cleanup; fail "the UDP responder did not start"; return 1; }
  corr_run off 'padding_mode = "off"' || { corr_cleanup; return 1; }
  off=$CORR_OUT
  off_bytes=$(awk '{ print $5 }' <<<"$off")
  read -r sent answered < <(awk 'NF == 2 { s += $1; a += $2 } END { print s, a }' <<<"$CORR_FLOWS")
  corr_note off "$off_bytes"
  corr_run adaptive '' || { corr_cleanup; return 1; }
  adaptive=$CORR_OUT
  corr_note adaptive "$off_bytes"
  corr_run constant "padding_mode = \"constant\"
constant_rate = $CORR_RATE" || { corr_cleanup; return 1; }
  constant=$CORR_OUT
  corr_note constant "$off_bytes"
  corr_cleanup
  note "chance: top-1 $(awk -v n="$CORR_N" 'BEGIN { printf "%.1f", 100 / n }')%, N = $CORR_N flows over $CORR_SECS s; constant at $CORR_RATE cells/s"
  [ "$sent" -ge 500 ] || fail "off: only $sent requests were sent" || return
  [ $((answered * 100)) -ge $((sent * 95)) ] || fail "off: only $answered of $sent requests were answered" || return
  awk -v x="${off%% *}" 'BEGIN { exit !(x >= 0.75) }' || fail "off: the attack matched only ${off%% *} of the flows; the experiment shows nothing" || return
  # Constant links carry nothing to correlate: the true pairs score like noise (off:
  # about 1.8 of 2), and the matches are chance's (P(top-1 > 0.5) < 0.001 by chance).
  read -r top1 _ true _ <<<"$constant"
  awk -v x="$top1" -v t="$true" 'BEGIN { exit !(x <= 0.5 && t <= 0.3) }' ||
    fail "constant: the attack matched $top1 of the flows, true pairs score $true" || return
  awk -v a="$(awk '{ print $5 }' <<<"$adaptive")" -v b="$off_bytes" 'BEGIN { exit !(a > b * 1.05) }' ||
    fail "adaptive (the default): the client links carried no padding" || return
}

# pool_conntrack: the exit's tracked connections whose original source is a pool
# address (100.96.0.0/12, fd00:96::/64: a circuit's flows before masquerading).
pool_conntrack() {
  ip netns exec exit "$(an_python)" -c '
import ipaddress
nets = [ipaddress.ip_network(n) for n in ("100.96.0.0/12", "fd00:96::/64")]
n = 0
for line in open("/proc/net/nf_conntrack"):
    src = next((w[4:] for w in line.split() if w.startswith("src=")), None)
    if src and any(ipaddress.ip_address(src) in net for net in nets):
        n += 1
print(n)
'
}

# wait_pool_conntrack SECS: waits until the exit tracks no flow of a pool address;
# prints the count left.
wait_pool_conntrack() {
  local n i
  for ((i = 0; i < $1 * 10; i++)); do
    n=$(pool_conntrack)
    [ "$n" = 0 ] && break
    sleep 0.1
  done
  echo "$n"
}

# When a circuit closes, the exit makes the kernel forget its flows before it gives
# the address to another client (else late replies reach the new one); a starting
# exit forgets an earlier run's.
case_exit_conntrack() {
  local before left t0 t1
  need_up || return
  an_in client 15 curl -sS -m 10 -o /dev/null "http://$AN_SERVER4/" || fail "HTTP through the tunnel fails" || return
  an_in client 15 curl -sS -m 10 -o /dev/null "http://[$AN_SERVER6]/" || fail "HTTP over IPv6 through the tunnel fails" || return
  an_in client 15 getent hosts "$AN_DNS_NAME" >/dev/null || fail "DNS through the tunnel fails" || return
  before=$(pool_conntrack)
  [ "$before" -gt 0 ] || fail "control: the exit tracks no flow of a pool address" || return
  t0=$(an_now_ms)
  ensure_down
  left=$(wait_pool_conntrack 5)
  t1=$(an_now_ms)
  [ "$left" = 0 ] || fail "$left of $before tracked flows of pool addresses left 5 s after the client's circuits closed" || return
  note "client down: the exit's $before tracked flows of pool addresses forgotten within $((t1 - t0)) ms"
  # The exit stops while its circuits are open (no circuit closes at the exit), so
  # their flows stay tracked; the next exit must forget them when it starts. The
  # relays restart with it (in the order gw1, gw2, exit, so each announces itself to
  # the bootstrap gw1 again), since a relay keeps its link to the exit that went
  # away, which the new exit process does not answer.
  need_up || return
  an_in client 15 curl -sS -m 10 -o /dev/null "http://$AN_SERVER4/" || fail "HTTP through the tunnel fails" || return
  an_stop exit TERM 10
  an_stop client-up TERM 10
  an_stop gw2 TERM 5
  an_stop gw1 TERM 5
  before=$(pool_conntrack)
  [ "$before" -gt 0 ] || fail "control: no tracked flow of a pool address left after the exit stopped" || return
  ensure_gateways || fail "the gateways did not start again: $GW_REASON" || return
  left=$(pool_conntrack)
  [ "$left" = 0 ] || fail "the restarted exit left $left tracked flows of an earlier run's pool addresses" || return
  note "exit stopped with $before tracked flows of pool addresses open; started again: 0 left"
}

# A middle gateway killed (SIGKILL) during steady fetches and started again 3 s later
# (issue 25): the entry's link to the dead gw2 dies within 3 s of silence (PROTOCOL §7)
# and destroys the client's circuit, the client rebuilds over a new link to the
# restarted gw2, and new fetches work again within 5 s of gw2's start. A fetch opens
# a new TCP connection every 0.5 s or so (1 s timeout each), 40 in all.
case_middle_restart() {
  local fetches=$AN_DIR/restart-fetches.txt dl=$AN_DIR/restart-download.txt pid dlpid killed restarted back gap rc ended rmem
  need_up || return
  logs "$AN_DIR/client-up.log" "$AN_DIR/gw1.log" "$AN_DIR/gw2.log" "$dl"
  # A paced download that is running when gw2 dies: it must end with an RST (curl's
  # status 56, "Connection reset by peer") within 5 s, not hang until its timeout.
  # Small receive buffers for it, so that the reset reaches curl (which reads only
  # 2 MB/s) within 0.25 s of arriving instead of after megabytes already received.
  rmem=$(ip netns exec client sysctl -n net.ipv4.tcp_rmem | tr -s '\t ' ' ')
  ip netns exec client sysctl -q -w net.ipv4.tcp_rmem="4096 131072 524288" || fail "cannot set tcp_rmem" || return
  (
    an_in client 70 curl -sS -m 60 --limit-rate 2M -o /dev/null "http://$AN_SERVER4/big.bin" 2>&1
    echo "status $? at $(an_now_ms)"
  ) >"$dl" &
  dlpid=$!
  (
    for _ in $(seq 1 40); do
      echo "$(an_now_ms) $(an_in client 3 curl -s -m 1 -o /dev/null -w '%{http_code}' "http://$AN_SERVER4/" 2>/dev/null)"
      sleep 0.5
    done
  ) >"$fetches" &
  pid=$!
  sleep 2
  an_stop gw2 KILL 5
  killed=$(an_now_ms)
  sleep 3
  an_start_gateway gw2 2>>"$AN_DIR/start-gw2.err" || { wait "$pid" "$dlpid"; ip netns exec client sysctl -q -w net.ipv4.tcp_rmem="$rmem"; fail "gw2 did not start again"; return 1; }
  restarted=$(an_now_ms)
  wait "$pid"
  wait "$dlpid"
  ip netns exec client sysctl -q -w net.ipv4.tcp_rmem="$rmem"
  read -r rc ended < <(awk '$1 == "status" {print $2, $4}' "$dl")
  [ "${rc:-}" = 56 ] && grep -q 'reset' "$dl" ||
    fail "the download running when gw2 died did not end with a reset: $(tr '\n' ' ' <"$dl")" || return
  [ $((ended - killed)) -le 5000 ] ||
    fail "the download running when gw2 died was reset only $((ended - killed)) ms after (target 5,000)" || return
  grep -q ' 200$' < <(awk -v t="$killed" '$1 < t' "$fetches") || fail "no fetch worked before the kill" || return
  back=$(awk -v t="$restarted" '$1 >= t && $2 == "200" {print $1; exit}' "$fetches")
  [ -n "$back" ] || fail "no fetch worked after gw2 started again: $(tail -3 "$fetches" | tr '\n' ' ')" || return
  gap=$(awk -v k="$killed" '$1 >= k && $2 == "200" {print $1 - k; exit}' "$fetches")
  note "fetches work again $((back - restarted)) ms after gw2's restart ($gap ms after its death, $((restarted - killed)) ms down); $(grep -c ' 200$' "$fetches") of 40 fetches worked; the running download was reset $((ended - killed)) ms after the death"
  [ $((back - restarted)) -le 5000 ] || fail "new fetches worked again only $((back - restarted)) ms after gw2's restart (target 5,000)" || return
}

# The exit stopped with SIGTERM and started again at once, as a service restart
# does: it tells gw2 that it stops (CLOSE), the client rebuilds at once, and gw2
# makes a new link to the new exit. New fetches (one every 0.25 s) must work again
# within 5 s of the exit's start. AN_RESTART_RUNS restarts (default 1).
case_exit_restart() {
  local run backs=''
  need_up || return
  logs "$AN_DIR/client-up.log" "$AN_DIR/exit.log" "$AN_DIR/gw2.log"
  for run in $(seq 1 "${AN_RESTART_RUNS:-1}"); do
    exit_restart_run "$run" || return
    backs="$backs $EXIT_BACK"
  done
  [ "${AN_RESTART_RUNS:-1}" -gt 1 ] &&
    note "$AN_RESTART_RUNS restarts: a new fetch done after the exit's start, p50 $(tr ' ' '\n' <<<"$backs" | grep . | sort -n | awk '{v[NR] = $1} END {printf "%d ms, max %d ms", v[int((NR + 1) / 2)], v[NR]}')"
  return 0
}

# exit_restart_run RUN: one restart of case_exit_restart; EXIT_BACK is its time.
exit_restart_run() {
  local fetches=$AN_DIR/exit-restart-fetches.txt code stopped started back ok
  code=$(an_in client 5 curl -s -m 2 -o /dev/null -w '%{http_code}' "http://$AN_SERVER4/?before-exit-restart-$1" 2>/dev/null)
  [ "$code" = 200 ] || fail "run $1: a fetch before the restart got $code" || return
  an_stop exit TERM 10
  stopped=$(an_now_ms)
  an_start_gateway exit 2>>"$AN_DIR/start-exit.err" || fail "run $1: the exit did not start again" || return
  started=$(an_now_ms)
  ok=$(an_fetch_until_ok client "http://$AN_SERVER4/?exit-restart-$1" "$fetches")
  back=${ok:+$((ok - started))}
  [ -n "$back" ] || fail "run $1: no fetch worked within 12 s of the exit's start" || return
  note "run $1: a new fetch done $back ms after the exit's start ($((back + started - stopped)) ms after it stopped)"
  [ "$back" -le 5000 ] || fail "run $1: traffic flowed again only $back ms after the exit's start (target 5,000)" || return
  EXIT_BACK=$back
}

case_kill_switch() {
  local out n fails=()
  need_up || return
  logs "$AN_DIR/ks.txt"
  an_stop client-up KILL 5
  [ "$AN_RC" = 137 ] || note "(status after SIGKILL: $AN_RC)"
  start_capture ks "$LEAK" || fail "tcpdump did not start" || return
  an_in client 10 ping -n -q -c 2 -W 1 -w 4 "$AN_SERVER4" >/dev/null 2>&1 && fails+=("ping $AN_SERVER4 works")
  an_in client 10 ping -6 -n -q -c 2 -W 1 -w 4 "$AN_SERVER6" >/dev/null 2>&1 && fails+=("ping $AN_SERVER6 works")
  an_in client 10 curl -s --max-time 5 -o /dev/null "http://$AN_SERVER4/" && fails+=("curl http://$AN_SERVER4/ works")
  an_in client 10 curl -s --max-time 5 -o /dev/null "http://[$AN_SERVER6]/" && fails+=("curl http://[$AN_SERVER6]/ works")
  an_in client 15 getent hosts "$AN_DNS_NAME" >/dev/null && fails+=("getent hosts $AN_DNS_NAME works")
  # cont, a host routed through the client (it reached the servers before `up`).
  an_in cont 10 ping -n -q -c 2 -W 1 -w 4 "$AN_SERVER4" >/dev/null 2>&1 && fails+=("ping $AN_SERVER4 from cont works")
  an_in cont 10 ping -6 -n -q -c 2 -W 1 -w 4 "$AN_SERVER6" >/dev/null 2>&1 && fails+=("ping $AN_SERVER6 from cont works")
  an_in cont 10 curl -s --max-time 5 -o /dev/null "http://$AN_SERVER4/" && fails+=("curl http://$AN_SERVER4/ from cont works")
  sleep 0.5
  stop_capture ks
  n=$CAP_COUNT
  [ "$n" -eq 0 ] || fails+=("$n packets on the wire: $(head -3 "$AN_DIR/ks.txt" | cut -c1-120 | tr '\n' ';')")
  if ip -n client link show anon0 >/dev/null 2>&1; then out="anon0 still there"; else out="anon0 gone"; fi
  [ ${#fails[@]} -eq 0 ] || fail "after SIGKILL of the daemon: ${fails[*]}" || return
  note "after SIGKILL ($out): ping, curl, DNS fail, also from cont (routed through the client); 0 packets on the wire"
}

# `up` after a SIGKILL, with a config whose entry changed (gw2 -> gw1 -> exit): the
# table left behind lets out only the old entry, gw1, so `up` must let the new entry
# through first, without letting anything else out, and then come up.
case_restart_new_entry() {
  local code gw1 gw2 filter
  need_up || return
  an_stop client-up KILL 5
  gw1=$(an_v4 gw1)
  gw2=$(an_v4 gw2)
  {
    echo '[client]'
    printf '\n[[client.path]]\naddr = "%s:%s"\nkey = "%s"\n' "$gw2" "$AN_PORT" "$(cat "$AN_DIR/gw2.pub")"
    printf '\n[[client.path]]\naddr = "%s:%s"\nkey = "%s"\n' "$gw1" "$AN_PORT" "$(cat "$AN_DIR/gw1.pub")"
    printf '\n[[client.path]]\naddr = "%s:%s"\nkey = "%s"\n' "$(an_v4 exit)" "$AN_PORT" "$(cat "$AN_DIR/exit.pub")"
    printf '\n[tunnel]\nstate_dir = "%s"\n' "$AN_DIR/client-state"
  } >"$AN_DIR/swapped.toml"
  filter="not arp and not (icmp6 and ip6[40] >= 133 and ip6[40] <= 136) and not (udp and src host $C4 and (dst host $gw1 or dst host $gw2) and dst port $AN_PORT) and not (udp and dst host $C4 and (src host $gw1 or src host $gw2) and src port $AN_PORT)"
  logs "$AN_DIR/restart.txt" "$AN_DIR/client-up.log"
  start_capture restart "$filter" || fail "tcpdump did not start" || return
  an_start_client "$AN_DIR/swapped.toml" 20 ||
    { stop_capture restart; fail "'up' after a SIGKILL, with a new entry, did not come up: $(tail -1 "$AN_DIR/client-up.log")"; return 1; }
  grep -q "entry $gw2:$AN_PORT" "$AN_DIR/client-up.log" ||
    { stop_capture restart; fail "not through the new entry: $(grep '^anonnet up:' "$AN_DIR/client-up.log")"; return 1; }
  code=$(ip netns exec client curl -sS -m 10 -o /dev/null -w '%{http_code}' "http://$AN_SERVER4/" 2>&1)
  stop_capture restart
  [ "$code" = 200 ] || fail "HTTP through the new entry: $code" || return
  [ "$CAP_COUNT" = 0 ] ||
    fail "$CAP_COUNT packets other than the gateways' UDP on the client's wire: $(head -3 "$AN_DIR/restart.txt" | tr '\n' ';')" || return
  # Leave it as the kill-switch case did, for the down case.
  an_stop client-up KILL 5
  note "$(grep -m1 '^anonnet up:' "$AN_DIR/client-up.log" | cut -c1-120)"
  note "HTTP 200 through it; 0 packets on the client's wire but UDP with gw1 and gw2"
}

# status and down with a live daemon (issue 16): `anonnet status --json` shows the
# circuit through gw1, gw2 and the exit, the kill switch armed; a user other than root
# is refused; `anonnet down` asks the running `up` to stop, which exits 0 by itself
# and leaves everything as before it; then `status` says nothing runs.
case_status_down_live() {
  local out rc js
  need_up || return
  js=$AN_DIR/status.json
  an_in client 20 curl -sS --max-time 10 -o /dev/null "http://$AN_SERVER4/" || fail "a fetch through the tunnel failed" || return
  an_in client 10 "$AN_BIN" status --json >"$js" 2>"$AN_DIR/status.err" ||
    fail "status --json failed: $(tail -1 "$AN_DIR/status.err")" || return
  out=$(python3 - "$js" "$AN_DIR/client.toml" <<'EOF'
import json, sys, tomllib
v = json.load(open(sys.argv[1]))
c = v["client"]
path = tomllib.load(open(sys.argv[2], "rb"))["client"]["path"]
want = [h["addr"].rsplit(":", 1)[0].strip("[]") for h in path]
bad = []
if v.get("role") != "client": bad.append(f"role {v.get('role')}")
if c.get("state") != "up": bad.append(f"state {c.get('state')}")
if v.get("kill_switch") is not True: bad.append("kill switch not armed")
if c.get("tun") != "anon0": bad.append(f"tun {c.get('tun')}")
hops = [[h["addr"].rsplit(":", 1)[0].strip("[]") for h in l["hops"]] for x in c["circuits"] for l in x["legs"] if x["up"]]
if want not in hops: bad.append(f"no circuit through {want}: {hops}")
keys = [h["key"] for x in c["circuits"] for l in x["legs"] for h in l["hops"]]
if not keys or any(len(k) != 8 for k in keys): bad.append(f"keys {keys}")
up = [l for x in c["circuits"] for l in x["legs"] if x["up"] and l["hops"]]
for l in up:
    age, hs = l.get("age_s"), l.get("last_handshake_s_ago")
    if not (isinstance(age, int) and isinstance(hs, int) and 0 <= hs <= age): bad.append(f"leg {l['circuit']}: age {age}, handshake {hs} s ago")
    if not (isinstance(l.get("bytes_sent"), int) and isinstance(l.get("bytes_received"), int)): bad.append(f"leg {l['circuit']}: bytes {l.get('bytes_sent')} out {l.get('bytes_received')} in")
    p = l.get("padding_percent")
    if not (p is None and l.get("bytes_sent") == 0 or isinstance(p, (int, float)) and 0 <= p <= 100): bad.append(f"leg {l['circuit']}: padding {p}%")
busiest = max(up, key=lambda l: l["bytes_received"] or 0) if up else {}
# The page fetched just before went through one of them, both ways.
if not (busiest.get("bytes_sent", 0) > 1000 and busiest.get("bytes_received", 0) > 1000): bad.append(f"no leg carried the fetch: {busiest}")
print("; ".join(bad) if bad else f"ok {len(c['circuits'])} circuit(s), hops {hops[0]}; busiest leg: age {busiest['age_s']} s, handshake {busiest['last_handshake_s_ago']} s ago, {busiest['bytes_sent']} B out, {busiest['bytes_received']} B in, {busiest['padding_percent']:.1f}% padding")
EOF
)
  [ "${out%% *}" = ok ] || fail "status --json: $out" || return
  note "status --json: $out"
  an_in client 10 "$AN_BIN" status >"$AN_DIR/status.txt" 2>&1 || fail "status failed: $(tail -1 "$AN_DIR/status.txt")" || return
  grep -q 'kill switch armed' "$AN_DIR/status.txt" || fail "status does not say the kill switch is armed: $(head -1 "$AN_DIR/status.txt")" || return
  grep -Eq '^      age [0-9]+ s, handshake [0-9]+ s ago; [0-9.]+ [KMG]?i?B out, [0-9.]+ [KMG]?i?B in' "$AN_DIR/status.txt" ||
    fail "status shows no leg's age, handshake and bytes: $(grep -m1 '^    leg' "$AN_DIR/status.txt")" || return
  out=$(ip netns exec client setpriv --reuid=65534 --regid=65534 --clear-groups "$AN_BIN" status 2>&1)
  rc=$?
  [ "$rc" != 0 ] && grep -q 'only root' <<<"$out" || fail "status as nobody: status $rc: $(tail -1 <<<"$out")" || return
  out=$(timeout -k 2 30 ip netns exec client "$AN_BIN" down 2>&1)
  rc=$?
  printf '%s\n' "$out" >"$AN_DIR/down-live.log"
  logs "$AN_DIR/down-live.log" "$AN_DIR/client-up.log"
  [ "$rc" = 0 ] || fail "down with a live daemon exited with $rc: $(tail -1 <<<"$out")" || return
  grep -q 'stopped and removed what it set up' <<<"$out" || fail "down did not ask the daemon: $(tail -1 <<<"$out")" || return
  if an_running client-up; then an_stop client-up KILL 5; fail "the daemon still runs after down"; return 1; fi
  an_stop client-up TERM 1
  [ "$AN_RC" = 0 ] || fail "the daemon exited with $AN_RC after down asked it to stop" || return
  same_as_before client "$SNAP_CLIENT" || return
  out=$(an_in client 10 "$AN_BIN" status 2>&1)
  rc=$?
  [ "$rc" != 0 ] && grep -q 'no `anonnet up` runs' <<<"$out" || fail "status without a daemon: status $rc: $(tail -1 <<<"$out")" || return
  note "status as nobody refused; down stopped the live daemon (status 0) and everything is as before up; status then exits $rc"
  # Another user's process holding the abstract name: status does not trust it, and
  # up runs without a control socket, saying so.
  logs "$AN_DIR/squat.log"
  an_start squat client "$AN_DIR/squat.log" setpriv --reuid=65534 --regid=65534 --clear-groups \
    "$(an_python)" -c 'import socket, time; s = socket.socket(socket.AF_UNIX); s.bind("\0anonnet/client"); s.listen(); print("bound", flush=True); time.sleep(60)'
  an_wait_log "$AN_DIR/squat.log" '^bound' 10 "${AN_PID[squat]}" || fail "the squatter did not bind" || return
  out=$(an_in client 10 "$AN_BIN" status 2>&1)
  rc=$?
  [ "$rc" != 0 ] && grep -q 'held by uid 65534' <<<"$out" ||
    { an_stop squat KILL 2; fail "status with a squatter: status $rc: $(tail -1 <<<"$out")"; return 1; }
  need_up || { an_stop squat KILL 2; return 1; }
  grep -q 'held by uid 65534' "$AN_DIR/client-up.log" ||
    { an_stop squat KILL 2; fail "up did not say that another user holds its control socket"; return 1; }
  an_stop squat KILL 2
  note "with the name held by uid 65534: status refuses to ask it, up runs without a control socket and says so"
}

# `anonnet status --gateway PORT` in the gateways' namespaces while the client's
# traffic flows through them: the circuits relayed and the cells, an exit's counters;
# refused to another user; status 1 for a port no gateway listens from.
case_gateway_status() {
  local out rc ns js
  need_up || return
  an_in client 10 ping -n -q -c 2 -W 2 "$AN_SERVER4" >/dev/null || fail "no traffic through the tunnel" || return
  for ns in gw1 gw2 exit; do
    js=$AN_DIR/status-$ns.json
    an_in "$ns" 10 "$AN_BIN" status --gateway "$AN_PORT" --json >"$js" 2>"$js.err" ||
      fail "$ns: status --gateway failed: $(tail -1 "$js.err")" || return
    out=$("$(an_python)" - "$js" "$ns" <<'EOF'
import json, sys
v = json.load(open(sys.argv[1]))
role = "exit" if sys.argv[2] == "exit" else "gateway"
bad = []
if v.get("role") != role: bad.append(f"role {v.get('role')}")
if v.get("relayed_circuits", 0) < 1: bad.append(f"relayed_circuits {v.get('relayed_circuits')}")
if role == "gateway" and v["node"].get("relayed_forward", 0) < 1: bad.append("no cell relayed forward")
if role == "exit" and v.get("exit", {}).get("forwarded", 0) < 1: bad.append(f"exit {v.get('exit')}")
print("; ".join(bad) if bad else f"ok {v['relayed_circuits']} circuit(s), {v['node']['relayed_forward']} cells relayed forward, exit {v.get('exit', {}).get('forwarded', '-')} packets out")
EOF
)
    [ "${out%% *}" = ok ] || fail "$ns: status --gateway --json: $out" || return
    note "$ns: $out"
  done
  an_in exit 10 "$AN_BIN" status --gateway "$AN_PORT" >"$AN_DIR/status-exit.txt" 2>&1 || fail "exit: status --gateway failed" || return
  grep -q '^anonnet gateway (pid [0-9]*, exit): [0-9]* circuits relayed now' "$AN_DIR/status-exit.txt" &&
    grep -q '^  exit: .*forwarded [0-9]' "$AN_DIR/status-exit.txt" || fail "exit: status --gateway: $(head -1 "$AN_DIR/status-exit.txt")" || return
  out=$(ip netns exec gw1 setpriv --reuid=65534 --regid=65534 --clear-groups "$AN_BIN" status --gateway "$AN_PORT" 2>&1)
  rc=$?
  [ "$rc" != 0 ] && grep -q 'only root' <<<"$out" || fail "status --gateway as nobody: status $rc: $(tail -1 <<<"$out")" || return
  out=$(an_in gw1 10 "$AN_BIN" status --gateway $((AN_PORT + 1)) 2>&1)
  rc=$?
  [ "$rc" = 1 ] && grep -q "no gateway on port $((AN_PORT + 1)) runs" <<<"$out" || fail "status --gateway for a free port: status $rc: $(tail -1 <<<"$out")" || return
  note "$(head -1 "$AN_DIR/status-exit.txt"); nobody refused; a free port: status 1"
}

# `--metrics`: every daemon of the testbed serves its metrics on $AN_METRICS in its
# namespace. Scraped with curl while traffic flows (and after one packet the exit
# policy refuses): the client's circuits and TUN packets, the relays' circuits,
# cells and handshakes, the exit's forwarded and refused packets; a counter grows
# between two scrapes; another path gives 404.
case_metrics() {
  local ns out url="http://$AN_METRICS/metrics"
  need_up || return
  an_in client 10 ping -n -q -c 2 -W 2 "$AN_SERVER4" >/dev/null || fail "no traffic through the tunnel" || return
  tcp_connect "$AN_SERVER4" 25 >/dev/null
  for ns in client gw1 gw2 exit; do
    an_in "$ns" 10 curl -sS -f -m 5 -o "$AN_DIR/metrics-$ns.txt" "$url" 2>"$AN_DIR/metrics-$ns.err" ||
      fail "$ns: curl $url: $(tail -1 "$AN_DIR/metrics-$ns.err")" || return
  done
  an_in client 10 ping -n -q -c 3 -W 2 "$AN_SERVER4" >/dev/null
  an_in client 10 curl -sS -f -m 5 -o "$AN_DIR/metrics-client2.txt" "$url" 2>/dev/null || fail "client: second scrape failed" || return
  out=$("$(an_python)" - "$AN_DIR" <<'EOF'
import re, sys
d = sys.argv[1]
def load(name):
    text = open(f"{d}/metrics-{name}.txt").read()
    v = {}
    for line in text.splitlines():
        m = re.fullmatch(r'([a-z_]+(?:\{[^}]*\})?) (\S+)', line)
        if m: v[m.group(1)] = float(m.group(2))
    return text, v
bad, said = [], []
want = {
    "client": ['anonnet_pool_circuits{state="up"}', "anonnet_circuits_up_total",
               'anonnet_tun_packets_total{direction="in"}', 'anonnet_tun_packets_total{direction="out"}'],
    "gw1": ["anonnet_relayed_circuits", "anonnet_node_relayed_forward_total", 'anonnet_handshakes_total{budget="build"}'],
    "gw2": ["anonnet_relayed_circuits", "anonnet_node_relayed_backward_total", 'anonnet_handshakes_total{budget="link"}'],
    "exit": ["anonnet_relayed_circuits", "anonnet_exit_forwarded_total", "anonnet_exit_rejected_policy_total",
             'anonnet_tun_packets_total{direction="out"}'],
}
role = {"client": "client", "gw1": "gateway", "gw2": "gateway", "exit": "exit"}
for ns, series in want.items():
    text, v = load(ns)
    if not text.endswith("# EOF\n"): bad.append(f"{ns}: no # EOF")
    if f'anonnet_build_info{{role="{role[ns]}"' not in text: bad.append(f"{ns}: no build_info of role {role[ns]}")
    for s in series + ['anonnet_datagrams_total{direction="in"}', 'anonnet_datagrams_total{direction="out"}']:
        if v.get(s, 0) < 1: bad.append(f"{ns}: {s} = {v.get(s)}")
    said.append(f"{ns} {len(v)} series")
_, a = load("client"); _, b = load("client2")
k = 'anonnet_datagrams_total{direction="out"}'
if not b.get(k, 0) > a.get(k, 0): bad.append(f"client: {k} did not grow ({a.get(k)} -> {b.get(k)})")
_, x = load("exit")
said.append(f"exit forwarded {x.get('anonnet_exit_forwarded_total', 0):.0f}, refused by policy {x.get('anonnet_exit_rejected_policy_total', 0):.0f}")
print("; ".join(bad) if bad else "ok " + ", ".join(said))
EOF
)
  [ "${out%% *}" = ok ] || fail "metrics: $out" || return
  note "${out#ok }"
  out=$(an_in gw1 10 curl -s -m 5 -o /dev/null -w '%{http_code}' "http://$AN_METRICS/" 2>&1)
  [ "$out" = 404 ] || fail "GET / answered $out, not 404" || return
  note "client's datagrams out grew between two scrapes; GET / is 404"
}

# SIGHUP to the exit gateway: it re-reads its config file without a restart (same
# process). A rule added to exit.policy refuses port 443 from the next packet on and
# shows in the reload's log line; a file that does not load changes nothing and is
# named; the original file, reloaded, opens 443 again (so later cases find it as
# before, also when this one fails).
# hup_exit PATTERN: SIGHUP to the exit, then waits (10 s) for one more line matching
# PATTERN in its log than before.
hup_exit() {
  local pid=${AN_PID[exit]} n0 i
  n0=$(grep -Ec -- "$1" "$AN_DIR/exit.log")
  an_alive "$pid" "$(an_pid_starttime "$pid")" || fail "the exit gateway (pid $pid) is not running" || return
  kill -HUP "$pid"
  for ((i = 0; i < 100; i++)); do
    [ "$(grep -Ec -- "$1" "$AN_DIR/exit.log")" -gt "$n0" ] && return 0
    sleep 0.1
  done
  fail "no new line matching '$1' in the exit's log within 10 s of SIGHUP"
}
http_code() { # PORT: the HTTP status of GET / on the server through the tunnel
  an_in client 20 curl -sS --max-time 5 -o /dev/null -w '%{http_code}' "http://$AN_SERVER4:$1/" 2>/dev/null
}
reload_policy() {
  local cfg=$1 r code errno ms
  [ "$(http_code 443)" = 200 ] || fail "before: $AN_SERVER4:443 does not work" || return
  sed '/^\[exit\]$/a policy = ["reject *:443"]' "$cfg.orig" >"$cfg"
  hup_exit '(reloaded|SIGHUP)' || return
  r=$(grep -E 'reloaded|SIGHUP' "$AN_DIR/exit.log" | tail -1)
  [[ $r == *"reloaded $cfg: "*'exit policy now "'*443* ]] || fail "the reload's log line: $r" || return
  note "exit: ${r#* INFO }"
  r=$(tcp_connect "$AN_SERVER4" 443)
  read -r code errno ms _ <<<"$r"
  [ "$code" = ERR ] && [ "$ms" -lt 2000 ] || fail "TCP to :443 after the reload: $r (should be refused at once)" || return
  note "TCP $AN_SERVER4:443 refused in $ms ms: ${r#ERR * * }"
  [ "$(http_code 80)" = 200 ] || fail "after the reload, :80 does not work either" || return
  sed '/^\[exit\]$/a policy = ["reject *:99999"]' "$cfg.orig" >"$cfg"
  hup_exit '(reloaded|SIGHUP)' || return
  r=$(grep -E 'reloaded|SIGHUP' "$AN_DIR/exit.log" | tail -1)
  [[ $r == *" ERROR SIGHUP: $cfg: "*"nothing changed" ]] || fail "a file that does not load: $r" || return
  note "exit: ${r#* ERROR }"
  r=$(tcp_connect "$AN_SERVER4" 443)
  [ "${r%% *}" = ERR ] || fail "the bad file changed the policy: TCP to :443: $r" || return
  cp "$cfg.orig" "$cfg"
  hup_exit 'reloaded ' || return
  [ "$(http_code 443)" = 200 ] || fail "the original file reloaded: :443 still does not work" || return
}
case_reload() {
  local cfg=$AN_DIR/exit.toml pid
  need_up || return
  pid=${AN_PID[exit]}
  cp "$cfg" "$cfg.orig"
  if ! reload_policy "$cfg"; then
    cp "$cfg.orig" "$cfg"
    kill -HUP "$pid" 2>/dev/null
    return 1
  fi
  [ "${AN_PID[exit]}" = "$pid" ] && an_alive "$pid" || fail "the exit gateway did not keep running" || return
  note "the original policy back: :443 works; the exit ran throughout (pid $pid)"
}

case_down() {
  local out
  [ "$HAS_DOWN" = 1 ] || fail "the binary has no 'down' subcommand" || return
  # After a SIGKILL, as the kill-switch case leaves it (done here if run alone).
  if an_running client-up; then an_stop client-up KILL 5; fi
  [ -f "$AN_DIR/client-up.log" ] || { need_up || return; an_stop client-up KILL 5; }
  out=$(timeout -k 2 30 ip netns exec client "$AN_BIN" down --config "$AN_DIR/client.toml" 2>&1)
  local rc=$?
  printf '%s\n' "$out" >"$AN_DIR/down.log"
  logs "$AN_DIR/down.log"
  [ "$rc" = 0 ] || fail "anonnet down exited with $rc" || return
  same_as_before client "$SNAP_CLIENT" || return
  an_in client 10 ping -n -q -c 1 -W 2 "$AN_SERVER4" >/dev/null || fail "plain ping $AN_SERVER4 fails after down" || return
  an_in client 15 getent hosts "$AN_DNS_NAME" >/dev/null || fail "plain DNS fails after down" || return
  out=$(timeout -k 2 30 ip netns exec client "$AN_BIN" down --config "$AN_DIR/client.toml" 2>&1)
  note "routes, rules, nft, links, addresses, resolv.conf as before up; plain ping and DNS work (down again: status $?)"
}

# booted CMD...: runs CMD (30 s at most) in client as on a host that just booted: in its own mount
# namespace, with /run an empty tmpfs (as after every boot) and /var/lib the test's
# $AN_DIR/varlib (on disk, kept across "boots"), so the default state_dir is used
# without touching the machine's own /var/lib.
BOOT=(unshare -m --propagation private sh -c
  'mount -t tmpfs anonnet-boot /run && mount --bind "$1" /var/lib && shift && exec "$@"'
  sh "$AN_DIR/varlib")
booted() { timeout -k 2 30 ip netns exec client "${BOOT[@]}" "$@"; }

# Undoes what a failed reboot-dns left: the daemon, its state, the namespace's resolver.
reboot_cleanup() {
  if an_running client-up; then an_stop client-up KILL 5; fi
  booted "$AN_BIN" down >>"$AN_DIR/reboot-down.log" 2>&1
  an_resolv client "$AN_SERVER4"
}

# A crash, then a reboot: the kernel's state is gone and /run starts empty, but files on
# disk stay, /etc/resolv.conf among them, still naming the tunnel's resolver. With the
# default state_dir, `anonnet down` after the reboot must put the original back.
case_reboot_dns() {
  local out rc prio fam
  [ "$HAS_DOWN" = 1 ] || fail "the binary has no 'down' subcommand" || return
  ensure_gateways || fail "gateways: $GW_REASON" || return
  ensure_down
  mkdir -p "$AN_DIR/varlib"
  sed '/^\[tunnel\]/,$d' "$AN_DIR/client.toml" >"$AN_DIR/default-state.toml"
  grep -q state_dir "$AN_DIR/default-state.toml" && { fail "could not drop state_dir from the config"; return 1; }
  logs "$AN_DIR/reboot-up.log" "$AN_DIR/reboot-down.log"
  an_start client-up client "$AN_DIR/reboot-up.log" "${BOOT[@]}" "$AN_BIN" up --config "$AN_DIR/default-state.toml"
  an_wait_log "$AN_DIR/reboot-up.log" '^anonnet up:' 20 "${AN_PID[client-up]}" ||
    { reboot_cleanup; fail "'up' with the default state_dir did not come up"; return 1; }
  grep -q 100.64.0.53 /etc/netns/client/resolv.conf ||
    { reboot_cleanup; fail "'up' did not point resolv.conf at the tunnel"; return 1; }
  an_stop client-up KILL 5
  # The reboot: what lived in the kernel goes (the TUN went with the process).
  ip netns exec client nft delete table inet anonnet 2>/dev/null
  for fam in -4 -6; do
    for prio in $(ip -n client "$fam" rule | awk -F: '/suppress_prefixlength|lookup 16718/ { print $1 }'); do
      ip -n client "$fam" rule del priority "$prio"
    done
  done
  out=$(booted "$AN_BIN" down 2>&1)
  rc=$?
  printf '%s\n' "$out" >"$AN_DIR/reboot-down.log"
  [ "$rc" = 0 ] || { reboot_cleanup; fail "anonnet down after the reboot exited with $rc: $(tail -1 <<<"$out")"; return 1; }
  same_as_before client "$SNAP_CLIENT" || { reboot_cleanup; return 1; }
  an_in client 15 getent hosts "$AN_DNS_NAME" >/dev/null || fail "plain DNS fails after down" || return
  note "after SIGKILL and a reboot (/run empty, kernel state gone), down: $(grep -m1 resolv <<<"$out" | cut -c1-80)"
  note "resolv.conf, routes, rules, nft as before up; plain DNS works"
}

# An upgrade after a crash: a release before the state directory moved kept its undo
# record and the saved resolv.conf in /run/anonnet (its default). This release's
# `anonnet down`, with the default /var/lib/anonnet, must move them over and undo
# everything. /run and /var/lib are the test's $AN_DIR/oldrun and $AN_DIR/oldlib,
# bound in a mount namespace of their own, so the machine's are never touched.
OLDBOOT=(unshare -m --propagation private sh -c
  'mount --bind "$1" /run && mount --bind "$2" /var/lib && shift 2 && exec "$@"'
  sh "$AN_DIR/oldrun" "$AN_DIR/oldlib")
old_cleanup() {
  if an_running client-up; then an_stop client-up KILL 5; fi
  timeout -k 2 30 ip netns exec client "${OLDBOOT[@]}" "$AN_BIN" down >>"$AN_DIR/old-down.log" 2>&1
  an_resolv client "$AN_SERVER4"
}
case_old_state_dir() {
  local out rc
  [ "$HAS_DOWN" = 1 ] || fail "the binary has no 'down' subcommand" || return
  ensure_gateways || fail "gateways: $GW_REASON" || return
  ensure_down
  rm -rf "$AN_DIR/oldrun" "$AN_DIR/oldlib"
  mkdir -p "$AN_DIR/oldrun" "$AN_DIR/oldlib"
  { sed '/^\[tunnel\]/,$d' "$AN_DIR/client.toml"; printf '\n[tunnel]\nstate_dir = "/run/anonnet"\n'; } >"$AN_DIR/old-state.toml"
  logs "$AN_DIR/old-up.log" "$AN_DIR/old-down.log"
  an_start client-up client "$AN_DIR/old-up.log" "${OLDBOOT[@]}" "$AN_BIN" up --config "$AN_DIR/old-state.toml"
  an_wait_log "$AN_DIR/old-up.log" '^anonnet up:' 20 "${AN_PID[client-up]}" ||
    { old_cleanup; fail "'up' with state_dir /run/anonnet did not come up"; return 1; }
  [ -f "$AN_DIR/oldrun/anonnet/client-state.toml" ] && [ -f "$AN_DIR/oldrun/anonnet/resolv.conf.orig" ] ||
    { old_cleanup; fail "no undo record and saved resolv.conf in the old state directory"; return 1; }
  an_stop client-up KILL 5
  out=$(timeout -k 2 30 ip netns exec client "${OLDBOOT[@]}" "$AN_BIN" down 2>&1)
  rc=$?
  printf '%s\n' "$out" >"$AN_DIR/old-down.log"
  [ "$rc" = 0 ] || { old_cleanup; fail "anonnet down exited with $rc: $(tail -1 <<<"$out")"; return 1; }
  grep -q 'moved /run/anonnet/client-state.toml to /var/lib/anonnet/client-state.toml' <<<"$out" ||
    { old_cleanup; fail "down did not say it moved the undo record: $(head -2 <<<"$out" | tr '\n' ' ')"; return 1; }
  [ -e "$AN_DIR/oldrun/anonnet/client-state.toml" ] && { old_cleanup; fail "the undo record stayed in /run/anonnet"; return 1; }
  same_as_before client "$SNAP_CLIENT" || { old_cleanup; return 1; }
  an_in client 15 getent hosts "$AN_DNS_NAME" >/dev/null || fail "plain DNS fails after down" || return
  note "down with the default state_dir moved /run/anonnet's undo record and resolv.conf over, and undid everything"
}

case_error_anon0_exists() {
  local out rc t0 t1
  need_up || return
  t0=$(an_now_ms)
  out=$(timeout -k 2 30 ip netns exec client "$AN_BIN" up --config "$AN_DIR/client.toml" 2>&1)
  rc=$?
  t1=$(an_now_ms)
  printf '%s\n' "$out" >"$AN_DIR/second-up.log"
  logs "$AN_DIR/second-up.log" "$AN_DIR/client-up.log"
  [ "$rc" != 124 ] || fail "a second 'up' did not give up within 30 s" || return
  [ "$rc" != 0 ] || fail "a second 'up' exited with status 0" || return
  grep -q 'another `anonnet up` runs in this network namespace' <<<"$out" ||
    fail "a second 'up' failed (status $rc) without saying that another runs: $(tail -1 <<<"$out")" || return
  note "second up: status $rc in $((t1 - t0)) ms: $(grep -m1 -o 'another .*' <<<"$out" | cut -c1-150)"
  an_running client-up || fail "the first 'up' died" || return
  an_in client 10 ping -n -q -c 2 -W 2 "$AN_SERVER4" >/dev/null || fail "the first tunnel no longer works" || return
  note "the first tunnel still works"
}

case_sigterm_cleanup() {
  need_up || return
  logs "$AN_DIR/client-up.log"
  an_in client 10 ping -n -q -c 1 -W 2 "$AN_SERVER4" >/dev/null || fail "the tunnel does not work before SIGTERM" || return
  an_stop client-up TERM 10
  [ "$AN_RC" != 124 ] || fail "'up' did not exit within 10 s of SIGTERM" || return
  [ "$AN_RC" = 0 ] || fail "'up' exited with status $AN_RC after SIGTERM" || return
  same_as_before client "$SNAP_CLIENT" || return
  an_in client 10 ping -n -q -c 1 -W 2 "$AN_SERVER4" >/dev/null || fail "plain ping fails after SIGTERM" || return
  note "status 0; everything as before up; plain ping works"
}

case_error_bad_gateway() {
  local out rc t0 t1
  [ "$HAS_UP" = 1 ] || fail "the binary has no 'up' subcommand" || return
  ensure_down
  an_client_config "$AN_DIR/bad.toml" "$AN_DIR/bad-state" "198.18.2.99:$AN_PORT"
  t0=$(an_now_ms)
  out=$(timeout -k 2 40 ip netns exec client "$AN_BIN" up --config "$AN_DIR/bad.toml" 2>&1)
  rc=$?
  t1=$(an_now_ms)
  printf '%s\n' "$out" >"$AN_DIR/bad-up.log"
  logs "$AN_DIR/bad-up.log"
  [ "$rc" != 124 ] || fail "'up' with an unreachable gateway still ran after 40 s" || return
  [ "$rc" = 69 ] || fail "'up' with an unreachable gateway exited with $rc, not 69 (the network failed)" || return
  [ $((t1 - t0)) -le 16000 ] || fail "'up' took $((t1 - t0)) ms to give up (more than ~15 s)" || return
  grep -q "hop 1 of 3 (198.18.2.99:$AN_PORT, key .*) did not answer" <<<"$out" || fail "the error does not name the entry: $(tail -1 <<<"$out")" || return
  note "status $rc after $((t1 - t0)) ms: $(grep -om1 'hop 1 of 3.*' <<<"$out" | cut -c1-160)"
  if ! same_as_before client "$SNAP_CLIENT"; then
    CASE_REASON="the failed 'up' left things behind: $CASE_REASON"
    ip netns exec client "$AN_BIN" down --config "$AN_DIR/bad.toml" >/dev/null 2>&1
    return 1
  fi
}

# v6_off NS 1|0: IPv6 switched off (1) in NS, as a VPS does, or on again (0) with
# the addresses and default route put back as lib.sh made them (eth0; the client's
# v-cont too).
v6_off() {
  local ns=$1 i=${AN_IDX[$1]}
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6="$2" net.ipv6.conf.default.disable_ipv6="$2" || return 1
  [ "$2" = 1 ] && return 0
  ip -n "$ns" -6 addr replace "2001:db8:$i::2/64" dev eth0 nodad || return 1
  ip -n "$ns" -6 route replace default via "2001:db8:$i::1" || return 1
  [ "$ns" = client ] || return 0
  ip -n client -6 addr replace 2001:db8:c1::1/64 dev v-cont nodad
}
v6_restore() {
  an_running client-up && an_stop client-up TERM 10
  an_stop exit TERM 5
  v6_off client 0
  v6_off exit 0
  an_start_gateway exit
}

# A client and an exit on hosts with IPv6 switched off (net.ipv6.conf.all and
# default.disable_ipv6 = 1, common on VPSes): both run IPv4 only, traffic flows, the
# kill switch is armed and `anonnet check` passes; then IPv6 is back as before.
case_ipv6_disabled() {
  local out rc
  [ "$HAS_UP" = 1 ] || fail "the binary has no 'up' subcommand" || return
  ensure_gateways || fail "$GW_REASON" || return
  ensure_down
  an_stop exit TERM 5
  v6_off exit 1 && v6_off client 1 || { v6_restore; fail "cannot switch IPv6 off"; return 1; }
  # The exit listens on IPv4 only: it has no IPv6 address left to bind.
  grep -v '^listen = ' "$AN_DIR/exit.toml" | sed "s|^listen_ports = |listen = [\"$(an_v4 exit)\"]\nlisten_ports = |" >"$AN_DIR/exit-v4.toml"
  logs "$AN_DIR/exit.log"
  an_start exit exit "$AN_DIR/exit.log" "$AN_BIN" gateway --exit --config "$AN_DIR/exit-v4.toml"
  if ! an_wait_log "$AN_DIR/exit.log" ' listening on ' 10 "${AN_PID[exit]}"; then
    out=$(tail -1 "$AN_DIR/exit.log")
    v6_restore
    fail "gateway --exit did not start with IPv6 off: $out"
    return 1
  fi
  if ! an_start_client "$AN_DIR/client.toml" 20; then
    out=$(tail -1 "$AN_DIR/client-up.log")
    v6_restore
    fail "up did not come up with IPv6 off: $out"
    return 1
  fi
  logs "$AN_DIR/client-up.log" "$AN_DIR/check-v6off.txt"
  out=$(ip -n client addr show dev anon0)
  if ! grep -q 'inet 100\.64\.0\.2/32' <<<"$out" || grep -q 'inet6 fd00' <<<"$out"; then
    v6_restore; fail "anon0 should have 100.64.0.2 only: $(tr '\n' ' ' <<<"$out")"; return 1
  fi
  grep -m1 -q '^anonnet up: anon0 100.64.0.2 mtu' "$AN_DIR/client-up.log" ||
    { v6_restore; fail "readiness line: $(grep -m1 '^anonnet up:' "$AN_DIR/client-up.log")"; return 1; }
  out=$(an_in client 20 curl -sS --max-time 10 -o /dev/null -w '%{http_code}' "http://$AN_DNS_NAME/" 2>&1)
  [ "$out" = 200 ] || { v6_restore; fail "HTTP by name through the tunnel: $out"; return 1; }
  an_in client 40 "$AN_BIN" check --server "http://$AN_SERVER4:$AN_WHOAMI_PORT/" >"$AN_DIR/check-v6off.txt" 2>&1
  rc=$?
  [ "$rc" = 0 ] && grep -q '^PASS kill-switch: armed' "$AN_DIR/check-v6off.txt" && grep -q '^PASS ipv6: no IPv6 route' "$AN_DIR/check-v6off.txt" ||
    { v6_restore; fail "check with IPv6 off: status $rc: $(grep -m1 '^FAIL' "$AN_DIR/check-v6off.txt")"; return 1; }
  note "IPv6 off on client and exit: exit listening, up on 100.64.0.2 only, HTTP 200 by name, check: $(tail -1 "$AN_DIR/check-v6off.txt")"
  note "$(grep '^PASS ipv6' "$AN_DIR/check-v6off.txt")"
  v6_restore || { fail "the exit did not start again with IPv6 on"; return 1; }
  same_as_before client "$SNAP_CLIENT" || return
}

# try_up NAME CONFIG: `anonnet up` that should fail; its output in $AN_DIR/NAME.log,
# TRY_RC its status, TRY_MS how long it took.
try_up() {
  local t0
  t0=$(an_now_ms)
  timeout -k 2 40 ip netns exec client "$AN_BIN" up --config "$2" >"$AN_DIR/$1.log" 2>&1
  TRY_RC=$?
  TRY_MS=$(($(an_now_ms) - t0))
  logs "$AN_DIR/$1.log"
}

# Errors that name the hop at fault and the cause, with exit status 69 (the network)
# or 78 (the config): a path whose last hop is no exit, a wrong key for the middle,
# a config with an unknown key; `discover` whose only bootstrap gateway is silent.
case_error_names_hop() {
  local cfg=$AN_DIR/blame.toml hop
  [ "$HAS_UP" = 1 ] || fail "the binary has no 'up' subcommand" || return
  ensure_gateways || fail "$GW_REASON" || return
  ensure_down
  # gw1 -> exit -> gw2: the last hop, gw2, is not an exit.
  {
    echo '[client]'
    for hop in "2.2 gw1" "4.2 exit" "3.2 gw2"; do
      printf '\n[[client.path]]\naddr = "198.18.%s:%s"\nkey = "%s"\n' "${hop% *}" "$AN_PORT" "$(cat "$AN_DIR/${hop#* }.pub")"
    done
    printf '\n[tunnel]\nstate_dir = "%s"\n' "$AN_DIR/blame-state"
  } >"$cfg"
  try_up blame-no-exit "$cfg"
  [ "$TRY_RC" = 69 ] || fail "no exit at the end: status $TRY_RC, not 69: $(tail -1 "$AN_DIR/blame-no-exit.log")" || return
  grep -q "hop 3 of 3 (198.18.3.2:$AN_PORT, key .*) is not an exit" "$AN_DIR/blame-no-exit.log" ||
    fail "no exit at the end: $(tail -1 "$AN_DIR/blame-no-exit.log")" || return
  [ "$TRY_MS" -le 3000 ] || fail "no exit at the end: named only after $TRY_MS ms" || return
  note "last hop no exit: status 69 in $TRY_MS ms: $(grep -o 'hop 3 of 3.*' "$AN_DIR/blame-no-exit.log" | cut -c1-110)"
  # The middle's key is another gateway's: gw2 ignores the handshake, which looks
  # like silence.
  an_client_config "$cfg" "$AN_DIR/blame-state" "198.18.2.2:$AN_PORT"
  hop=$("$AN_BIN" keygen --force --out "$AN_DIR/stray.key") || fail "keygen failed" || return
  sed -i "s|$(cat "$AN_DIR/gw2.pub")|$hop|" "$cfg"
  try_up blame-key "$cfg"
  [ "$TRY_RC" = 69 ] || fail "wrong middle key: status $TRY_RC, not 69: $(tail -1 "$AN_DIR/blame-key.log")" || return
  grep -q "hop 2 of 3 (198.18.3.2:$AN_PORT, key .*) did not answer: .*key given for it is wrong" "$AN_DIR/blame-key.log" ||
    fail "wrong middle key: $(tail -1 "$AN_DIR/blame-key.log")" || return
  [ "$TRY_MS" -le 16000 ] || fail "wrong middle key: named only after $TRY_MS ms" || return
  note "wrong middle key: status 69 in $TRY_MS ms, hop 2 named"
  printf '[client]\nhops = 3\n' >"$cfg"
  try_up blame-config "$cfg"
  [ "$TRY_RC" = 78 ] || fail "a config with an unknown key: status $TRY_RC, not 78: $(tail -1 "$AN_DIR/blame-config.log")" || return
  grep -q 'hops' "$AN_DIR/blame-config.log" || fail "the config error does not name the key: $(tail -1 "$AN_DIR/blame-config.log")" || return
  an_discovery_config "$cfg" "$AN_DIR/blame-state" "198.18.2.99:$AN_PORT"
  timeout -k 2 60 ip netns exec client "$AN_BIN" discover --config "$cfg" >"$AN_DIR/blame-discover.log" 2>&1
  TRY_RC=$?
  logs "$AN_DIR/blame-discover.log"
  [ "$TRY_RC" = 69 ] || fail "discover with a silent bootstrap: status $TRY_RC, not 69" || return
  grep -q "no gateway answered discovery; asked the bootstrap gateway(s) 198.18.2.99:$AN_PORT (key " "$AN_DIR/blame-discover.log" ||
    fail "discover with a silent bootstrap: $(tail -1 "$AN_DIR/blame-discover.log")" || return
  note "unknown config key: status 78; discover with a silent bootstrap: status 69, naming it"
  same_as_before client "$SNAP_CLIENT" || return
}

case_discovery() {
  local out n exits code
  [ "$HAS_UP" = 1 ] || fail "the binary has no 'up' subcommand" || return
  ensure_gateways || fail "$GW_REASON" || return
  ensure_down
  an_discovery_config "$AN_DIR/disc.toml" "$AN_DIR/disc-state" "198.18.2.2:$AN_PORT"
  # gw1 learns gw2 and the exit by gossip right after it starts; give it a moment.
  for _ in $(seq 50); do
    out=$(timeout 70 ip netns exec client "$AN_BIN" discover --json --config "$AN_DIR/disc.toml" 2>"$AN_DIR/discover.err") ||
      fail "discover failed: $(tail -2 "$AN_DIR/discover.err")" || return
    n=$(grep -c '"key"' <<<"$out")
    [ "$n" -ge 3 ] && break
    rm -rf "$AN_DIR/disc-state"
    sleep 0.2
  done
  printf '%s\n' "$out" >"$AN_DIR/discover.json"
  logs "$AN_DIR/discover.json" "$AN_DIR/discover.err"
  [ "$n" = 3 ] || fail "discover knows $n gateways, want 3 (gw1, gw2, exit)" || return
  exits=$(grep -c '"exit": true' <<<"$out")
  [ "$exits" = 1 ] || fail "discover knows $exits exits, want 1" || return
  for a in 198.18.2.2 198.18.3.2 198.18.4.2; do
    grep -q "\"$a\"" <<<"$out" || fail "discover does not list $a" || return
  done
  grep -Eq 'discovery done: .* [1-9][0-9]* refused' "$AN_DIR/discover.err" ||
    fail "gw2 (share = false) was not seen refusing: $(grep 'discovery done' "$AN_DIR/discover.err")" || return
  note "a client that knows only gw1 learned 3 gateways, 1 exit; gw2 refused to share, as configured"
  note "$(grep -o 'discovery done: .*' "$AN_DIR/discover.err" | tail -1)"
  [ -s "$AN_DIR/disc-state/descriptors.cache" ] || fail "no descriptor cache was written" || return
  an_start_client "$AN_DIR/disc.toml" 30 || fail "'up' with a discovered path did not come up: $(tail -3 "$AN_DIR/client-up.log")" || return
  grep -q 'through 3 hops' "$AN_DIR/client-up.log" || fail "the discovered path is not 3 hops: $(grep '^anonnet up:' "$AN_DIR/client-up.log")" || return
  code=$(ip netns exec client curl -sS -m 10 -o /dev/null -w '%{http_code}' "http://$AN_SERVER4/" 2>&1)
  [ "$code" = 200 ] || fail "HTTP through the discovered path: $code" || return
  [ -s "$AN_DIR/disc-state/guards.toml" ] || fail "no guard state was written" || return
  note "$(grep -m1 '^anonnet up:' "$AN_DIR/client-up.log")"
  # Per-destination routes: pings to 20 sites leave the exit from several circuits,
  # each with its own pool address, seen on the exit's TUN device.
  local cap=$AN_DIR/flows.pcap pid pools site
  ip netns exec exit tcpdump -n --immediate-mode -U -i anonexit0 -w "$cap" >/dev/null 2>"$cap.err" &
  pid=$!
  an_wait_log "$cap.err" 'listening on' 10 "$pid" || { kill "$pid"; fail "tcpdump on anonexit0 did not start"; return 1; }
  for site in $(seq 11 30); do
    ip netns exec client ping -c 1 -W 2 "198.18.0.$site" >/dev/null 2>&1 ||
      { kill "$pid"; fail "ping to 198.18.0.$site through the tunnel failed"; return 1; }
  done
  kill -INT "$pid"
  wait "$pid" 2>/dev/null
  pools=$(tcpdump -n -r "$cap" 2>/dev/null | grep 'ICMP echo request' | awk '{print $3}' | sort -u | wc -l)
  [ "$pools" -ge 2 ] || fail "20 destinations used $pools circuit(s) at the exit, want several" || return
  note "20 destinations left the exit from $pools circuits (distinct pool addresses)"
  ensure_down
  [ "$AN_RC" = 0 ] || fail "'up' exited with status $AN_RC after SIGTERM" || return
}

case_discovery_warm_cache() {
  local code
  [ -s "$AN_DIR/disc-state/descriptors.cache" ] || fail "no cache from the discovery case" || return
  ensure_gateways || fail "$GW_REASON" || return
  ensure_down
  # The only bootstrap gateway is unreachable: coming up proves the cache sufficed.
  an_discovery_config "$AN_DIR/warm.toml" "$AN_DIR/disc-state" "198.18.2.99:$AN_PORT"
  an_start_client "$AN_DIR/warm.toml" 20 || fail "'up' with a warm cache did not come up: $(tail -3 "$AN_DIR/client-up.log")" || return
  grep -q 'discovering gateways' "$AN_DIR/client-up.log" && { fail "'up' crawled although the cache had a path"; return 1; }
  code=$(ip netns exec client curl -sS -m 10 -o /dev/null -w '%{http_code}' "http://$AN_SERVER4/" 2>&1)
  [ "$code" = 200 ] || fail "HTTP with the cached path: $code" || return
  note "up from the cache alone (bootstrap 198.18.2.99 unreachable), HTTP 200"
  ensure_down
}

# The node counters a gateway printed when it stopped ("anonnet gateway stopping:
# {"node": {"name": N, ...}, ...}"): "name N" lines.
gateway_stats() {
  grep -o 'anonnet gateway stopping: {.*' "$AN_DIR/$1.log" | tail -1 | cut -d' ' -f4- |
    python3 -c 'import json, sys
for k, v in json.load(sys.stdin)["node"].items(): print(k, v)'
}
# The sum of a gateway's dropped_* counters.
gateway_drops() { gateway_stats "$1" | awk '/^dropped_/ { n += $2 } END { print n + 0 }'; }

# Fresh gateways and a fresh `anonnet up`: their counters then count the calling case
# only.
fresh_up() {
  local gw
  ensure_down
  for gw in gw1 gw2 exit; do
    an_running "$gw" && an_stop "$gw" TERM 10
  done
  need_up
}

# A client with valid keys (examples/hostile_client.rs, from the "internet") sends
# crafted cells through its own circuits gw1 -> gw2 -> exit, among them cells that
# make the entry's and the middle's output header sample all 0xFF (which used to
# panic them), while the honest client downloads 50 MiB through the same gateways.
# The README's "Run it for real" section, as written: its `cargo install` line, then
# its VPS block in exit and its laptop block in client, line by line. Changed (the
# README says so): the VPS's address and key, /usr/local and /etc/anonnet (the
# test's directories), /var/lib (the test's, bound in a mount namespace), the server
# `check` asks; the two daemons run in the background. `check` must pass 6 of 6 and
# the web server must see the VPS's address.
QS_ADDR=203.0.113.10
QS_KEY=the-key-keygen-printed-on-the-VPS
# qs_block NAME: the lines of the README's fenced block after <!-- quick-start: NAME -->.
qs_block() {
  awk -v m="<!-- quick-start: $1 -->" '$0 == m {f = 1; next} f && /^```sh/ {on = 1; next} on && /^```/ {exit} on' "$ROOT/README.md"
}
# qs_run MACHINE NS LINE...: the lines, edited, as one script in NS with /var/lib
# bound to the machine's directory; output in $QS/MACHINE.out.
qs_run() {
  local m=$1 ns=$2 script
  shift 2
  script=$(printf '%s\n' "$@")
  an_in "$ns" 120 env "PATH=$QS/usr/bin:$PATH" \
    unshare -m --propagation private sh -c 'mount --bind "$1" /var/lib && shift && exec "$@"' sh "$QS/$m-varlib" \
    bash -euxc "$script" >>"$QS/$m.out" 2>&1
}
# qs_edit MACHINE LINE: the line with the changes the case makes.
qs_edit() {
  local l=$2
  l=${l//\/usr\/local/$QS/usr}
  l=${l//\/etc\/anonnet/$QS/$1-etc}
  l=${l//$QS_ADDR/$(an_v4 exit)}
  l=${l//$QS_KEY/$QS_PUB}
  l=${l/anonnet check/anonnet check --server http://$AN_SERVER4:$AN_WHOAMI_PORT/}
  printf '%s' "$l"
}
# qs_machine MACHINE NS: its block; lines before a daemon run as one script, the
# daemon (`anonnet gateway`, `anonnet up`) starts in the background as qs-MACHINE.
qs_machine() {
  local m=$1 ns=$2 line ready
  local -a chunk=()
  while IFS= read -r line; do
    [ -n "$line" ] || continue
    line=$(qs_edit "$m" "$line")
    case $line in
      'anonnet gateway '* | 'anonnet up '*)
        if [ ${#chunk[@]} -gt 0 ]; then qs_run "$m" "$ns" "${chunk[@]}" || return; fi
        chunk=()
        ready='^anonnet up:'
        [ "${line#anonnet gateway}" != "$line" ] && ready=' listening on '
        an_start "qs-$m" "$ns" "$QS/$m-daemon.log" env "PATH=$QS/usr/bin:$PATH" \
          unshare -m --propagation private sh -c 'mount --bind "$1" /var/lib && shift && exec "$@"' sh "$QS/$m-varlib" \
          bash -c "exec ${line%%#*}"
        an_wait_log "$QS/$m-daemon.log" "$ready" 30 "${AN_PID[qs-$m]}" || return
        ;;
      *) chunk+=("$line") ;;
    esac
  done < <(qs_block "$m")
  [ ${#chunk[@]} -eq 0 ] || qs_run "$m" "$ns" "${chunk[@]}"
}
qs_cleanup() {
  an_stop qs-laptop TERM 15
  an_stop qs-vps TERM 10
}
case_quick_start() {
  local line out
  QS=$AN_DIR/quick-start QS_PUB=
  rm -rf "$QS"
  mkdir -p "$QS/usr" "$QS/vps-varlib" "$QS/laptop-varlib" "$QS/vps-etc" "$QS/laptop-etc"
  logs "$QS/vps.out" "$QS/vps-daemon.log" "$QS/laptop.out" "$QS/laptop-daemon.log"
  for line in vps laptop install; do
    [ -n "$(qs_block "$line")" ] || fail "README.md has no quick-start block '$line'" || return
  done
  line=$(qs_block install | grep '^cargo install ')
  [ -n "$line" ] || fail "the README's install block has no cargo install line" || return
  # On the host: a build, no network change (cargo may want the registry).
  (cd "$ROOT" && CARGO_TARGET_DIR="$ROOT/target" bash -euc "$(qs_edit vps "$line")") >"$QS/install.out" 2>&1 ||
    fail "$line: $(tail -3 "$QS/install.out")" || return
  [ -x "$QS/usr/bin/anonnet" ] || fail "cargo install put no anonnet in $QS/usr/bin" || return
  ensure_down
  an_stop exit TERM 10
  SNAP_QS=$AN_DIR/snap-qs-client
  an_snapshot client "$SNAP_QS"
  qs_machine vps exit || { qs_cleanup; fail "the VPS block: $(tail -q -n 3 "$QS/vps.out" "$QS/vps-daemon.log")"; return 1; }
  QS_PUB=$(grep -Eo '^[A-Za-z0-9+/]{43}=$' "$QS/vps.out" | tail -1)
  [ -n "$QS_PUB" ] || { qs_cleanup; fail "keygen printed no key on the VPS"; return 1; }
  note "VPS: $(grep -m1 '^anonnet gateway' "$QS/vps-daemon.log")"
  qs_machine laptop client || { qs_cleanup; fail "the laptop block: $(tail -q -n 4 "$QS/laptop.out" "$QS/laptop-daemon.log")"; return 1; }
  note "laptop: $(grep -m1 '^anonnet up:' "$QS/laptop-daemon.log"); $(grep -c ' WARN \| ERROR ' "$QS/laptop-daemon.log") warnings or errors logged"
  out=$(grep -c '^PASS ' "$QS/laptop.out")
  grep -q '^anonnet check: 6 passed, 0 failed' "$QS/laptop.out" ||
    { qs_cleanup; fail "check did not pass 6 of 6: $(grep -E '^(FAIL|anonnet check)' "$QS/laptop.out" | tr '\n' ' ')"; return 1; }
  note "check: $out PASS lines, $(grep -m1 '^PASS exit-address' "$QS/laptop.out")"
  out=$(an_in client 20 curl -sS -m 10 "http://$AN_SERVER4:$AN_WHOAMI_PORT/" 2>&1)
  [ "$out" = "$(an_v4 exit)" ] || { qs_cleanup; fail "the web server saw $out, not the VPS's $(an_v4 exit)"; return 1; }
  note "the web server in inet sees $out"
  an_stop qs-laptop TERM 15
  [ "$AN_RC" = 0 ] || { qs_cleanup; fail "the laptop's up exited with status $AN_RC"; return 1; }
  an_stop qs-vps TERM 10
  [ "$AN_RC" = 0 ] || fail "the VPS's gateway exited with status $AN_RC" || return
  same_as_before client "$SNAP_QS" || return
}

# The Debian package as a user gets it (README, "Install"): scripts/deb.sh builds it;
# dpkg installs it and then removes it in a mount namespace whose /usr, /var/lib/dpkg
# and /var/log are overlays over the host's, so the host's own are left as they were.
# Installed: /usr/bin/anonnet of Cargo.toml's version, the units of systemd/ byte for
# byte, which `systemd-analyze verify` loads as they are (`anonnet` found in systemd's
# PATH at /usr/bin), and nothing enabled or started (no maintainer scripts).
deb_install_check() { # in the mount namespace: $1 the package, $2 a work directory
  set -eu
  local deb=$1 w=$2 d n u
  for d in /usr /var/lib/dpkg /var/log; do
    n=${d//\//_}
    mkdir -p "$w/$n-upper" "$w/$n-work"
    mount -t overlay overlay -o "lowerdir=$d,upperdir=$w/$n-upper,workdir=$w/$n-work" "$d"
  done
  # Only the package's binary may answer to `anonnet` in systemd's PATH.
  rm -f /usr/local/bin/anonnet /usr/local/sbin/anonnet /usr/sbin/anonnet
  dpkg -i "$deb"
  dpkg-query -W -f '${Status}\n' anonnet
  /usr/bin/anonnet --version
  for u in client gateway exit; do
    cmp "$ROOT/systemd/anonnet-$u.service" "/usr/lib/systemd/system/anonnet-$u.service"
    out=$(systemd-analyze verify "/usr/lib/systemd/system/anonnet-$u.service" 2>&1)
    [ -z "$out" ] || { echo "verify anonnet-$u.service: $out"; return 1; }
  done
  ls /usr/share/doc/anonnet/examples
  dpkg -r anonnet
  for f in /usr/bin/anonnet /usr/lib/systemd/system/anonnet-exit.service /usr/share/doc/anonnet/README.md; do
    [ ! -e "$f" ] || { echo "still there after dpkg -r: $f"; return 1; }
  done
  echo "removed: $(dpkg-query -W -f '${Status}' anonnet 2>&1)"
}
case_deb() {
  local dir=$AN_DIR/deb deb version depends before
  rm -rf "$dir"
  mkdir -p "$dir"
  logs "$dir/build.out" "$dir/install.out"
  (cd "$ROOT" && bash scripts/deb.sh) >"$dir/build.out" 2>&1 || fail "scripts/deb.sh: $(tail -3 "$dir/build.out")" || return
  deb=$(tail -1 "$dir/build.out")
  [ -f "$deb" ] || fail "scripts/deb.sh did not end with a package's path: $deb" || return
  version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)
  [ "$(dpkg-deb -f "$deb" Package)" = anonnet ] && [ "$(dpkg-deb -f "$deb" Version)" = "$version-1" ] ||
    fail "package $(dpkg-deb -f "$deb" Package) $(dpkg-deb -f "$deb" Version), not anonnet $version-1" || return
  depends=$(dpkg-deb -f "$deb" Depends)
  [[ $depends == *libc6* && $depends == *nftables* ]] || fail "Depends: $depends (no libc6 or nftables)" || return
  dpkg-deb -e "$deb" "$dir/control"
  [ -z "$(ls "$dir/control" | grep -v -x -e control -e md5sums)" ] ||
    fail "the package has maintainer scripts: $(ls "$dir/control" | tr '\n' ' ')" || return
  before=$(dpkg-query -W -f '${Status}' anonnet 2>&1; ls -l /usr/bin/anonnet 2>&1)
  unshare -m --propagation private bash -c "ROOT='$ROOT'; $(declare -f deb_install_check); deb_install_check \"\$@\"" \
    sh "$deb" "$dir" >"$dir/install.out" 2>&1 || fail "install and removal: $(tail -3 "$dir/install.out")" || return
  grep -qx 'install ok installed' "$dir/install.out" || fail "dpkg did not report anonnet installed" || return
  grep -qx "anonnet $version" "$dir/install.out" || fail "/usr/bin/anonnet --version is not 'anonnet $version'" || return
  [ "$(dpkg-query -W -f '${Status}' anonnet 2>&1; ls -l /usr/bin/anonnet 2>&1)" = "$before" ] ||
    fail "the host's own dpkg state or /usr/bin changed" || return
  note "$(basename "$deb"): $(($(stat -c %s "$deb") / 1024)) KiB, Depends: $depends"
  note "dpkg -i then -r in overlays: anonnet $version in /usr/bin, 3 units verified as shipped; $(grep '^removed:' "$dir/install.out")"
}

case_hostile_client() {
  local gw out sha forged drops pid m0 m1 hops=() total=0 per=()
  [ -n "$HOSTILE" ] || fail "no hostile_client binary (cargo build --release --example hostile_client)" || return
  fresh_up || return
  for gw in gw1 gw2 exit; do
    hops+=(--hop "$(an_v4 "$gw"):$AN_PORT $(cat "$AN_DIR/$gw.pub")")
  done
  an_start2 hostile inet "$AN_DIR/hostile.out" "$AN_DIR/hostile.err" "$HOSTILE" "${hops[@]}" \
    --cells 20000 --rate 2000 --seconds 60
  pid=$AN_LAST_PID
  logs "$AN_DIR/hostile.out" "$AN_DIR/hostile.err"
  an_wait_log "$AN_DIR/hostile.out" '^hostile_client: circuit up' 10 "$pid" ||
    fail "the hostile client built no circuit" || return
  an_in client 180 curl -sS --max-time 170 -o "$AN_DIR/dl.bin" "http://$AN_SERVER4/big.bin" 2>"$AN_DIR/curl.err" ||
    fail "curl during the attack: $(head -c 300 "$AN_DIR/curl.err")" || return
  sha=$(sha256sum <"$AN_DIR/dl.bin" | cut -d' ' -f1)
  rm -f "$AN_DIR/dl.bin"
  [ "$sha" = "$BIG_SHA" ] || fail "sha256 of the download differs: $sha, expected $BIG_SHA" || return
  an_wait_log "$AN_DIR/hostile.out" '^hostile_client: forged' 70 "$pid" ||
    fail "the hostile client did not finish within 70 s" || return
  out=$(grep -m1 '^hostile_client: forged' "$AN_DIR/hostile.out")
  forged=$(grep -oE 'forged [0-9]+' <<<"$out" | grep -oE '[0-9]+')
  [ "${forged:-0}" -ge 10000 ] || fail "the hostile client forged only ${forged:-0} cells" || return
  grep -qE 'mask [1-9]' <<<"$out" || fail "no all-0xFF-sample cell was sent: $out" || return
  for gw in gw1 gw2 exit; do
    an_running "$gw" || { logs "$AN_DIR/$gw.log"; fail "$gw died during the attack"; return 1; }
  done
  an_running client-up || fail "the honest client died during the attack" || return
  # The counters, printed by each gateway as it stops.
  for gw in gw1 gw2 exit; do
    an_stop "$gw" TERM 10
    [ "$AN_RC" = 0 ] || fail "$gw exited with status $AN_RC after SIGTERM" || return
    drops=$(gateway_drops "$gw")
    total=$((total + drops))
    per+=("$gw $drops")
  done
  ensure_down
  [ "$total" -ge $((forged / 2)) ] ||
    fail "the gateways counted $total dropped datagrams for $forged forged cells" || return
  # A mask cell relayed by hop k arrives at hop k + 1 with slot 0 all 0xFF, a counter
  # above the reject limit: each one relayed must be counted there.
  m0=$(grep -oE 'hop 0: [0-9]+' <<<"$out" | grep -oE '[0-9]+$')
  m1=$(grep -oE 'hop 1: [0-9]+' <<<"$out" | grep -oE '[0-9]+$')
  [ "$(gateway_drops gw2)" -ge $((m0 * 9 / 10)) ] ||
    fail "gw1 relayed $m0 mask cells, gw2 counted only $(gateway_drops gw2) drops" || return
  [ "$(gateway_drops exit)" -ge $((m1 * 9 / 10)) ] ||
    fail "gw2 relayed $m1 mask cells, the exit counted only $(gateway_drops exit) drops" || return
  note "${out#hostile_client: }"
  note "50 MiB downloaded meanwhile, sha256 equal; gw1, gw2 and the exit kept running"
  note "dropped datagrams counted: ${per[*]} (total $total)"
  note "gw1: $(gateway_stats gw1 | grep -E '^(dropped_[a-z_]+|relayed_forward) [1-9]' | tr '\n' ' ')"
}

# build_times LABEL N: N circuit builds by `anonnet circuit-test` from inet (a fresh
# process, so a new link to gw1 each time) through gw1 -> gw2 -> exit, paced at about
# 4 per second (a client well inside gw1's per-source limit). Sets BUILD_OK, BUILD_P50
# and BUILD_P99 (ms); the times go to $AN_DIR/builds-LABEL.txt.
build_times() {
  local label=$1 n=$2 i out times=$AN_DIR/builds-$1.txt
  BUILD_OK=0
  : >"$times"
  for ((i = 0; i < n; i++)); do
    out=$(an_in inet 15 "$AN_BIN" circuit-test --config "$AN_DIR/inet-client.toml" --bytes 1000 2>&1)
    if [[ $out =~ circuit\ up:\ 3\ hops\ in\ ([0-9.]+)\ ms ]] && grep -q '^verified' <<<"$out"; then
      BUILD_OK=$((BUILD_OK + 1))
      echo "${BASH_REMATCH[1]}" >>"$times"
    else
      echo "build $i: $out" | head -3 >>"$AN_DIR/builds-$label.err"
    fi
    sleep 0.25
  done
  BUILD_P50=$(sort -n "$times" | awk '{ v[NR] = $1 } END { i = int(NR * 0.5 + 0.999); print (NR ? v[i] : "-") }')
  BUILD_P99=$(sort -n "$times" | awk '{ v[NR] = $1 } END { i = int(NR * 0.99 + 0.999); print (NR ? v[i] : "-") }')
}

# A flood of gw1, the entry (examples/handshake_flood.rs, from inet): 20,000 junk
# LINK_INITs/s from spoofed sources and 2,000 valid-looking ones/s from one source that
# answers cookie replies, for FLOOD_SECS (default 300). A legitimate client's builds
# (new links to gw1) must succeed >= 99% with p99 build time <= 3x idle; the running
# `anonnet up`, whose circuits and link existed before, must keep them through it
# (no "circuit down", fetches every 10 s, its link to gw1 rekeyed meanwhile).
case_handshake_flood() {
  local n=100 idle_ok idle_p50 idle_p99 pid t0 fetches=0 out stats v
  [ -n "$FLOOD" ] || fail "no handshake_flood binary (cargo build --release --example handshake_flood)" || return
  fresh_up || return
  an_client_config "$AN_DIR/inet-client.toml" "$AN_DIR/inet-client-state" "198.18.2.2:$AN_PORT"
  build_times idle $n
  idle_ok=$BUILD_OK idle_p50=$BUILD_P50 idle_p99=$BUILD_P99
  logs "$AN_DIR/builds-idle.err"
  [ "$idle_ok" -ge $((n * 99 / 100)) ] || fail "only $idle_ok of $n builds succeeded without a flood" || return
  OFF[client-up]=$(stat -c %s "$AN_DIR/client-up.log")
  an_start2 flood inet "$AN_DIR/flood.out" "$AN_DIR/flood.err" "$FLOOD" \
    --gateway "198.18.2.2:$AN_PORT" --pubkey "$(cat "$AN_DIR/gw1.pub")" --from "$AN_SERVER4" \
    --seconds "$FLOOD_SECS"
  pid=$AN_LAST_PID
  logs "$AN_DIR/flood.out" "$AN_DIR/flood.err" "$AN_DIR/client-up.log"
  an_wait_log "$AN_DIR/flood.out" '^handshake_flood: started' 10 "$pid" || fail "the flood did not start" || return
  t0=$(an_now_ms)
  # Let the gateway come under load first.
  sleep 2
  build_times flood $n
  logs "$AN_DIR/builds-flood.err"
  # The circuits that existed before: fetches through them until the flood ends.
  while an_alive "$pid"; do
    an_in client 15 curl -sS --max-time 10 -o /dev/null "http://$AN_SERVER4/" 2>>"$AN_DIR/curl.err" ||
      fail "a fetch through the tunnel failed $((($(an_now_ms) - t0) / 1000)) s into the flood: $(tail -c 300 "$AN_DIR/curl.err")" || return
    fetches=$((fetches + 1))
    for ((v = 0; v < 100; v++)); do an_alive "$pid" && sleep 0.1; done
  done
  an_wait_log "$AN_DIR/flood.out" '^handshake_flood: sent' 5 || fail "the flood ended without its summary" || return
  out=$(grep -m1 '^handshake_flood: sent' "$AN_DIR/flood.out")
  an_running gw1 || fail "gw1 died during the flood" || return
  since_mark client-up | grep -q 'circuit down' &&
    { fail "the client lost a circuit during the flood: $(since_mark client-up | grep -m1 'circuit down')"; return 1; }
  an_in client 15 curl -sS --max-time 10 -o /dev/null "http://$AN_SERVER4/" 2>>"$AN_DIR/curl.err" ||
    fail "a fetch after the flood failed" || return
  an_stop gw1 TERM 10
  [ "$AN_RC" = 0 ] || fail "gw1 exited with status $AN_RC after SIGTERM" || return
  stats=$(gateway_stats gw1)
  ensure_down
  note "idle: $idle_ok/$n builds, p50 $idle_p50 ms, p99 $idle_p99 ms"
  note "flood: $BUILD_OK/$n builds, p50 $BUILD_P50 ms, p99 $BUILD_P99 ms; $fetches fetches through the circuits built before it"
  note "${out#handshake_flood: }"
  note "gw1: $(grep -E '^(dropped_mac|dropped_rate_limited|dropped_auth|cookies_sent|link_rekeys) ' <<<"$stats" | tr '\n' ' ')"
  [ "$BUILD_OK" -ge $((n * 99 / 100)) ] || fail "only $BUILD_OK of $n builds succeeded during the flood" || return
  awk -v f="$BUILD_P99" -v i="$idle_p99" 'BEGIN { exit !(f <= 3 * i) }' ||
    fail "p99 build time during the flood $BUILD_P99 ms > 3 x idle $idle_p99 ms" || return
  v=$(awk '$1 == "dropped_mac" { print $2 }' <<<"$stats")
  [ "${v:-0}" -ge "$(grep -oE 'junk [0-9]+' <<<"$out" | grep -oE '[0-9]+' | awk '{ print int($1 * 0.9) }')" ] ||
    fail "gw1 counted ${v:-0} datagrams with a bad MAC: $out" || return
  v=$(awk '$1 == "cookies_sent" { print $2 }' <<<"$stats")
  [ "${v:-0}" -gt 0 ] || fail "gw1 sent no cookie reply under the flood" || return
  if [ "$FLOOD_SECS" -ge 250 ]; then
    v=$(awk '$1 == "link_rekeys" { print $2 }' <<<"$stats")
    [ "${v:-0}" -ge 2 ] || fail "the client's link to gw1 was rekeyed ${v:-0} times in the flood (2 expected)" || return
  fi
}

nft_anonnet_tables() { ip netns exec exit nft list tables 2>/dev/null | grep -c anonnet; }
nft_norm() { ip netns exec exit nft list ruleset 2>&1 | sed -E 's/counter packets [0-9]+ bytes [0-9]+/counter/'; }

case_exit_cleanup() {
  local n r1 r2
  ensure_gateways || fail "$GW_REASON" || return
  ensure_down
  logs "$AN_DIR/exit.log"
  [ "$(nft_anonnet_tables)" -ge 1 ] || note "(no anonnet table in exit while it runs: $(ip netns exec exit nft list tables | tr '\n' ' '))"
  an_stop exit TERM 10
  [ "$AN_RC" != 124 ] || fail "the exit did not end within 10 s of SIGTERM" || return
  [ "$AN_RC" = 0 ] || note "(exit status after SIGTERM: $AN_RC)"
  [ "$(nft_anonnet_tables)" = 0 ] || fail "an anonnet nft table is left after SIGTERM" || return
  ! ip -n exit link show anonexit0 >/dev/null 2>&1 || fail "anonexit0 is left after SIGTERM" || return
  same_as_before exit "$SNAP_EXIT" || return
  # Restart after a clean stop, and after a SIGKILL (which leaves its table behind).
  an_start_gateway exit 2>>"$AN_DIR/start-exit.err" || fail "restart 1 failed" || return
  n=$(nft_anonnet_tables); r1=$(nft_norm)
  [ "$n" = 1 ] || fail "after restart 1: $n anonnet tables" || return
  an_stop exit KILL 5
  an_start_gateway exit 2>>"$AN_DIR/start-exit.err" || fail "restart 2 (after SIGKILL) failed" || return
  n=$(nft_anonnet_tables); r2=$(nft_norm)
  [ "$n" = 1 ] || fail "after restart 2 (the previous exit was SIGKILLed): $n anonnet tables" || return
  [ "$(ip -n exit -br link | grep -c '^anonexit0')" = 1 ] || fail "no anonexit0 after restart 2" || return
  if [ "$r1" != "$r2" ]; then
    note "ruleset after restart 1 vs 2:"
    while IFS= read -r l; do note "  $l"; done < <(diff <(echo "$r1") <(echo "$r2") | head -20)
    fail "the ruleset after a restart that followed a SIGKILL differs (duplicated rules?)"
    return 1
  fi
  an_stop exit TERM 10
  [ "$(nft_anonnet_tables)" = 0 ] || fail "an anonnet table is left after the final SIGTERM" || return
  note "SIGTERM leaves no table, link, route or rule; restarts (after SIGTERM, after SIGKILL) give one table, same ruleset"
}

# ---------------------------------------------------------------------------------
# The run

run_case topology case_topology
run_case baseline case_baseline
run_case gateways case_gateways
run_case up case_up
run_case ping-v4 case_ping_v4
run_case ping-v6 case_ping_v6
run_case http case_http
run_case dns case_dns
run_case tun-offload case_tun_offload
run_case iperf-tcp1 case_iperf_tcp1
run_case iperf-tcp4 case_iperf_tcp4
run_case iperf-tcp1-rev case_iperf_tcp1_rev
run_case iperf-tcp4-rev case_iperf_tcp4_rev
run_case iperf-udp case_iperf_udp
run_case pmtu-v4 case_pmtu_v4
run_case pmtu-v6 case_pmtu_v6
run_case policy-port25 case_policy_port25
run_case policy-exit-self case_policy_exit_self
run_case policy-private case_policy_private
run_case exit-host-services case_exit_host_services
run_case traceroute case_traceroute
run_case server-addresses case_server_addresses
run_case leak case_leak
run_case check case_check
run_case constant-rate case_constant_rate
run_case flow-correlation case_flow_correlation
run_case exit-conntrack case_exit_conntrack
run_case middle-restart case_middle_restart
run_case exit-restart case_exit_restart
run_case kill-switch case_kill_switch
run_case restart-new-entry case_restart_new_entry
run_case gateway-status case_gateway_status
run_case metrics case_metrics
run_case reload case_reload
run_case status-down-live case_status_down_live
run_case down case_down
run_case reboot-dns case_reboot_dns
run_case old-state-dir case_old_state_dir
run_case error-anon0-exists case_error_anon0_exists
run_case sigterm-cleanup case_sigterm_cleanup
run_case error-bad-gateway case_error_bad_gateway
run_case error-names-hop case_error_names_hop
run_case ipv6-disabled case_ipv6_disabled
run_case discovery case_discovery
run_case discovery-warm-cache case_discovery_warm_cache
run_case quick-start case_quick_start
run_case deb case_deb
run_case hostile-client case_hostile_client
run_case handshake-flood case_handshake_flood
run_case exit-cleanup case_exit_cleanup

if [ ${#BASE[@]} -gt 0 ] || [ ${#TUN[@]} -gt 0 ]; then
  echo "# throughput, Mbit/s (iperf3 -t $IPERF_SECS to $AN_SERVER4; UDP: rate and loss %)"
  printf '#   %-28s %18s %18s\n' "" "plain path" "3 hops"
  for key in "${IPERF_KEYS[@]}"; do
    printf '#   %-28s %18s %18s\n' "${IPERF_LABEL[$key]}" "$(iperf_fmt "$key" "${BASE[$key]:-}")" "$(iperf_fmt "$key" "${TUN[$key]:-}")"
  done
  printf '#   %-28s %18s %18s\n' "HTTP 50 MiB download" - "${TUN[http]:--}"
fi
# cases_on_exit cleans up and prints the summary line.
