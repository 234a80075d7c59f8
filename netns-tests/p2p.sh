#!/usr/bin/env bash
# anonnet peer-to-peer scenario in network namespaces (issue 4): eight gateways, three
# of them exits, one refusing discovery, one forging descriptors, a client that knows
# only gw1, and a mixed-mode node. Like run.sh, every check is a named case printing
# "PASS name" or "FAIL name: reason", everything created is removed (trap on EXIT, INT,
# TERM), and the run ends with exactly one line "N passed, M failed".
#
# Usage (root): netns-tests/p2p.sh [--only REGEX] [--keep-logs]
#   --only REGEX   run only the cases whose name matches REGEX (the setup they need
#                  runs anyway; later cases may depend on earlier ones)
#   --keep-logs    keep the logs directory (kept anyway when a case fails)
# ANONNET_BIN=/path/to/anonnet and ANONNET_FORGER=/path/to/forging_gateway override the
# binaries (default: cargo build --release --bin anonnet --example forging_gateway).
# Addresses: 198.18.0.0/15, 2001:db8::/32 (underlay), 100.64.0.0/10, fd00::/8
# (tunnel). Namespaces are all named p2p-*, so this never collides with run.sh or the
# testbed; nothing runs in the machine's own network namespace.
#
# Topology: p2p-inet routes between every other namespace, each on its own veth with
# 198.18.N.0/24 and 2001:db8:N::/64 (inet .1, the namespace .2), and serves HTTP on
# 198.18.0.1, 2001:db8:ff::1 and 20 "sites" 198.18.0.11-30 (ports 80 and 8080).
#   gw1..gw8   N = 1..8: gw1 the bootstrap gateway; gw3 does not share (share = false);
#              gw5 also has 198.18.4.3, in gw4's /24; gw6, gw7, gw8 are exits, gw8
#              with the policy "reject *:8080"
#   forge      N = 9: examples/forging_gateway.rs
#   mixed      N = 10: `anonnet up` with client.mode = "mixed"
#   client     N = 20: `anonnet discover` / `anonnet up`, knows only gw1
#   c2         N = 21: `anonnet up` on fixed paths (through the mixed node; one that
#              breaks the /24 rule on purpose, the control of that check) and from
#              cut-down caches (paths among gw1, gw4, gw5, gw7 only)
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=netns-tests/lib.sh
. "$HERE/lib.sh"
# shellcheck source=netns-tests/cases.sh
. "$HERE/cases.sh"

cases_args 2,29 "$@"

# Our names (lib.sh's an_ns_conflicts checks AN_NS).
GWS=(gw1 gw2 gw3 gw4 gw5 gw6 gw7 gw8)
EXITS=(gw6 gw7 gw8)
HOSTS=("${GWS[@]}" forge mixed client c2)
declare -gA IDX=([gw1]=1 [gw2]=2 [gw3]=3 [gw4]=4 [gw5]=5 [gw6]=6 [gw7]=7 [gw8]=8
  [forge]=9 [mixed]=10 [client]=20 [c2]=21)
AN_NS=(p2p-inet)
for h in "${HOSTS[@]}"; do AN_NS+=("p2p-$h"); done
INET=p2p-inet
PORT=9000
SERVER4=198.18.0.1
SERVER6=2001:db8:ff::1
REFUSER=gw3
STRICT_EXIT=gw8 # rejects port 8080
SAME24_A=gw4    # 198.18.4.2
SAME24_B=gw5    # 198.18.5.2 and 198.18.4.3 (gw4's /24)
SAME24_B_EXTRA=198.18.4.3

v4() { echo "198.18.${IDX[$1]}.2"; }
v6() { echo "2001:db8:${IDX[$1]}::2"; }
ns() { echo "p2p-$1"; }

cases_preflight "another p2p.sh running, or leftovers"
cases_start anonnet-p2p www anonnet forging_gateway

# ---------------------------------------------------------------------------------
# Binaries (as run.sh: a private copy of each, so a rebuild cannot change them mid-run)

an_install_missing || abort "could not install the tools"
if [ -n "${ANONNET_BIN:-}" ]; then
  src_bin=$ANONNET_BIN
  src_forger=${ANONNET_FORGER:-$(dirname "$ANONNET_BIN")/examples/forging_gateway}
else
  export PATH="$HOME/.cargo/bin:$PATH"
  an_say "building (cargo build --release --bin anonnet --example forging_gateway)"
  (cd "$ROOT" && cargo build --release --quiet --bin anonnet --example forging_gateway) || abort "cargo build failed"
  target=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null |
    "$(an_python)" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])') || target=$ROOT/target
  src_bin=$target/release/anonnet
  src_forger=${ANONNET_FORGER:-$target/release/examples/forging_gateway}
fi
[ -x "$src_bin" ] || abort "no anonnet binary at $src_bin"
[ -x "$src_forger" ] || abort "no forging_gateway at $src_forger (cargo build --release --example forging_gateway)"
cp "$src_bin" "$AN_DIR/anonnet" || abort "cannot copy $src_bin"
cp "$src_forger" "$AN_DIR/forging_gateway" || abort "cannot copy $src_forger"
AN_BIN=$AN_DIR/anonnet
FORGER=$AN_DIR/forging_gateway
PY=$(an_python)
GW_STARTED=$(an_now_ms)

# ---------------------------------------------------------------------------------
# Network, servers, keys and configs

topology_up() {
  local n i h ok
  for n in "${AN_NS[@]}"; do
    an_ns_add "$n" || return 1
  done
  ip netns exec "$INET" sysctl -q -w net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 >/dev/null || return 1
  ip -n "$INET" addr add "$SERVER4/32" dev lo || return 1
  for i in $(seq 11 30); do ip -n "$INET" addr add "198.18.0.$i/32" dev lo || return 1; done
  ip -n "$INET" -6 addr add "$SERVER6/128" dev lo nodad || return 1
  for h in "${HOSTS[@]}"; do
    i=${IDX[$h]}
    n=$(ns "$h")
    # Created in inet, the peer placed directly in the host's namespace.
    ip -n "$INET" link add "v-$h" type veth peer name eth0 netns "$n" || return 1
    ip -n "$INET" addr add "198.18.$i.1/24" dev "v-$h" || return 1
    ip -n "$INET" -6 addr add "2001:db8:$i::1/64" dev "v-$h" nodad || return 1
    ip -n "$n" addr add "198.18.$i.2/24" dev eth0 || return 1
    ip -n "$n" -6 addr add "2001:db8:$i::2/64" dev eth0 nodad || return 1
    ip -n "$INET" link set "v-$h" up || return 1
    ip -n "$n" link set eth0 up || return 1
    ip -n "$n" route add default via "198.18.$i.1" || return 1
    ip -n "$n" -6 route add default via "2001:db8:$i::1" || return 1
  done
  # gw5's second address, in gw4's /24: inet routes it to gw5, and gw4 reaches it
  # through inet (not on its own link, where nobody answers for it).
  ip -n "$(ns "$SAME24_B")" addr add "$SAME24_B_EXTRA/32" dev eth0 || return 1
  ip -n "$INET" route add "$SAME24_B_EXTRA/32" dev "v-$SAME24_B" || return 1
  ip -n "$(ns "$SAME24_A")" route add "$SAME24_B_EXTRA/32" via "198.18.${IDX[$SAME24_A]}.1" || return 1
  # Own resolv.conf where `up` rewrites it (and in the exits, as run.sh does).
  for h in client c2 mixed "${EXITS[@]}"; do an_resolv "$(ns "$h")" "$SERVER4" || return 1; done
  for n in "${AN_NS[@]}"; do an_wait_dad "$n" || return 1; done
  for h in "${HOSTS[@]}"; do
    ok=0
    for ((i = 0; i < 50; i++)); do
      ip netns exec "$(ns "$h")" ping -n -q -c 1 -W 1 "$SERVER4" >/dev/null 2>&1 &&
        ip netns exec "$(ns "$h")" ping -n -q -c 1 -W 1 "$SERVER6" >/dev/null 2>&1 && { ok=1; break; }
      sleep 0.1
    done
    [ "$ok" = 1 ] || { an_err "$h cannot reach the server addresses"; return 1; }
  done
  an_in "$(ns "$SAME24_A")" 5 ping -n -q -c 1 -W 1 "$SAME24_B_EXTRA" >/dev/null ||
    { an_err "$SAME24_A cannot reach $SAME24_B_EXTRA"; return 1; }
}

# HTTP on 80 and 8080 (logs $AN_DIR/httpPORT.log: "SOURCE - - [date] "GET PATH ..."").
services_start() {
  local port
  mkdir -p "$AN_DIR/www"
  printf '<!doctype html><title>anonnet p2p test</title><p>hello\n' >"$AN_DIR/www/index.html"
  for port in 80 8080; do
    an_start "http$port" "$INET" "$AN_DIR/http$port.log" "$PY" -u -m http.server --bind :: \
      --directory "$AN_DIR/www" "$port"
  done
  for port in 80 8080; do
    an_wait_log "$AN_DIR/http$port.log" 'Serving HTTP on' 10 "${AN_PID[http$port]}" ||
      { an_err "http server on port $port did not start"; an_tail "$AN_DIR/http$port.log"; return 1; }
  done
}

declare -gA PUB=()
configs() {
  local h i extra
  for h in "${GWS[@]}" forge mixed; do
    "$AN_BIN" keygen --out "$AN_DIR/$h.key" >/dev/null || return 1
    PUB[$h]=$("$AN_BIN" pubkey "$AN_DIR/$h.key") || return 1
  done
  BOOT="$(v4 gw1):$PORT ${PUB[gw1]}"
  for h in "${GWS[@]}"; do
    i=${IDX[$h]}
    extra=''
    [ "$h" = "$SAME24_B" ] && extra=", \"$SAME24_B_EXTRA\""
    {
      echo '[gateway]'
      echo "identity = \"$AN_DIR/$h.key\""
      echo "listen = [\"$(v4 "$h")\"$extra, \"$(v6 "$h")\"]"
      echo "listen_ports = $PORT"
      if [[ " ${EXITS[*]} " == *" $h "* ]]; then
        printf '\n[exit]\ntun = "anonexit0"\ndns_upstream = ["%s"]\n' "$SERVER4"
        [ "$h" = "$STRICT_EXIT" ] && echo 'policy = ["reject *:8080"]'
      fi
      # Everyone but gw1 knows gw1 and publishes its descriptor to it.
      if [ "$h" != gw1 ]; then
        printf '\n[discovery]\nbootstrap = ["%s"]\n' "$BOOT"
        [ "$h" = "$REFUSER" ] && echo 'share = false'
      fi
    } >"$AN_DIR/$h.toml"
  done
  client_config "$AN_DIR/client.toml" "$AN_DIR/client-state" "$BOOT"
  # The mixed node: a client that also relays (its own [gateway] sockets).
  {
    printf '[client]\nmode = "mixed"\n'
    printf '\n[gateway]\nidentity = "%s"\nlisten = ["%s", "%s"]\nlisten_ports = %s\n' \
      "$AN_DIR/mixed.key" "$(v4 mixed)" "$(v6 mixed)" "$PORT"
    printf '\n[discovery]\nbootstrap = ["%s"]\nsubnet_v4 = 24\nsubnet_v6 = 48\n' "$BOOT"
    printf '\n[tunnel]\nstate_dir = "%s"\n' "$AN_DIR/mixed-state"
  } >"$AN_DIR/mixed.toml"
}

# client_config OUT STATE_DIR BOOTSTRAP: like lib.sh's an_discovery_config (no path,
# the /24 and /48 rule of a test net inside one /15), with 6 circuits, so that more
# paths are drawn (each one a chance to break the rules, and more exits in use).
client_config() {
  {
    printf '[client]\ncircuits = 6\n'
    printf '\n[discovery]\nbootstrap = ["%s"]\nsubnet_v4 = 24\nsubnet_v6 = 48\n' "$3"
    printf '\n[tunnel]\nstate_dir = "%s"\n' "$2"
  } >"$1"
}

# fixed_config OUT STATE_DIR HOST...: a client with this fixed path.
fixed_config() {
  local out=$1 state=$2 h
  shift 2
  {
    echo '[client]'
    for h in "$@"; do printf '\n[[client.path]]\naddr = "%s:%s"\nkey = "%s"\n' "$(v4 "$h")" "$PORT" "${PUB[$h]}"; done
    printf '\n[tunnel]\nstate_dir = "%s"\n' "$state"
  } >"$out"
}

# start_gateway NAME: `anonnet gateway` (exits with --exit) in p2p-NAME, waits for its
# " listening on " line.
start_gateway() {
  local h=$1
  local -a extra=()
  [[ " ${EXITS[*]} " == *" $h "* ]] && extra=(--exit)
  an_start "$h" "$(ns "$h")" "$AN_DIR/$h.log" "$AN_BIN" gateway "${extra[@]}" --config "$AN_DIR/$h.toml"
  an_wait_log "$AN_DIR/$h.log" ' listening on ' 10 "${AN_PID[$h]}"
}

an_say "network: namespaces ${AN_NS[*]}"
topology_up || abort "could not build the test network"
services_start || abort "could not start the HTTP servers"
configs || abort "could not create keys and configs"

# capture NAME HOST FILTER: tcpdump on HOST's eth0 (or IFACE in CAP_IF) into
# $AN_DIR/NAME.pcap, started when it says it listens.
capture() {
  local name=$1 h=$2 filter=$3 dev=${CAP_IF:-eth0}
  rm -f "$AN_DIR/$name.pcap"
  an_start2 "cap-$name" "$(ns "$h")" /dev/null "$AN_DIR/$name.err" \
    tcpdump -i "$dev" -n --immediate-mode -U -Z root -s 200 -w "$AN_DIR/$name.pcap" "$filter"
  an_wait_log "$AN_DIR/$name.err" 'listening on' 10 "$AN_LAST_PID"
}
# stop_capture NAME: SIGINT (it flushes) and wait.
stop_capture() { an_stop "cap-$1" INT 5; }
# pcap_read NAME [FILTER]: the packets, one line each.
pcap_read() { tcpdump -n -r "$AN_DIR/$1.pcap" "${@:2}" 2>/dev/null; }

# start_up NAME HOST CONFIG [SECONDS]: `anonnet up` as process NAME in HOST, waits
# for its "anonnet up:" line.
start_up() {
  local name=$1 h=$2 config=$3 secs=${4:-30}
  an_start "$name" "$(ns "$h")" "$AN_DIR/$name.log" "$AN_BIN" up --config "$config"
  an_wait_log "$AN_DIR/$name.log" '^anonnet up:' "$secs" "${AN_PID[$name]}"
}
# stop_up NAME: SIGTERM, so it removes its routes and kill switch; AN_RC is its status.
stop_up() {
  AN_RC=125
  an_running "$1" && an_stop "$1" TERM 10
}

# http_get HOST URL: prints the HTTP status (000 on failure).
http_get() {
  an_in "$(ns "$1")" 20 curl -s -m 10 -o /dev/null -w '%{http_code}' "$2" 2>/dev/null || true
}

# log_from PORT TAG: the source addresses the server logged for "GET /?TAG " lines,
# one per line (IPv4-mapped addresses unmapped).
log_from() {
  grep -F "\"GET /?$2 " "$AN_DIR/http$1.log" | awk '{print $1}' | sed 's/^::ffff://'
}

# log_all_from PORT PREFIX: the same for every "GET /?PREFIX..." line.
log_all_from() {
  grep -F "\"GET /?$2" "$AN_DIR/http$1.log" | awk '{print $1}' | sed 's/^::ffff://'
}

# host_of ADDR: the host (gateway, ...) with that address (or the address itself).
host_of() {
  local h
  for h in "${HOSTS[@]}"; do
    if [ "$1" = "$(v4 "$h")" ] || [ "$1" = "$(v6 "$h")" ]; then echo "$h"; return; fi
  done
  echo "$1"
}

# discover_json OUT STATE: `anonnet discover --json` in client with a fresh state dir;
# JSON to OUT, stderr to OUT.err.
discover_json() {
  local out=$1 state=$2
  rm -rf "$state"
  client_config "$AN_DIR/disc.toml" "$state" "$BOOT"
  an_in p2p-client 90 "$AN_BIN" discover --json --config "$AN_DIR/disc.toml" >"$out" 2>"$out.err"
}

# check_listing JSON EXPECT: every listed key must be one of EXPECT's ("NAME KEY
# ADDR,ADDR,..." lines) with exactly its addresses. Prints "ok N names" or problems.
check_listing() {
  "$PY" - "$1" "$2" <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1]))
expect = {}
for line in open(sys.argv[2]):
    name, key, addrs = line.split()
    expect[key] = (name, sorted(addrs.split(",")))
bad, seen = [], []
for r in rows:
    got = sorted(r["addrs"])
    if r["key"] not in expect:
        bad.append("unknown key %s at %s" % (r["key"][:12], ",".join(got)))
        continue
    name, want = expect[r["key"]]
    seen.append(name)
    if got != want:
        bad.append("%s listed at %s, not %s" % (name, ",".join(got), ",".join(want)))
print("ok" if not bad else "BAD " + "; ".join(bad))
print(" ".join(sorted(seen)))
EOF
}

# all_listed JSON NAME...: every NAME's key is in the listing.
all_listed() {
  local out=$1 h
  shift
  for h in "$@"; do grep -qF "\"${PUB[$h]}\"" "$out" || return 1; done
}

# expect_line NAME: "NAME KEY ADDRS" as its descriptor lists them.
expect_line() {
  local h=$1 addrs
  addrs="$(v4 "$h"),$(v6 "$h")"
  [ "$h" = "$SAME24_B" ] && addrs="$addrs,$SAME24_B_EXTRA"
  echo "$h ${PUB[$h]} $addrs"
}

# ---------------------------------------------------------------------------------
# Cases

case_gateways() {
  local h
  for h in "${GWS[@]}"; do
    start_gateway "$h" || { logs "$AN_DIR/$h.log"; fail "$h did not start"; return 1; }
  done
  GW_STARTED=$(an_now_ms)
  # The forger learns the others from gw1 (so it can forge their descriptors) and
  # publishes its own valid descriptor there, so crawling clients ask it.
  an_start forge p2p-forge "$AN_DIR/forge.log" "$FORGER" --identity "$AN_DIR/forge.key" \
    --listen "$(v4 forge)" --listen "$(v6 forge)" --port "$PORT" --bootstrap "$BOOT" --want 8 \
    --claims-out "$AN_DIR/claims.txt"
  logs "$AN_DIR/forge.log"
  an_wait_log "$AN_DIR/forge.log" 'forging_gateway: knows [0-9]+ gateways; forging' 30 "${AN_PID[forge]}" ||
    fail "the forging gateway did not learn the 8 gateways from gw1 within 30 s" || return
  note "8 gateways (exits ${EXITS[*]}; $STRICT_EXIT rejects :8080; $REFUSER share = false; $SAME24_B also at $SAME24_B_EXTRA) and the forger"
  note "$(grep -m1 'forging_gateway: knows' "$AN_DIR/forge.log")"
}

# (a) A client that knows only gw1 learns all 8 honest gateways, each at its true
# addresses; nothing the forger made up is listed (its own valid descriptor may be),
# and the rejected count shows the forgeries arrived and were dropped.
case_discover() {
  local out=$AN_DIR/discover.json i n res names rej bad exp fut h
  logs "$out.err"
  for h in "${GWS[@]}"; do expect_line "$h"; done >"$AN_DIR/expect-honest"
  { cat "$AN_DIR/expect-honest"; expect_line forge; } >"$AN_DIR/expect-a"
  # Everything the client sends, as the router sees it (PROTOCOL §11: after bootstrap
  # the crawl goes through gw1, so no other gateway may hear the client's address).
  CAP_IF=any capture disc-from inet "udp and ($FROM_CLIENT)" || fail "tcpdump on inet did not start" || return
  # gw1 hears of the others as they start; polled (bounded) until it knows all.
  for ((i = 0; i < 10; i++)); do
    discover_json "$out" "$AN_DIR/client-state" || fail "discover failed: $(tail -2 "$out.err")" || return
    n=$(grep -c '"key"' "$out")
    all_listed "$out" "${GWS[@]}" && break
    sleep 0.5
  done
  stop_capture disc-from
  sent_to_others disc-from "$(v4 gw1)" "$(v6 gw1)" || return
  grep -q "went through $(v4 gw1):$PORT \|went through \[$(v6 gw1)\]:$PORT " "$out.err" ||
    fail "the crawl did not go through gw1: $(grep -o 'discovery done: .*' "$out.err" | tail -1)" || return
  res=$(check_listing "$out" "$AN_DIR/expect-a")
  names=$(tail -1 <<<"$res")
  note "listed: $names"
  [ "$(head -1 <<<"$res")" = ok ] || fail "$(head -1 <<<"$res")" || return
  for h in "${GWS[@]}"; do
    [[ " $names " == *" $h "* ]] || fail "$h is not listed (the client knows $n gateways)" || return
  done
  rej=$(grep -o 'discovery rejected .*' "$out.err" | tail -1)
  [ -n "$rej" ] || fail "discover printed no 'discovery rejected' line" || return
  note "$rej"
  bad=$(sed -nE 's/.*: ([0-9]+) bad signature.*/\1/p' <<<"$rej")
  exp=$(sed -nE 's/.* ([0-9]+) expired.*/\1/p' <<<"$rej")
  fut=$(sed -nE 's/.* ([0-9]+) not yet valid.*/\1/p' <<<"$rej")
  grep -q 'forging_gateway: answered a Get' "$AN_DIR/forge.log" || fail "the client never asked the forger" || return
  note "forger: $(grep 'forging_gateway: answered a Get' "$AN_DIR/forge.log" | tail -1 | cut -d' ' -f3-)"
  [ "${bad:-0}" -gt 0 ] && [ "${exp:-0}" -gt 0 ] && [ "${fut:-0}" -gt 0 ] ||
    fail "forgeries not rejected as such: $rej" || return
  [ -s "$AN_DIR/client-state/descriptors.cache" ] || fail "no descriptor cache was written" || return
}

# The client's addresses as a source, for captures.
FROM_CLIENT="src host $(v4 client) or src host $(v6 client)"

# sent_to_others NAME ADDR...: the capture NAME holds datagrams from the client to
# the ADDRs (the control: it saw the crawl) and to no other address.
sent_to_others() {
  local name=$1 a not="" to n
  shift
  for a in "$@"; do not="$not and not dst host $a"; done
  n=$(pcap_read "$name" "udp and ($FROM_CLIENT)" | grep -c .)
  to=$(pcap_read "$name" "udp and ($FROM_CLIENT) $not" | sed -nE 's/.* > ([^ ]+)\.[0-9]+: .*/\1/p' | sort -u | tr '\n' ' ')
  note "the client sent $n datagrams, to $* and to: ${to:-nobody else}"
  [ "$n" -gt 0 ] || fail "the capture saw nothing from the client" || return
  [ -z "$to" ] || fail "the client's address reached gateways other than $*: $to" || return
}

# (b) gw3 (share = false) refuses, and is still listed (it hands out its own).
case_refusal() {
  local done_line
  [ -s "$AN_DIR/discover.json.err" ] || fail "no discover output (the discover case did not run)" || return
  done_line=$(grep -o 'discovery done: .*' "$AN_DIR/discover.json.err" | tail -1)
  note "$done_line"
  grep -Eq ' [1-9][0-9]* refused' <<<"$done_line" || fail "no refusal seen: $done_line" || return
  grep -qF "${PUB[$REFUSER]}" "$AN_DIR/discover.json" || fail "$REFUSER is not listed" || return
  note "$REFUSER refused to share and is listed from its own descriptor"
}

# A client that heard the forger first: its cache holds the forger's valid claim on
# gw2's key (a throwaway identity's descriptor naming gw2's onion key at the forger's
# addresses), as if the forger had answered before anyone else. gw1 then tells it of
# the real gw2, a contender; the contest must be settled by gw2 itself, which only
# answers at its true address (docs/PROTOCOL.md §11: "trying the addresses of the held
# claim, then the contender's"), so the listing must show gw2 at its true addresses.
CLAIMED=gw2
case_claim_first() {
  local out=$AN_DIR/claim-first.json st=$AN_DIR/claim-state hex res
  logs "$out.err"
  hex=$(awk -v k="${PUB[$CLAIMED]}" '$1 == k {print $2}' "$AN_DIR/claims.txt" 2>/dev/null)
  [ -n "$hex" ] || fail "the forger wrote no claim on $CLAIMED's key" || return
  rm -rf "$st"
  mkdir -p "$st"
  # Magic, version 1, one record (source 2: from the peer whose 32-byte key follows,
  # the forger; length; descriptor), then BLAKE2s-256 of all of it.
  "$PY" -c '
import base64, hashlib, sys
desc, peer = bytes.fromhex(sys.argv[1]), base64.b64decode(sys.argv[2])
body = b"ANONDIR\0" + b"\x01" + b"\x02" + peer + len(desc).to_bytes(2, "big") + desc
open(sys.argv[3], "wb").write(body + hashlib.blake2s(body).digest())
' "$hex" "${PUB[forge]}" "$st/descriptors.cache" || fail "could not write the planted cache" || return
  client_config "$AN_DIR/claim.toml" "$st" "$BOOT"
  an_in p2p-client 90 "$AN_BIN" discover --json --config "$AN_DIR/claim.toml" >"$out" 2>"$out.err" ||
    fail "discover failed: $(tail -2 "$out.err")" || return
  note "$(grep -o 'discovery done: .*' "$out.err" | tail -1)"
  res=$(check_listing "$out" "$AN_DIR/expect-a")
  [ "$(head -1 <<<"$res")" = ok ] || fail "$(head -1 <<<"$res")" || return
  all_listed "$out" "$CLAIMED" || fail "$CLAIMED is not listed" || return
  note "the forger's claim on $CLAIMED's key, held first, lost to $CLAIMED's own descriptor: listed at its true addresses"
}

declare -A HTTP80_FROM=()
# Connection openings (SYN without ACK): on an exit's TUN device their source is the
# circuit's pool address, one per circuit.
SYN="tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn"
# (c) `up` comes up on a discovered 3-hop path; 20 destinations are fetched and leave
# through several circuits (distinct pool addresses on the exits' TUN devices) and
# several exits (the server's log).
case_up_flows() {
  local h site code fails=0 src circuits exits line
  logs "$AN_DIR/client-up.log"
  # (e)'s capture starts before any circuit of the client, the warm restart and the
  # mixed node exists (see case_subnet_rule).
  capture same24 "$SAME24_A" "udp" || fail "tcpdump on $SAME24_A did not start" || return
  for h in "${EXITS[@]}"; do
    CAP_IF=anonexit0 capture "tun-$h" "$h" "$SYN" ||
      fail "tcpdump on $h's anonexit0 did not start" || return
  done
  start_up client-up client "$AN_DIR/client.toml" 30 ||
    fail "'up' with discovery did not come up: $(tail -2 "$AN_DIR/client-up.log" | tr '\n' ' ')" || return
  line=$(grep -m1 '^anonnet up:' "$AN_DIR/client-up.log")
  note "$line"
  grep -q 'through 3 hops' <<<"$line" || fail "not a 3-hop path: $line" || return
  grep -q 'discovering gateways' "$AN_DIR/client-up.log" && note "(it crawled again although discover had filled its cache)"
  for site in $(seq 11 30); do
    code=$(http_get client "http://198.18.0.$site/?dst=$site")
    [ "$code" = 200 ] || { fails=$((fails + 1)); note "http://198.18.0.$site/: $code"; }
  done
  for h in "${EXITS[@]}"; do stop_capture "tun-$h"; done
  [ "$fails" = 0 ] || fail "$fails of 20 fetches failed" || return
  sleep 0.2 # the server's log write
  for site in $(seq 11 30); do
    src=$(log_from 80 "dst=$site" | tail -1)
    HTTP80_FROM[$site]=$(host_of "$src")
  done
  exits=$(printf '%s\n' "${HTTP80_FROM[@]}" | sort | uniq -c | awk '{printf "%s%s x%s", (NR > 1 ? ", " : ""), $2, $1}')
  note "the server saw the 20 destinations' requests from: $exits"
  # One pool address per circuit at each exit: (exit, source of the SYNs) pairs.
  circuits=$(for h in "${EXITS[@]}"; do pcap_read "tun-$h" | awk -v h="$h" '$2 == "IP" {split($3, a, "."); print h, a[1] "." a[2] "." a[3] "." a[4]}'; done | sort -u)
  note "circuits seen at the exits' TUN devices: $(wc -l <<<"$circuits" | tr -d ' ') ($(tr '\n' ' ' <<<"$circuits"| sed 's/ $//'))"
  [ "$(printf '%s\n' "${HTTP80_FROM[@]}" | sort -u | grep -c '^gw')" -ge 2 ] ||
    fail "all 20 destinations left through one exit: $exits" || return
  printf '%s\n' "${HTTP80_FROM[@]}" | grep -qv '^gw' && { fail "a request came from a non-exit address: $exits"; return 1; }
  [ "$(grep -c . <<<"$circuits")" -ge 3 ] || fail "only $(grep -c . <<<"$circuits") circuit(s) carried the 20 destinations" || return
}

# (d) Port 8080: all 20 destinations answer, none through gw8 (whose policy rejects
# 8080). Both halves can fail: a flow the client sent to gw8 anyway would be refused
# there (a failed fetch), and a gw8 that let it through would show in the log.
case_port_8080() {
  local site code fails=0 src on_strict=0 from
  an_running client-up || fail "needs the running 'up' of the previous case" || return
  for site in $(seq 11 30); do
    code=$(http_get client "http://198.18.0.$site:8080/?dst8080=$site")
    [ "$code" = 200 ] || { fails=$((fails + 1)); note "http://198.18.0.$site:8080/: $code"; }
  done
  sleep 0.2
  for site in $(seq 11 30); do
    [ "${HTTP80_FROM[$site]:-}" = "$STRICT_EXIT" ] && on_strict=$((on_strict + 1))
  done
  from=$(for site in $(seq 11 30); do host_of "$(log_from 8080 "dst8080=$site" | tail -1)"; done | sort | uniq -c |
    awk '{printf "%s%s x%s", (NR > 1 ? ", " : ""), $2, $1}')
  note "port 8080 requests came from: $from ($on_strict of the destinations used $STRICT_EXIT on port 80)"
  [ "$fails" = 0 ] || fail "$fails of 20 fetches on :8080 failed" || return
  log_all_from 8080 dst8080= | grep -Eqx "$(v4 "$STRICT_EXIT")|$(v6 "$STRICT_EXIT")" &&
    { fail "a :8080 request left through $STRICT_EXIT"; return 1; }
  return 0
}

# (f) Restart with a warm cache: the only bootstrap address is unreachable, and a
# capture on the client's link shows that nothing was sent to it.
case_warm_cache() {
  local code n
  logs "$AN_DIR/warm-up.log"
  stop_up client-up
  [ "$AN_RC" = 0 ] || note "(the first 'up' ended with status $AN_RC)"
  [ -s "$AN_DIR/client-state/descriptors.cache" ] || fail "no cache from the discover case" || return
  client_config "$AN_DIR/warm.toml" "$AN_DIR/client-state" "198.18.1.99:$PORT ${PUB[gw1]}"
  capture warm client "host 198.18.1.99" || fail "tcpdump on the client did not start" || return
  start_up warm-up client "$AN_DIR/warm.toml" 30 ||
    fail "'up' with a warm cache did not come up: $(tail -2 "$AN_DIR/warm-up.log" | tr '\n' ' ')" || return
  code=$(http_get client "http://$SERVER4/?warm")
  stop_up warm-up
  stop_capture warm
  note "$(grep -m1 '^anonnet up:' "$AN_DIR/warm-up.log")"
  grep -q 'discovering gateways' "$AN_DIR/warm-up.log" && { fail "'up' crawled although the cache had a path"; return 1; }
  [ "$code" = 200 ] || fail "HTTP through the cached path: $code" || return
  n=$(pcap_read warm | grep -c .)
  [ "$n" = 0 ] || fail "$n packets to the bootstrap address 198.18.1.99: $(pcap_read warm | head -2 | tr '\n' ' ')" || return
  note "up from the cache alone, HTTP 200; 0 packets to the bootstrap address 198.18.1.99"
}

# A client that has a guard crawls through it: the guard is the only gateway that
# hears its address, the bootstrap gateway gw1 included (PROTOCOL §11).
case_discover_via_guard() {
  local st=$AN_DIR/guard-state out=$AN_DIR/guard-discover.json guard addr
  logs "$out.err"
  [ -s "$AN_DIR/client-state/guards.toml" ] || fail "no guards from the up case" || return
  rm -rf "$st"
  mkdir -p "$st"
  cp "$AN_DIR/client-state/guards.toml" "$AN_DIR/client-state/descriptors.cache" "$st/" || fail "cannot copy the state" || return
  guard=$(sed -nE 's/^key = "(.*)"/\1/p' "$st/guards.toml" | head -1)
  addr=$(grep -F "$guard" "$AN_DIR/discover.json" >/dev/null && "$PY" -c '
import json, sys
for r in json.load(open(sys.argv[1])):
    if r["key"] == sys.argv[2]:
        print(" ".join(r["addrs"]))' "$AN_DIR/discover.json" "$guard")
  [ -n "$addr" ] || fail "the guard $guard is not in the listing" || return
  [ "$addr" != "$(v4 gw1) $(v6 gw1)" ] || note "(the guard is gw1, the bootstrap gateway itself)"
  client_config "$AN_DIR/guard.toml" "$st" "$BOOT"
  CAP_IF=any capture guard-from inet "udp and ($FROM_CLIENT)" || fail "tcpdump on inet did not start" || return
  an_in p2p-client 90 "$AN_BIN" discover --json --config "$AN_DIR/guard.toml" >"$out" 2>"$out.err" ||
    fail "discover failed: $(tail -2 "$out.err")" || return
  stop_capture guard-from
  note "guard $(host_of "${addr%% *}"): $(grep -o 'discovery done: .*' "$out.err" | tail -1)"
  # shellcheck disable=SC2086 # the guard's addresses, one argument each
  sent_to_others guard-from $addr || return
  all_listed "$out" "${GWS[@]}" || fail "the crawl through the guard lost gateways" || return
}

# Mixed mode: comes up relaying, its own traffic works, it is published and relays.
M4=$(v4 mixed)
M6=$(v6 mixed)
# What the mixed node may send on its link: relay UDP from its relay port (its own
# circuits use the same sockets; answers to directory queries too), to anyone but
# 198.18.0.1, which is no gateway: nothing of ours goes there directly. And IPv6
# neighbour discovery. Everything else it sends is a leak.
M_OUT="(src host $M4 or src host $M6 or ip6 src net fe80::/10)"
RELAY="udp and src port $PORT and (src host $M4 or src host $M6) and not dst host $SERVER4"
M_LEAK="$M_OUT and not (icmp6 and ip6[40] >= 133 and ip6[40] <= 136) and not ($RELAY)"

case_mixed_up() {
  local line
  logs "$AN_DIR/mixed-up.log"
  start_up mixed-up mixed "$AN_DIR/mixed.toml" 40 ||
    fail "mixed 'up' did not come up: $(tail -2 "$AN_DIR/mixed-up.log" | tr '\n' ' ')" || return
  line=$(grep -m1 '^anonnet up:' "$AN_DIR/mixed-up.log")
  note "$line"
  [[ $line == *"; relaying as gateway ${PUB[mixed]} on "* ]] ||
    fail "the up line does not end with '; relaying as gateway ${PUB[mixed]} on ...'" || return
  # Everything on its link from now on, for the kill-switch case.
  capture mixed-wire mixed "not arp" || fail "tcpdump on the mixed node did not start" || return
}

case_mixed_own_traffic() {
  local code src
  an_running mixed-up || fail "the mixed node is not up" || return
  code=$(http_get mixed "http://$SERVER4/?mixed-own")
  [ "$code" = 200 ] || fail "curl from the mixed node: $code" || return
  sleep 0.2
  src=$(log_from 80 mixed-own | tail -1)
  [ "$src" != "$M4" ] || fail "the server saw the mixed node's own address" || return
  note "HTTP 200; the server saw it from $src ($(host_of "$src"))"
  [[ " ${EXITS[*]} " == *" $(host_of "$src") "* ]] || fail "it did not come from an exit: $src" || return
}

case_mixed_published() {
  local out=$AN_DIR/discover2.json i res
  logs "$out.err"
  for ((i = 0; i < 20; i++)); do
    discover_json "$out" "$AN_DIR/disc2-state" || fail "discover failed: $(tail -2 "$out.err")" || return
    all_listed "$out" mixed && break
    sleep 0.5
  done
  all_listed "$out" mixed || fail "the client's discover does not list the mixed node" || return
  { cat "$AN_DIR/expect-honest"; expect_line forge; expect_line mixed; } >"$AN_DIR/expect-m"
  res=$(check_listing "$out" "$AN_DIR/expect-m")
  [ "$(head -1 <<<"$res")" = ok ] || fail "$(head -1 <<<"$res")" || return
  note "listed: $(tail -1 <<<"$res")"
}

case_mixed_relays() {
  local code src line peers
  an_running mixed-up || fail "the mixed node is not up" || return
  logs "$AN_DIR/c2-up.log"
  fixed_config "$AN_DIR/c2.toml" "$AN_DIR/c2-state" gw1 mixed gw6
  start_up c2-up c2 "$AN_DIR/c2.toml" 20 ||
    fail "'up' through gw1, mixed, gw6 did not come up: $(tail -2 "$AN_DIR/c2-up.log" | tr '\n' ' ')" || return
  code=$(http_get c2 "http://$SERVER4/?via-mixed")
  stop_up c2-up
  [ "$code" = 200 ] || fail "HTTP through gw1, mixed, gw6: $code" || return
  sleep 0.2
  src=$(log_from 80 via-mixed | tail -1)
  [ "$src" = "$(v4 gw6)" ] || fail "the server saw the request from $src, not gw6" || return
  note "a circuit gw1 -> mixed -> gw6 works: HTTP 200, seen from gw6"
}

# The mixed node's link: only relay UDP (to many gateways); nothing else, although
# its own traffic went through anon0, and unmarked packets forced onto eth0 (a ping
# bound to eth0, a raw UDP datagram "from" the relay port to 198.18.0.1) are dropped.
case_mixed_kill_switch() {
  local leaks peers
  an_running cap-mixed-wire || fail "the capture on the mixed node is not running" || return
  an_in p2p-mixed 10 ping -n -q -c 2 -W 1 "$SERVER4" >/dev/null 2>&1 || note "(ping through anon0 failed)"
  an_in p2p-mixed 10 ping -n -q -c 2 -W 1 -w 3 -I eth0 "$SERVER4" >/dev/null 2>&1 &&
    { fail "a ping bound to eth0 got through"; return 1; }
  an_in p2p-mixed 10 "$PY" - "$SERVER4" "$PORT" <<'EOF' >"$AN_DIR/raw.out" 2>&1
import socket, struct, sys
dst, port = sys.argv[1], int(sys.argv[2])
payload = b"unmarked from the relay port"
for bind in (True, False):
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    if bind:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
    try:
        s.sendto(struct.pack("!HHHH", port, port, 8 + len(payload), 0) + payload, (dst, 0))
        print("sent", "bound to eth0" if bind else "routed")
    except OSError as e:
        print("refused", "bound to eth0" if bind else "routed", e)
EOF
  note "raw UDP: $(tr '\n' ';' <"$AN_DIR/raw.out")"
  sleep 0.5
  stop_capture mixed-wire
  leaks=$(pcap_read mixed-wire "$M_LEAK")
  if [ -n "$leaks" ]; then
    note "not relay UDP on the mixed node's link:"
    while IFS= read -r l; do note "  $l"; done < <(head -8 <<<"$leaks" | cut -c1-150)
    fail "$(grep -c . <<<"$leaks") packets besides relay UDP"
    return 1
  fi
  peers=$(pcap_read mixed-wire "$RELAY and dst port $PORT and src host $M4" | awk '{print $5}' | sed -E 's/\.[0-9]+:$//' | sort -u)
  note "0 packets besides relay UDP; it sent relay UDP to $(grep -c . <<<"$peers") gateways: $(for p in $peers; do host_of "$p"; done | tr '\n' ' ')"
  [ "$(grep -c . <<<"$peers")" -ge 2 ] || fail "relay UDP reached fewer than 2 gateways" || return
  grep -qx "$(v4 gw6)" <<<"$peers" || fail "no relay UDP to gw6 (the next hop of the relayed circuit)" || return
}

# narrow_cache SRC DST NAME...: the descriptor cache SRC with only these gateways'
# records, re-checksummed (docs/PROTOCOL.md §11: magic, version, records of source
# tag [+ peer key], 2-byte length, descriptor with the onion key at offset 34; then
# BLAKE2s-256 of all before).
narrow_cache() {
  local src=$1 dst=$2 h
  shift 2
  mkdir -p "$(dirname "$dst")"
  for h in "$@"; do echo "${PUB[$h]}"; done | "$PY" -c '
import base64, hashlib, sys
src, dst = sys.argv[1], sys.argv[2]
keep = {base64.b64decode(l.strip()) for l in sys.stdin if l.strip()}
data = open(src, "rb").read()
body, i, out, n = data[:-32], 9, bytearray(data[:9]), 0
while i < len(body):
    j = i + 1 + (32 if body[i] == 2 else 0)
    length = int.from_bytes(body[j:j + 2], "big")
    end = j + 2 + length
    if body[j + 2 + 34:j + 2 + 66] in keep:
        out += body[i:end]
        n += 1
    i = end
out += hashlib.blake2s(bytes(out)).digest()
open(dst, "wb").write(bytes(out))
print(n)
' "$src" "$dst"
}

# (e) No path has two gateways of one /24. gw4 and gw5 share 198.18.4.0/24 (gw5's
# 198.18.4.3), and both are relays, not exits: on a 3-hop path (entry, middle, exit)
# they could only be entry and middle, next to each other, so any path with both makes
# gw4 exchange UDP with gw5 directly; a capture on gw4's link sees it. (The gateways'
# own gossip with each other happens when they start, before any capture here, and
# next only after 5 minutes.)
#  1. Over every circuit built so far (the client's pool, its warm restart, the mixed
#     node's own circuits): no such packet. Entries are guards, though, so these paths
#     could put gw4 and gw5 together only when one of them is a guard.
#  2. So that a broken rule would show: clients that know only gw1, gw4, gw5 and the
#     exit gw7 (the real cache, cut down), fresh guards each round. Their guards are
#     gw7, gw1 and one of gw4/gw5; with the rule ignored, about 1 path in 4 would be
#     gw4/gw5 -> gw5/gw4 -> gw7. Each round's circuits are counted at gw7's TUN.
#  3. The control proves the capture would see it: a fixed path gw4 -> gw5 -> gw7
#     does make gw4 and gw5 talk.
NARROW=(gw1 "$SAME24_A" "$SAME24_B" gw7)
case_subnet_rule() {
  local b n peers ctl code guards r st k site total=0 rounds='' cnt
  b="host $(v4 "$SAME24_B") or host $SAME24_B_EXTRA or host $(v6 "$SAME24_B")"
  an_running cap-same24 || fail "the capture on $SAME24_A is not running" || return
  stop_capture same24
  [ $(($(an_now_ms) - GW_STARTED)) -lt 280000 ] || note "(over 280 s since the gateways started: gossip may have begun again)"
  peers=$(pcap_read same24 "udp and src host $(v4 "$SAME24_A")" | awk '{print $5}' | sed -E 's/\.[0-9]+:$//' | sort -u)
  guards=$(cat "$AN_DIR/client-state/guards.toml" 2>/dev/null)
  note "1. so far $SAME24_A sent UDP to: $(for p in $peers; do host_of "$p"; done | tr '\n' ' ')(client guards: $(for h in "${GWS[@]}" forge mixed; do grep -qF "${PUB[$h]}" <<<"$guards" && echo "$h"; done | tr '\n' ' '))"
  n=$(pcap_read same24 "$b" | grep -c .)
  [ "$n" = 0 ] || fail "$n packets between $SAME24_A and $SAME24_B: a circuit used both" || return
  grep -qF "${PUB[$SAME24_A]}" <<<"$guards" && grep -qF "${PUB[$SAME24_B]}" <<<"$guards" &&
    { fail "the client's guards include both $SAME24_A and $SAME24_B"; return 1; }
  # 2. Narrow rounds.
  capture same24-narrow "$SAME24_A" "$b" || fail "tcpdump on $SAME24_A did not start" || return
  for r in 1 2 3; do
    st=$AN_DIR/narrow-$r
    k=$(narrow_cache "$AN_DIR/client-state/descriptors.cache" "$st/descriptors.cache" "${NARROW[@]}") ||
      fail "could not cut down the cache" || return
    [ "$k" = 4 ] || fail "the cut-down cache has $k gateways, not 4" || return
    client_config "$AN_DIR/narrow-$r.toml" "$st" "198.18.1.99:$PORT ${PUB[gw1]}"
    CAP_IF=anonexit0 capture "tun-narrow-$r" gw7 "$SYN" || fail "tcpdump on gw7's anonexit0 did not start" || return
    logs "$AN_DIR/narrow-$r-up.log"
    start_up "narrow-$r-up" c2 "$AN_DIR/narrow-$r.toml" 20 ||
      fail "round $r: 'up' knowing only ${NARROW[*]} did not come up: $(tail -2 "$AN_DIR/narrow-$r-up.log" | tr '\n' ' ')" || return
    for site in $(seq 11 30); do http_get c2 "http://198.18.0.$site/?narrow$r-$site" >/dev/null; done
    stop_up "narrow-$r-up"
    stop_capture "tun-narrow-$r"
    cnt=$(pcap_read "tun-narrow-$r" | awk '$2 == "IP" {split($3, a, "."); print a[1] "." a[2] "." a[3] "." a[4]}' | sort -u | grep -c .)
    total=$((total + cnt))
    guards=$(cat "$st/guards.toml" 2>/dev/null)
    rounds="$rounds; round $r: $cnt circuits, guards $(for h in "${NARROW[@]}"; do grep -qF "${PUB[$h]}" <<<"$guards" && echo "$h"; done | tr '\n' ' ' | sed 's/ $//')"
  done
  stop_capture same24-narrow
  note "2. paths among ${NARROW[*]} only${rounds}"
  n=$(pcap_read same24-narrow | grep -c .)
  [ "$n" = 0 ] || fail "$n packets between $SAME24_A and $SAME24_B in the narrow rounds: a circuit used both" || return
  [ "$total" -ge 6 ] || fail "the narrow rounds used only $total circuits (too few to test the rule)" || return
  # 3. The control.
  capture same24-ctl "$SAME24_A" "$b" || fail "tcpdump on $SAME24_A did not start" || return
  logs "$AN_DIR/c2-ctl-up.log"
  fixed_config "$AN_DIR/c2-ctl.toml" "$AN_DIR/c2-state" "$SAME24_A" "$SAME24_B" gw7
  start_up c2-ctl-up c2 "$AN_DIR/c2-ctl.toml" 20 ||
    fail "control: 'up' through $SAME24_A, $SAME24_B, gw7 did not come up" || return
  code=$(http_get c2 "http://$SERVER4/?control")
  stop_up c2-ctl-up
  stop_capture same24-ctl
  ctl=$(pcap_read same24-ctl | grep -c .)
  [ "$code" = 200 ] && [ "$ctl" -gt 0 ] ||
    fail "control: a path $SAME24_A -> $SAME24_B -> gw7 (HTTP $code) showed $ctl packets between them: the check is blind" || return
  note "3. control path $SAME24_A -> $SAME24_B -> gw7: HTTP 200, $ctl packets between them seen"
  note "0 packets between $SAME24_A and $SAME24_B over all paths drawn ($total in the narrow rounds)"
}

# (g) Dead gateways (issue 25). A client with one circuit (circuits = 1), whose cache
# holds the eight gateways only (not the forger or the mixed node, which this case
# cannot restart), fetches through a discovered path. In each run, while a paced
# download runs, the entry, middle or exit of its circuit is killed with SIGKILL and
# a fetch starts every 0.25 s: one must have worked within 5 s, the download
# must end with an RST within 5 s (curl's status 56), and the client's log must blame
# the killed gateway. The gateway starts again after the run (the next circuits avoid
# it meanwhile). P2P_DEAD_RUNS runs per position (default 3).
DEAD_RUNS=${P2P_DEAD_RUNS:-3}
declare -gA DEAD_BACK=() DEAD_RESET=()
case_dead_gateway() {
  local st=$AN_DIR/dead-state log=$AN_DIR/dead-up.log pos run k rmem summary=''
  logs "$log"
  k=$(narrow_cache "$AN_DIR/client-state/descriptors.cache" "$st/descriptors.cache" "${GWS[@]}") ||
    fail "could not cut down the cache" || return
  [ "$k" = "${#GWS[@]}" ] || fail "the cut-down cache has $k gateways, not ${#GWS[@]}" || return
  {
    printf '[client]\ncircuits = 1\nlegs = 1\n'
    printf '\n[discovery]\nbootstrap = ["198.18.1.99:%s %s"]\nsubnet_v4 = 24\nsubnet_v6 = 48\n' "$PORT" "${PUB[gw1]}"
    printf '\n[tunnel]\nstate_dir = "%s"\n' "$st"
  } >"$AN_DIR/dead.toml"
  [ -s "$AN_DIR/www/big.bin" ] || head -c 32M /dev/urandom >"$AN_DIR/www/big.bin" || fail "cannot write big.bin" || return
  stop_up client-up
  # Small receive buffers, so that a reset reaches curl (which reads only 1 MB/s)
  # within 0.25 s of arriving instead of after megabytes already received.
  rmem=$(ip netns exec p2p-client sysctl -n net.ipv4.tcp_rmem | tr -s '\t ' ' ')
  ip netns exec p2p-client sysctl -q -w net.ipv4.tcp_rmem="4096 131072 262144" || fail "cannot set tcp_rmem" || return
  an_start dead-up p2p-client "$log" "$AN_BIN" up --config "$AN_DIR/dead.toml"
  an_wait_log "$log" '^anonnet up:' 30 "${AN_PID[dead-up]}" ||
    fail "'up' did not come up: $(tail -2 "$log" | tr '\n' ' ')" || return
  for pos in 0 1 2; do
    for run in $(seq 1 "$DEAD_RUNS"); do
      dead_run "$pos" "$run" || { stop_up dead-up; ip netns exec p2p-client sysctl -q -w net.ipv4.tcp_rmem="$rmem"; return 1; }
    done
  done
  stop_up dead-up
  ip netns exec p2p-client sysctl -q -w net.ipv4.tcp_rmem="$rmem"
  for pos in 0 1 2; do
    summary="$summary; $(dead_name "$pos"): a new fetch done, p50 $(p50_max "${DEAD_BACK[$pos]}"); download reset, p50 $(p50_max "${DEAD_RESET[$pos]}")"
  done
  note "$DEAD_RUNS runs per position, ms after the SIGKILL${summary}"
}

dead_name() { case $1 in 0) echo entry ;; 1) echo middle ;; *) echo exit ;; esac; }
# p50_max "N N N...": "P50 / max MAX ms" (p50: the lower median).
p50_max() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{v[NR] = $1} END {printf "%d / max %d ms", v[int((NR + 1) / 2)], v[NR]}'; }

# dead_run POSITION RUN: one run of case_dead_gateway.
dead_run() {
  local pos=$1 run=$2 log=$AN_DIR/dead-up.log dl=$AN_DIR/dead-dl.txt fetches=$AN_DIR/dead-fetches.txt line h a addr killed back ok code rc ended downs blamed dlpid
  line=$(grep 'circuit [0-9]* up through ' "$log" | tail -1)
  addr=$(sed -E 's/.* up through //' <<<"$line" | awk -v p="$pos" -F' -> ' '{print $(p + 1)}')
  a=${addr%:*}
  a=${a#[}
  h=$(host_of "${a%]}")
  [[ " ${GWS[*]} " == *" $h "* ]] || fail "run $run: hop $((pos + 1)) of '$line' is not one of the gateways" || return
  code=$(http_get client "http://$SERVER4/?dead-$pos-$run-before")
  [ "$code" = 200 ] || fail "run $run: a fetch before the kill got $code" || return
  (
    an_in p2p-client 40 curl -sS -m 30 --limit-rate 1M -o /dev/null "http://$SERVER4/big.bin" 2>&1
    echo "status $? at $(an_now_ms)"
  ) >"$dl" &
  dlpid=$!
  sleep 1.5
  downs=$(grep -c ' down (' "$log")
  an_stop "$h" KILL 5
  killed=$(an_now_ms)
  ok=$(an_fetch_until_ok p2p-client "http://$SERVER4/?dead-$pos-$run" "$fetches")
  back=${ok:+$((ok - killed))}
  wait "$dlpid"
  read -r rc ended < <(awk '$1 == "status" {print $2, $4}' "$dl")
  start_gateway "$h" || fail "run $run: $h did not start again" || return
  blamed=$(tail -n +"$((downs + 1))" <(grep ' down (' "$log") | grep -F "hop $((pos + 1)) (" | grep -cF " at $addr) failed")
  note "$(dead_name "$pos") $h killed (run $run): a new fetch done after ${back:-never} ms, download ended with status ${rc:-?} after $((${ended:-0} - killed)) ms, blamed in $blamed log line(s)"
  [ -n "$back" ] && [ "$back" -le 5000 ] || fail "run $run: the first new fetch to work ended only ${back:-more than 12,000} ms after the kill (target 5,000)" || return
  [ "${rc:-}" = 56 ] && [ $((ended - killed)) -le 5000 ] ||
    fail "run $run: the download did not end with a reset within 5 s: $(tr '\n' ' ' <"$dl")" || return
  [ "$blamed" -ge 1 ] || fail "run $run: the client's log does not blame $h: $(tail -n +"$((downs + 1))" <(grep ' down (' "$log") | tr '\n' ' ')" || return
  DEAD_BACK[$pos]="${DEAD_BACK[$pos]:-} $back"
  DEAD_RESET[$pos]="${DEAD_RESET[$pos]:-} $((ended - killed))"
}

# (k) Virtual circuits (issue 14, PROTOCOL §12): a client with 2 legs per circuit
# downloads 200 MB while one leg loses a gateway: its middle killed (SIGKILL), its
# entry killed, or every packet at its middle dropped (nftables in the middle's
# namespace, the process alive). The download must complete with the file's sha256
# without a gap of more than VC_MAX_GAP_MS without bytes, and a replacement leg must
# join within 5 s. The same with legs = 1 is
# measured for comparison, and must lose the download (else the fault missed the
# circuit). P2P_VC_RUNS runs per fault (default 1).
VC_RUNS=${P2P_VC_RUNS:-1}
VC_MAX_GAP_MS=1000
VC_FILE_MB=200
# The guards of the VC cases' clients.
VC_GUARDS=(gw1 gw2 gw4)
declare -gA VC_NOTE=()

case_vc_lose_leg() {
  local fault k run
  [ -s "$AN_DIR/www/vc.bin" ] || head -c "${VC_FILE_MB}M" /dev/urandom >"$AN_DIR/www/vc.bin" || fail "cannot write vc.bin" || return
  VC_SHA=$(sha256sum "$AN_DIR/www/vc.bin" | cut -d' ' -f1)
  stop_up client-up
  for fault in middle entry drop; do
    for k in 2 1; do
      for run in $(seq 1 "$VC_RUNS"); do
        vc_run "$fault" "$k" "$run" || return 1
      done
    done
  done
  note "2 legs: ${VC_NOTE[2]}"
  note "1 leg: ${VC_NOTE[1]}"
}

# vc_get URL OUT RATE_MB: downloads URL in the client's namespace at most RATE_MB
# MB/s (60 s at most), writing "T_MS BYTES" per read and at the end "done BYTES
# SHA256" or "error T_MS REASON" to OUT.
vc_get() {
  an_in p2p-client 60 "$PY" - "$1" "$2" "$3" <<'EOF'
import hashlib, sys, time, urllib.request
url, out, rate = sys.argv[1], sys.argv[2], float(sys.argv[3]) * 1e6
f = open(out, "w", buffering=1)
h, n = hashlib.sha256(), 0
start = time.time()
try:
    r = urllib.request.urlopen(url, timeout=20)
    while True:
        b = r.read(65536)
        if not b:
            break
        h.update(b)
        n += len(b)
        now = time.time()
        f.write("%d %d\n" % (now * 1000, n))
        ahead = n / rate - (now - start)
        if ahead > 0:
            time.sleep(ahead)
    f.write("done %d %s\n" % (n, h.hexdigest()))
except Exception as e:
    f.write("error %d %s\n" % (time.time() * 1000, repr(e).replace("\n", " ")))
EOF
}

# vc_up LEGS LOG: `anonnet up` as process vc-up in the client, on a VC of LEGS
# legs (one circuit) from a fresh state with gw1's descriptor cache, waits until it
# is up and, for 2 legs, until the second leg joined.
vc_up() {
  local k=$1 log=$2 st=$AN_DIR/vc-state n
  rm -rf "$st"
  n=$(narrow_cache "$AN_DIR/client-state/descriptors.cache" "$st/descriptors.cache" "${GWS[@]}") ||
    fail "could not cut down the cache" || return
  [ "$n" = "${#GWS[@]}" ] || fail "the cut-down cache has $n gateways, not ${#GWS[@]}" || return
  # Fixed guards (VC_GUARDS), so that vc-tbf knows which links the legs start on.
  {
    printf 'count = 3\nlifetime_secs = 5184000\n'
    for g in "${VC_GUARDS[@]}"; do printf '\n[[guard]]\nkey = "%s"\nchosen_at = %s\n' "${PUB[$g]}" "$(date +%s)"; done
  } >"$st/guards.toml"
  {
    printf '[client]\ncircuits = 1\nlegs = %s\n' "$k"
    printf '\n[discovery]\nbootstrap = ["198.18.1.99:%s %s"]\nsubnet_v4 = 24\nsubnet_v6 = 48\n' "$PORT" "${PUB[gw1]}"
    printf '\n[tunnel]\nstate_dir = "%s"\n' "$st"
  } >"$AN_DIR/vc.toml"
  an_start vc-up p2p-client "$log" "$AN_BIN" up --config "$AN_DIR/vc.toml"
  an_wait_log "$log" '^anonnet up:' 30 "${AN_PID[vc-up]}" ||
    fail "$k legs: 'up' did not come up: $(tail -2 "$log" | tr '\n' ' ')" || return
  if [ "$k" = 2 ]; then
    an_wait_log "$log" 'joined \(2 live\)' 15 "${AN_PID[vc-up]}" ||
      { stop_up vc-up; fail "the second leg did not join: $(grep -E 'leg|path' "$log" | tail -3 | tr '\n' ' ')"; return 1; }
  fi
}

# vc_hop LOG N: the gateway at hop N (1: the entry) of the first circuit (the first
# leg) LOG names; or what went wrong, with status 1.
vc_hop() {
  local line addr h
  line=$(sed 's/\x1b\[[0-9;]*m//g' "$1" | grep -m1 'circuit [0-9]* up through ')
  addr=$(sed -E 's/.* up through //' <<<"$line" | awk -F' -> ' -v n="$2" '{print $n}')
  addr=${addr%:*}
  h=$(host_of "${addr#[}")
  [[ " ${GWS[*]} " == *" $h "* ]] || { echo "'$line' names no gateway at hop $2"; return 1; }
  echo "$h"
}

# vc_run FAULT LEGS RUN: one run of case_vc_lose_leg.
vc_run() {
  local fault=$1 k=$2 run=$3 log=$AN_DIR/vc-up-$1-$2-$3.log dl=$AN_DIR/vc-dl-$1-$2-$3.txt
  local h pid killed result what bytes sha gap ended rep
  logs "$log" "$dl"
  vc_up "$k" "$log" || { CASE_REASON="$fault: $CASE_REASON"; return 1; }
  # The leg to break: the first circuit's path (the first leg).
  case $fault in
    entry) h=$(vc_hop "$log" 1) ;;
    *) h=$(vc_hop "$log" 2) ;;
  esac || { stop_up vc-up; fail "$fault/$k: $h"; return 1; }
  vc_get "http://$SERVER4/vc.bin" "$dl" 40 &
  pid=$!
  sleep 1.5
  killed=$(an_now_ms)
  case $fault in
    drop)
      ip netns exec "$(ns "$h")" nft -f - <<<"table inet vcdrop { chain i { type filter hook input priority -10; udp dport $PORT drop; }; chain o { type filter hook output priority -10; udp sport $PORT drop; }; }" ||
        { kill "$pid"; stop_up vc-up; fail "cannot add the drop rule in $h"; return 1; } ;;
    *) an_stop "$h" KILL 5 ;;
  esac
  wait "$pid"
  case $fault in
    drop) ip netns exec "$(ns "$h")" nft delete table inet vcdrop ;;
    *) start_gateway "$h" || { stop_up vc-up; fail "$fault/$k: $h did not start again"; return 1; } ;;
  esac
  result=$(grep -E '^(done|error) ' "$dl")
  read -r what bytes sha <<<"$result"
  # The longest time without bytes from 1 s before the fault to the end.
  gap=$(awk -v t="$killed" '$1 ~ /^[0-9]+$/ { if (p && $1 >= t - 1000 && $1 - p > g) g = $1 - p; p = $1 } END { print g + 0 }' "$dl")
  ended=$(awk '$1 ~ /^[0-9]+$/ { e = $1; b = $2 } END { printf "%.0f %d\n", e, b }' "$dl")
  rep=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -E 'leg [0-9]+ joined' | awk '{print $1}' | while read -r ts; do
    t=$(date -d "$ts" +%s%3N 2>/dev/null) && [ "$t" -gt "$killed" ] && { echo $((t - killed)); break; }
  done)
  stop_up vc-up
  if [ "$k" = 2 ]; then
    [ "$what" = done ] && [ "$sha" = "$VC_SHA" ] ||
      fail "$fault: the download over 2 legs did not complete intact: $result" || return
    [ "$gap" -le "$VC_MAX_GAP_MS" ] ||
      fail "$fault $h: $gap ms without bytes, more than $VC_MAX_GAP_MS" || return
    [ -n "$rep" ] && [ "$rep" -le 5000 ] ||
      fail "$fault: no replacement leg joined within 5 s (after ${rep:-more than the download} ms)" || return
    VC_NOTE[2]="${VC_NOTE[2]:-}$fault $h: complete, sha256 equal, longest gap $gap ms, a replacement leg joined after ${rep:-more than the download} ms; "
  else
    [ "$what" != done ] || [ "$sha" != "$VC_SHA" ] ||
      fail "$fault: the download over 1 leg survived the fault: the fault missed the circuit" || return
    VC_NOTE[1]="${VC_NOTE[1]:-}$fault $h: lost (${ended#* } of $((VC_FILE_MB * 1048576)) bytes, last $((${ended% *} - killed)) ms after the fault); "
  fi
}

# ---------------------------------------------------------------------------------
# vc-tbf (issue 14): the links of the VC's guards are limited to VC_TBF_MBIT each way
# (tbf on both ends of their veth), so each leg gets at most that much. One TCP
# stream (iperf3, up and down) over 2 legs must get at least VC_TBF_GAIN percent of
# what it gets over 1 leg. (Over 1 leg it gets about 78% of the link: each 1,204
# bytes of TCP payload cross the link as about 1,510 bytes with the cell's header,
# so 2 legs cannot reach 1.7 times the link's rate, only 1.7 times 1 leg's.)
VC_TBF_MBIT=100
VC_TBF_GAIN=160
VC_TBF_SECS=5

# vc_tbf SPEC...: `tc qdisc replace ... root SPEC` on both ends of each guard's link
# ("none": the qdisc removed).
vc_tbf() {
  local g
  for g in "${VC_GUARDS[@]}"; do
    if [ "$1" = none ]; then
      tc -n "$(ns "$g")" qdisc del dev eth0 root 2>/dev/null
      tc -n "$INET" qdisc del dev "v-$g" root 2>/dev/null
    else
      tc -n "$(ns "$g")" qdisc replace dev eth0 root "$@" &&
        tc -n "$INET" qdisc replace dev "v-$g" root "$@" || return 1
    fi
  done
  return 0
}

# vc_iperf up|down: Mbit/s one iperf3 TCP stream got from the client to the server
# (up) or back (down), as the receiver counted it; "error ..." on failure.
vc_iperf() {
  local -a rev=()
  [ "$1" = down ] && rev=(-R)
  an_in p2p-client $((VC_TBF_SECS + 15)) iperf3 -c "$SERVER4" -t "$VC_TBF_SECS" -O 1 -J "${rev[@]}" 2>/dev/null |
    "$PY" -c '
import json, sys
try:
    r = json.load(sys.stdin)
    print("%.0f" % (r["end"]["sum_received"]["bits_per_second"] / 1e6))
except Exception as e:
    print("error", repr(e))'
}

# vc_iperf_server: iperf3 -s on the server address (process iperf3).
vc_iperf_server() {
  an_start iperf3 "$INET" "$AN_DIR/iperf3.log" iperf3 -s -B "$SERVER4" --forceflush
  an_wait_log "$AN_DIR/iperf3.log" 'Server listening' 10 "${AN_PID[iperf3]}" ||
    fail "the iperf3 server did not start"
}

# vc_p99 COUNT: pings the server every 10 ms COUNT times from the client; prints
# the 99th percentile of the round trips in ms and the replies ("P99 REPLIES").
vc_p99() {
  an_in p2p-client $(($1 / 100 + 10)) ping -n -i 0.01 -c "$1" -W 1 "$SERVER4" 2>/dev/null |
    sed -nE 's/.* time=([0-9.]+) ms.*/\1/p' | sort -n |
    awk '{ t[NR] = $1 } END { if (!NR) { print "none 0"; exit } i = int(NR * 0.99); if (i < 1) i = 1; printf "%.2f %d\n", t[i], NR }'
}

# vc_compare TAG RUNS: one TCP stream up and down over a VC of 2 legs and of 1,
# and pings during each (from its second second on) and before them; RUNS times,
# 2 legs and 1 in turn. Fills VC_MBIT[K-DIR] (Mbit/s) and VC_P99[K-DIR] (ms, DIR
# up, down or idle) with the medians of the runs.
declare -gA VC_MBIT=() VC_P99=()
vc_compare() {
  local tag=$1 runs=$2 k dir pf run log key
  local -A mbit=() p99=()
  vc_iperf_server || return 1
  for run in $(seq 1 "$runs"); do
    for k in 2 1; do
      log=$AN_DIR/vc-$tag-$k-$run.log
      logs "$log"
      vc_up "$k" "$log" || { an_stop iperf3 TERM 5; return 1; }
      p99[$k-idle]+="$(vc_p99 200 | cut -d' ' -f1) "
      for dir in up down; do
        pf=$AN_DIR/vc-$tag-$k-$dir-$run.ping
        { sleep 1; vc_p99 $(((VC_TBF_SECS - 1) * 100)) >"$pf"; } &
        mbit[$k-$dir]+="$(vc_iperf "$dir") "
        wait $!
        p99[$k-$dir]+="$(cut -d' ' -f1 "$pf") "
      done
      stop_up vc-up
    done
  done
  an_stop iperf3 TERM 5
  # shellcheck disable=SC2086 # each entry is a list of figures
  for key in "${!mbit[@]}"; do VC_MBIT[$key]=$(vc_median ${mbit[$key]}); done
  # shellcheck disable=SC2086
  for key in "${!p99[@]}"; do VC_P99[$key]=$(vc_median ${p99[$key]}); done
}

# vc_median N...: the median (the lower middle one of an even count).
vc_median() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

# vc_table: the figures of vc_compare for a note.
vc_table() {
  local k
  for k in 2 1; do
    printf '%s leg(s): up %s, down %s Mbit/s, ping p99 idle %s, loaded up %s, down %s ms; ' "$k" \
      "${VC_MBIT[$k-up]}" "${VC_MBIT[$k-down]}" "${VC_P99[$k-idle]}" "${VC_P99[$k-up]}" "${VC_P99[$k-down]}"
  done
}

# vc_gain PERCENT: fails unless 2 legs got at least PERCENT% of 1 leg's Mbit/s in
# both directions.
vc_gain() {
  local dir got one
  for dir in up down; do
    got=${VC_MBIT[2-$dir]} one=${VC_MBIT[1-$dir]}
    [[ $got =~ ^[0-9]+$ && $one =~ ^[0-9]+$ ]] || fail "$dir: no figure ($got, $one)" || return
    [ $((got * 100)) -ge $((one * $1)) ] ||
      fail "2 legs $dir: $got Mbit/s, not $1% of 1 leg's $one" || return
  done
}

case_vc_tbf() {
  stop_up client-up
  vc_tbf tbf rate "${VC_TBF_MBIT}mbit" burst 64kb latency 20ms ||
    { vc_tbf none; fail "cannot limit the guards' links with tbf"; return 1; }
  vc_compare tbf 1
  local rc=$?
  vc_tbf none
  [ "$rc" = 0 ] || return 1
  note "guards' links at $VC_TBF_MBIT Mbit/s, one TCP stream: $(vc_table)"
  vc_gain "$VC_TBF_GAIN"
}

# vc-speed (issue 14): without limits, 2 legs lose little against 1 (the common
# case): one TCP stream gets at least VC_SPEED_GAIN% of 1 leg's Mbit/s, and the
# 99th percentile of pings during it is at most VC_P99_SLACK% of 1 leg's plus 1 ms.
# (The issue's target is 90%; runs by hand give medians of 90-103%, and the
# gateways of 2 legs share this machine's cores, so the floor leaves room for a
# loaded CI machine.)
VC_SPEED_GAIN=80
VC_SPEED_RUNS=3
VC_P99_SLACK=150

case_vc_speed() {
  local dir got one
  stop_up client-up
  vc_compare speed "$VC_SPEED_RUNS" || return 1
  note "unlimited links, one TCP stream, medians of $VC_SPEED_RUNS runs: $(vc_table)"
  vc_gain "$VC_SPEED_GAIN" || return 1
  for dir in up down; do
    got=${VC_P99[2-$dir]} one=${VC_P99[1-$dir]}
    [[ $got =~ ^[0-9.]+$ && $one =~ ^[0-9.]+$ ]] || fail "$dir: no ping figure ($got, $one)" || return
    awk -v a="$got" -v b="$one" -v s="$VC_P99_SLACK" 'BEGIN { exit !(a <= b * s / 100 + 1) }' ||
      fail "2 legs $dir: ping p99 $got ms under load, above $VC_P99_SLACK% of 1 leg's $one ms + 1" || return
  done
}

# ---------------------------------------------------------------------------------
# vc-loss (issue 14): the middle of one leg drops VC_LOSS_PCT% of the datagrams it
# receives (nft numgen) during a TCP download and an upload over 2 legs; the reorder
# buffers that put the legs' packets in order (the client's for the download, the
# exit's for the upload) must stay within REORDER_BYTES, and the loss must have
# reached them (gaps given up).
VC_LOSS_PCT=10
REORDER_BYTES=$((1024 * 1024))

case_vc_loss() {
  local log=$AN_DIR/vc-loss.log mid ex dir peak lost xpeak xlost stats
  local -A mbit=()
  logs "$log"
  stop_up client-up
  vc_iperf_server || return 1
  vc_up 2 "$log" || { an_stop iperf3 TERM 5; return 1; }
  mid=$(vc_hop "$log" 2) && ex=$(vc_hop "$log" 3) ||
    { stop_up vc-up; an_stop iperf3 TERM 5; fail "$mid $ex"; return 1; }
  ip netns exec "$(ns "$mid")" nft -f - <<<"table inet vcloss { chain i { type filter hook input priority -10; udp dport $PORT numgen random mod 100 < $VC_LOSS_PCT drop; }; }" ||
    { stop_up vc-up; an_stop iperf3 TERM 5; fail "cannot add the loss rule in $mid"; return 1; }
  for dir in down up; do
    mbit[$dir]=$(vc_iperf "$dir")
  done
  ip netns exec "$(ns "$mid")" nft delete table inet vcloss
  stop_up vc-up
  an_stop iperf3 TERM 5
  # The client's line at its end, and the exit's counters (printed when it stops).
  stats=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -m1 'legs joined')
  lost=$(sed -E 's/.* ([0-9]+) lost.*/\1/' <<<"$stats")
  peak=$(sed -E 's/.*at most ([0-9]+) bytes held.*/\1/' <<<"$stats")
  an_stop "$ex" TERM 10
  read -r xlost xpeak < <(grep -o 'anonnet gateway stopping: {.*' "$AN_DIR/$ex.log" | tail -1 | cut -d' ' -f4- |
    python3 -c 'import json, sys; r = json.load(sys.stdin)["exit"]["vc"]["reorder"]; print(r["lost"], r["held_peak"])')
  start_gateway "$ex" || fail "$ex did not start again" || return
  note "leg 1's middle $mid drops $VC_LOSS_PCT%: one TCP stream down ${mbit[down]} Mbit/s, up ${mbit[up]} Mbit/s; client: ${lost:-?} numbers given up, at most ${peak:-?} bytes held; exit $ex: ${xlost:-?} given up, at most ${xpeak:-?} bytes held (bound $REORDER_BYTES)"
  [[ $peak =~ ^[0-9]+$ && $lost =~ ^[0-9]+$ ]] || fail "no counters in the client's last lines: '$stats'" || return
  [[ $xpeak =~ ^[0-9]+$ && $xlost =~ ^[0-9]+$ ]] || fail "no VC counters in $ex's last lines" || return
  [ "$lost" -gt 0 ] && [ "$xlost" -gt 0 ] || fail "the loss did not reach the reorder buffers" || return
  [ "$peak" -le "$REORDER_BYTES" ] && [ "$xpeak" -le "$REORDER_BYTES" ] ||
    fail "a reorder buffer held more than $REORDER_BYTES bytes" || return
  for dir in down up; do
    [[ ${mbit[$dir]} =~ ^[0-9]+$ ]] && [ "${mbit[$dir]}" -gt 0 ] || fail "the $dir transfer failed: ${mbit[$dir]}" || return
  done
}

# ---------------------------------------------------------------------------------
# The run

run_case gateways case_gateways
run_case discover-all case_discover
run_case discover-refusal case_refusal
run_case claim-heard-first case_claim_first
run_case up-flows case_up_flows
run_case port-8080-policy case_port_8080
run_case warm-cache case_warm_cache
run_case mixed-up case_mixed_up
run_case mixed-own-traffic case_mixed_own_traffic
run_case mixed-published case_mixed_published
run_case mixed-relays case_mixed_relays
run_case mixed-kill-switch case_mixed_kill_switch
run_case subnet-rule case_subnet_rule
# Last: its 2-hop directory circuits through the guard may join gw4 and gw5, which
# subnet-rule's capture must not see (directory circuits carry no traffic, and
# their first hop is the guard, which knows the client anyway: PROTOCOL §11).
run_case discover-via-guard case_discover_via_guard
# After all others: they kill and restart gateways.
run_case dead-gateway case_dead_gateway
run_case vc-lose-leg case_vc_lose_leg
run_case vc-tbf case_vc_tbf
run_case vc-speed case_vc_speed
run_case vc-loss case_vc_loss
# cases_on_exit cleans up and prints the summary line.
