#!/usr/bin/env bash
# anonnet against its anchors, in network namespaces, on one machine in one run:
# the plain routed path (the limit), wireguard-go and boringtun-cli (userspace
# WireGuard over TUN) 1 hop and chained over 3 hops (one tunnel per leg, so every
# hop decrypts and re-encrypts), anonnet 1 hop and 3 hops (last gateway --exit), and
# anonnet-vc: 3 hops on a virtual circuit of 2 legs (two guards in r1, two middles in
# r2, one exit in r3), against anonnet's one route over the same namespaces.
#
# Usage (root): scripts/bench.sh [--quick] [--runs N] [--only SYSTEM[,SYSTEM]] [--out DIR]
#   --quick        one short run (< 3 minutes once built): 1 s iperf3 tests, a
#                  shorter UDP search, fewer pings, no 10,000-circuit figure
#   --runs N       runs of every topology (default 3, --quick 1); the tables give the
#                  median and min–max, ratios are taken pair by pair within a run
#   --only LIST    a subset of: plain, wireguard-go, boringtun, anonnet, anonnet-vc
#   --padding MODE the anonnet client's padding_mode: adaptive (default), off or
#                  constant (at its default rate); recorded in meta.json
#   --out DIR      where results and logs go (default /tmp/anonnet-bench/DATE)
#   --no-build     use the release binaries already built (fails if missing)
#   -h, --help     this text
#
# Path: bn-c → bn-r1 → bn-r2 → bn-r3 → bn-s (iperf3 server 198.18.14.2), veth links
# 198.18.1K.0/24 and 2001:db8:1K::/64 for K = 1..4 (anonnet-vc's second guard and
# middle: 198.18.21.2 in bn-r1, 198.18.22.2 in bn-r2). Every namespace it creates is
# called bn-*, and is deleted on exit (also on failure or Ctrl-C); nothing runs in,
# or changes, the machine's own network namespace. Installs what is missing:
# iperf3, wireguard-go, wireguard-tools (apt-get), boringtun-cli (cargo install
# --locked into ~/.cargo/bin). Prints markdown tables; the JSON file's path is the
# last line. Figures and JSON keys: docs/PERFORMANCE.md, "scripts/bench.sh".
# Not for CI: do not run it at the same time as netns-tests/run.sh or other load.
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=netns-tests/lib.sh
. "$REPO/netns-tests/lib.sh"
# shellcheck source=scripts/toolchain.sh
. "$REPO/scripts/toolchain.sh"
ME=scripts/bench.sh
REPORT="$REPO/scripts/bench_report.py"

usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; }

RUNS=3
RUNS_SET=0
QUICK=0
ONLY=plain,wireguard-go,boringtun,anonnet,anonnet-vc
OUT=''
BUILD=1
PADDING=adaptive
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1; shift ;;
    --runs) RUNS=${2:-}; RUNS_SET=1; shift 2 || { echo "--runs needs a number" >&2; exit 2; } ;;
    --runs=*) RUNS=${1#--runs=}; RUNS_SET=1; shift ;;
    --only) ONLY=${2:-}; shift 2 || { echo "--only needs a list" >&2; exit 2; } ;;
    --only=*) ONLY=${1#--only=}; shift ;;
    --out) OUT=${2:-}; shift 2 || { echo "--out needs a directory" >&2; exit 2; } ;;
    --out=*) OUT=${1#--out=}; shift ;;
    --padding) PADDING=${2:-}; shift 2 || { echo "--padding needs a mode" >&2; exit 2; } ;;
    --padding=*) PADDING=${1#--padding=}; shift ;;
    --no-build) BUILD=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "$ME: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ $RUNS =~ ^[1-9][0-9]?$ ]] || { echo "$ME: --runs: a number from 1 to 99" >&2; exit 2; }
case $PADDING in
  off | adaptive | constant) ;;
  *) echo "$ME: --padding: unknown mode '$PADDING' (off, adaptive, constant)" >&2; exit 2 ;;
esac
[ "$QUICK" = 1 ] && [ "$RUNS_SET" = 0 ] && RUNS=1
declare -A WANT=()
IFS=, read -r -a _only <<<"$ONLY"
for s in "${_only[@]}"; do
  case $s in
    plain | wireguard-go | boringtun | anonnet | anonnet-vc) WANT[$s]=1 ;;
    *) echo "$ME: --only: unknown system '$s' (plain, wireguard-go, boringtun, anonnet, anonnet-vc)" >&2; exit 2 ;;
  esac
done
[ ${#WANT[@]} -gt 0 ] || { echo "$ME: --only: no system given" >&2; exit 2; }
want() { [ -n "${WANT[$1]:-}" ]; }

# Timings. Every load is bounded: iperf3 -t, ping -c, timeout on every command, and
# the whole run stops starting new topologies MAX_SECS after the build.
if [ "$QUICK" = 1 ]; then
  T_TCP=1 T_UDP=1 UDP_START=25000 UDP_UP=5 UDP_BISECT=2 PING_N=100 LOAD_T=2 LOAD_PING_N=100
  CIRCUITS=(1000) IDLE_TIMEOUT=60 MAX_SECS=$((RUNS * 170 + 60))
else
  T_TCP=5 T_UDP=2 UDP_START=25000 UDP_UP=7 UDP_BISECT=3 PING_N=200 LOAD_T=5 LOAD_PING_N=350
  CIRCUITS=(1000 10000) IDLE_TIMEOUT=180 MAX_SECS=$((RUNS * 900 + 300))
fi
UDP_LEN=64
UDP_MAX_PPS=4000000

SERVER=198.18.14.2
BN_NS=(bn-c bn-r1 bn-r2 bn-r3 bn-s)
WG_RUN=/var/run/wireguard
AN_GW_PORT=9000
IDLE_GW_PORT=9100

# ---------------------------------------------------------------------------------
# Output, state, cleanup

say() { printf '# %s\n' "$*" >&2; }
die() { printf '%s: error: %s\n' "$ME" "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (network namespaces): sudo $ME"

# Refuse to run next to a bench already running (or its leftovers).
conflicts=$(
  ip netns list 2>/dev/null | awk '{print $1}' | grep '^bn-' | sed 's/^/namespace /'
  for ns in "${BN_NS[@]}"; do [ -e "/etc/netns/$ns" ] && echo "/etc/netns/$ns"; done
  compgen -G "$WG_RUN/bnwg-*.sock" | sed 's/^/socket /'
)
if [ -n "$conflicts" ]; then
  echo "$ME: refusing to run: these already exist (another bench running, or left over):" >&2
  while IFS= read -r l; do echo "  $l"; done <<<"$conflicts" >&2
  echo "(leftovers of a killed run: ip netns del NAME; rm -r /etc/netns/NAME; rm SOCKET)" >&2
  exit 1
fi
if ip netns list 2>/dev/null | awk '{print $1}' | grep -qxE 'client|gw1|gw2|exit|inet'; then
  say "warning: netns-tests or the testbed seem to be running (namespaces client/gw1/...);"
  say "warning: their load will distort the figures"
fi

START_S=$(date +%s)
STAMP=$(date +%Y%m%d-%H%M%S)
[ -n "$OUT" ] || OUT=/tmp/anonnet-bench/$STAMP
mkdir -p "$OUT" || die "cannot create $OUT"
OUT=$(cd "$OUT" && pwd)
AN_DIR=$OUT/work
LOGS=$OUT/logs
mkdir -p "$AN_DIR" "$LOGS" "$AN_DIR/keys" || die "cannot create $AN_DIR"
chmod 700 "$AN_DIR/keys"
RAW=$OUT/raw.jsonl
: >"$RAW"
WG_RUN_EXISTED=0
[ -d "$WG_RUN" ] && WG_RUN_EXISTED=1

# The traps may run while a redirection is active: they write to the saved streams.
exec 3>&1 4>&2
on_exit() {
  local rc=$?
  exec 1>&3 2>&4
  trap - EXIT INT TERM
  bn_teardown
  # The copies of the binaries (the keys and configs stay, for the logs).
  rm -f "$AN_DIR/anonnet" "$AN_DIR/idle_circuits"
  [ "$rc" = 0 ] || echo "$ME: stopped (status $rc); logs in $LOGS" >&2
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Stops everything this script started and deletes what it created (lib.sh's
# an_cleanup: recorded PIDs only, our namespaces and /etc/netns dirs only), then the
# UAPI sockets of our WireGuard daemons if a killed one left its socket behind.
bn_teardown() {
  local dev
  an_cleanup
  if [ -f "$AN_DIR/wgdevs" ]; then
    while read -r dev; do
      case $dev in bnwg-*) [ -S "$WG_RUN/$dev.sock" ] && rm -f -- "$WG_RUN/$dev.sock" ;; esac
    done <"$AN_DIR/wgdevs"
    rm -f "$AN_DIR/wgdevs"
  fi
  [ "$WG_RUN_EXISTED" = 0 ] && [ -d "$WG_RUN" ] && rmdir "$WG_RUN" 2>/dev/null
  return 0
}

RUN=0
# rec SYSTEM HOPS FIGURE VALUE: one raw measurement of this run.
rec() {
  [[ ${4:-} =~ ^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$ ]] || return 0
  printf '{"run":%d,"system":"%s","hops":"%s","figure":"%s","value":%s}\n' \
    "$RUN" "$1" "$2" "$3" "$4" >>"$RAW"
}
# note TEXT: a line for the report's notes (skips and failures).
note() {
  say "$*"
  python3 -c 'import json,sys; print(json.dumps({"note": sys.argv[1]}))' "$*" >>"$RAW"
}
# calc EXPR: floating-point arithmetic (awk), printed with up to 6 decimals.
calc() { awk "BEGIN { v = $1; printf \"%.6g\\n\", v }"; }
# fge A B: A >= B as floats.
fge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }'; }

elapsed() { echo $(($(date +%s) - START_S)); }

# ---------------------------------------------------------------------------------
# Installing and building

bn_install() {
  local pair
  local -a pkgs=()
  for pair in ip:iproute2 iperf3:iperf3 ping:iputils-ping python3:python3 setsid:util-linux \
    findmnt:util-linux timeout:coreutils nft:nftables; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || pkgs+=("${pair#*:}")
  done
  if want wireguard-go || want boringtun; then
    command -v wg >/dev/null 2>&1 || pkgs+=(wireguard-tools)
  fi
  if want wireguard-go; then
    command -v wireguard-go >/dev/null 2>&1 || pkgs+=(wireguard-go)
  fi
  if [ ${#pkgs[@]} -gt 0 ]; then
    mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u)
    say "installing ${pkgs[*]} (apt-get)"
    if ! { apt-get update -qq >/dev/null &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null; }; then
      die "apt-get install ${pkgs[*]} failed"
    fi
  fi
  if want boringtun; then
    BORINGTUN=$(command -v boringtun-cli 2>/dev/null || true)
    [ -n "$BORINGTUN" ] || [ ! -x "$HOME/.cargo/bin/boringtun-cli" ] || BORINGTUN=$HOME/.cargo/bin/boringtun-cli
    if [ -z "$BORINGTUN" ]; then
      an_ensure_toolchain "$REPO" || die "no Rust toolchain for cargo install boringtun-cli"
      say "installing boringtun-cli (cargo install boringtun-cli --locked; a few minutes)"
      timeout 1800 cargo install boringtun-cli --locked >"$LOGS/cargo-install-boringtun.log" 2>&1 ||
        die "cargo install boringtun-cli failed (see $LOGS/cargo-install-boringtun.log)"
      BORINGTUN=$HOME/.cargo/bin/boringtun-cli
    fi
  fi
}

# Builds anonnet (release) and, if examples/idle_circuits.rs exists, that example;
# copies the binaries into the work dir so a rebuild during the run changes nothing.
bn_build() {
  local target
  AN_BIN=$AN_DIR/anonnet
  IDLE_BIN=''
  want anonnet || want anonnet-vc || return 0
  an_ensure_toolchain "$REPO" || die "no Rust toolchain"
  target=${CARGO_TARGET_DIR:-$REPO/target}
  case $target in /*) ;; *) target=$REPO/$target ;; esac
  if [ "$BUILD" = 1 ]; then
    say "building anonnet (cargo build --release; the first build takes several minutes)"
    (cd "$REPO" && timeout 3600 cargo build --release --bin anonnet) >"$LOGS/cargo-build.log" 2>&1 ||
      die "cargo build --release failed (see $LOGS/cargo-build.log)"
  fi
  cp "$target/release/anonnet" "$AN_BIN" || die "no $target/release/anonnet"
  want anonnet || return 0
  if [ -f "$REPO/examples/idle_circuits.rs" ]; then
    if [ "$BUILD" = 1 ]; then
      (cd "$REPO" && timeout 3600 cargo build --release --example idle_circuits) \
        >"$LOGS/cargo-build-idle.log" 2>&1 || {
        note "skipped: idle circuits: cargo build --release --example idle_circuits failed (see $LOGS/cargo-build-idle.log)"
        return 0
      }
    fi
    if cp "$target/release/examples/idle_circuits" "$AN_DIR/idle_circuits" 2>/dev/null; then
      IDLE_BIN=$AN_DIR/idle_circuits
    else
      note "skipped: idle circuits: no $target/release/examples/idle_circuits"
    fi
  else
    note "skipped: examples/idle_circuits.rs missing (gateway memory per idle circuit)"
  fi
}

# ---------------------------------------------------------------------------------
# The network: bn-c → bn-r1 → bn-r2 → bn-r3 → bn-s, created fresh for every
# topology and deleted after it. Link K (1..4) is 198.18.1K.0/24: .1 on the left
# (interface bn-right), .2 on the right (bn-left).

bn_net_up() {
  local ns k l r i
  for ns in "${BN_NS[@]}"; do
    # rp_filter off: the chained WireGuard return path enters on another device than
    # the one a reverse lookup would pick for the tunnel addresses.
    an_ns_add "$ns" net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 || return 1
    # Every daemon gets its own resolv.conf (`anonnet up` rewrites it).
    an_resolv "$ns" "$SERVER" || return 1
  done
  for k in 1 2 3 4; do
    l=${BN_NS[k - 1]} r=${BN_NS[k]}
    ip -n "$l" link add bn-right type veth peer name bn-left netns "$r" || return 1
    ip -n "$l" addr add "198.18.1$k.1/24" dev bn-right || return 1
    ip -n "$r" addr add "198.18.1$k.2/24" dev bn-left || return 1
    ip -n "$l" -6 addr add "2001:db8:1$k::1/64" dev bn-right nodad || return 1
    ip -n "$r" -6 addr add "2001:db8:1$k::2/64" dev bn-left nodad || return 1
    ip -n "$l" link set bn-right up || return 1
    ip -n "$r" link set bn-left up || return 1
  done
  for ns in bn-r1 bn-r2 bn-r3; do
    ip netns exec "$ns" sysctl -q -w net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 >/dev/null || return 1
  done
  # Towards the server: each node's default route points right. Back: the routers
  # know the links (and the WireGuard tunnel addresses 100.70.0.0/16) on their left.
  ip -n bn-c route add default via 198.18.11.2 || return 1
  ip -n bn-c -6 route add default via 2001:db8:11::2 || return 1
  ip -n bn-r1 route add default via 198.18.12.2 || return 1
  ip -n bn-r1 -6 route add default via 2001:db8:12::2 || return 1
  ip -n bn-r2 route add default via 198.18.13.2 || return 1
  ip -n bn-r2 -6 route add default via 2001:db8:13::2 || return 1
  ip -n bn-r2 route add 198.18.11.0/24 via 198.18.12.1 || return 1
  ip -n bn-r2 route add 100.70.0.0/16 via 198.18.12.1 || return 1
  ip -n bn-r2 -6 route add 2001:db8:11::/64 via 2001:db8:12::1 || return 1
  ip -n bn-r3 route add default via 198.18.14.2 || return 1
  ip -n bn-r3 -6 route add default via 2001:db8:14::2 || return 1
  for i in 11 12; do
    ip -n bn-r3 route add "198.18.$i.0/24" via 198.18.13.1 || return 1
    ip -n bn-r3 -6 route add "2001:db8:$i::/64" via 2001:db8:13::1 || return 1
  done
  ip -n bn-r3 route add 100.70.0.0/16 via 198.18.13.1 || return 1
  ip -n bn-s route add default via 198.18.14.1 || return 1
  ip -n bn-s -6 route add default via 2001:db8:14::1 || return 1
  for ((i = 0; i < 50; i++)); do
    an_in bn-c 3 ping -n -q -c 1 -W 1 "$SERVER" >/dev/null 2>&1 && break
    sleep 0.1
  done
  [ "$i" -lt 50 ] || { an_err "bn-c cannot reach $SERVER over the plain path"; return 1; }
  bn_iperf_server || { an_err "iperf3 server did not start"; return 1; }
}

# Starts the iperf3 server in bn-s (a new log file each time, so that the readiness
# wait cannot see an earlier server's line).
SRV_N=0
bn_iperf_server() {
  SRV_N=$((SRV_N + 1))
  local log=$LOGS/iperf3-server.$SRV_N.log
  an_start iperf3 bn-s "$log" iperf3 -s -B "$SERVER" --forceflush
  an_wait_log "$log" 'Server listening' 10 "${AN_PID[iperf3]}"
}

# Stops this topology's processes and deletes its namespaces.
bn_net_down() { bn_teardown; }

# Restarts the iperf3 server (after a client was killed mid-test it may stay busy).
bn_iperf_restart() {
  an_stop iperf3 TERM 3
  bn_iperf_server
}

# ---------------------------------------------------------------------------------
# Daemons. DAEMONS holds "role pid" of this topology's tunnel processes, for RSS.

DAEMONS=()

# Peak RSS (VmHWM, KiB) of a PID.
hwm() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null; }

# bn_wg_start IMPL NS DEV ROLE: starts wireguard-go or boringtun-cli creating DEV in NS,
# waits for its UAPI socket and the device.
bn_wg_start() {
  local impl=$1 ns=$2 dev=$3 role=$4 log=$LOGS/$RUN-$1-$3.log i
  echo "$dev" >>"$AN_DIR/wgdevs"
  case $impl in
    wireguard-go) an_start "$dev" "$ns" "$log" wireguard-go -f "$dev" ;;
    boringtun) an_start "$dev" "$ns" "$log" "$BORINGTUN" -f --threads 2 \
      --disable-drop-privileges --log "$log.2" "$dev" ;;
  esac
  for ((i = 0; i < 100; i++)); do
    [ -S "$WG_RUN/$dev.sock" ] && ip -n "$ns" link show "$dev" >/dev/null 2>&1 && break
    an_alive "${AN_PID[$dev]}" || break
    sleep 0.1
  done
  if ! [ -S "$WG_RUN/$dev.sock" ]; then
    an_err "$impl did not create $dev in $ns"
    an_tail "$log" >&2
    return 1
  fi
  DAEMONS+=("$role ${AN_PID[$dev]}")
}

# bn_wg_set NS DEV PORT ADDR PEER_PUB PEER_ALLOWED [PEER_ENDPOINT]: keys, peer, address.
bn_wg_set() {
  local ns=$1 dev=$2 port=$3 addr=$4 pub=$5 allowed=$6 ep=${7:-}
  local -a epa=()
  [ -n "$ep" ] && epa=(endpoint "$ep")
  an_in "$ns" 10 wg set "$dev" private-key "$AN_DIR/keys/$dev.priv" listen-port "$port" \
    peer "$pub" allowed-ips "$allowed" "${epa[@]}" || return 1
  ip -n "$ns" addr add "$addr" dev "$dev" || return 1
  ip -n "$ns" link set "$dev" mtu 1420 up
}

# bn_wg_up IMPL HOPS: one WireGuard tunnel per leg. Leg K runs from node K-1 (the
# client for K = 1; there, device bnwg-c or bnwg-{K-1}u, port 51821) to router rK
# (device bnwg-Kd, port 51820), which decrypts and routes the packet on: into the
# next leg's tunnel, or (last leg) out to the server. Tunnel addresses: client
# 100.70.1.2; replies find their way back by the 100.70.1.0/24 routes.
bn_wg_up() {
  local impl=$1 hops=$2 k up upns dev
  for ((k = 1; k <= hops; k++)); do
    if [ "$k" = 1 ]; then up=bnwg-c upns=bn-c; else up=bnwg-$((k - 1))u upns=bn-r$((k - 1)); fi
    for dev in "$up" "bnwg-${k}d"; do
      (umask 077 && wg genkey >"$AN_DIR/keys/$dev.priv") || return 1
      wg pubkey <"$AN_DIR/keys/$dev.priv" >"$AN_DIR/keys/$dev.pub" || return 1
    done
    local role=client
    [ "$k" = 1 ] || role=r$((k - 1))u
    bn_wg_start "$impl" "$upns" "$up" "$role" || return 1
    bn_wg_start "$impl" "bn-r$k" "bnwg-${k}d" "r${k}d" || return 1
    local allowed=100.70.0.0/16
    [ "$k" = 1 ] && allowed=100.70.1.2/32
    bn_wg_set "bn-r$k" "bnwg-${k}d" 51820 "100.70.1$k.1/32" "$(cat "$AN_DIR/keys/$up.pub")" \
      "$allowed" || return 1
    local addr=100.70.2$k.1/32
    [ "$k" = 1 ] && addr=100.70.1.2/32
    bn_wg_set "$upns" "$up" 51821 "$addr" "$(cat "$AN_DIR/keys/bnwg-${k}d.pub")" 0.0.0.0/0 \
      "198.18.1$k.2:51820" || return 1
    ip -n "$upns" route add 198.18.14.0/24 dev "$up" || return 1
    ip -n "bn-r$k" route add 100.70.1.0/24 dev "bnwg-${k}d" || return 1
  done
}

# bn_an_gw SYS HOPS NAME NS ADDR EXIT: starts the gateway with key NAME in NS on
# ADDR:AN_GW_PORT, an exit when EXIT is 1.
bn_an_gw() {
  local sys=$1 hops=$2 name=$3 ns=$4 addr=$5 exit=$6 cfg=$AN_DIR/an-$1-$2-$3.toml
  local log=$LOGS/$RUN-$sys$hops-$name.log
  local -a extra=()
  {
    echo '[gateway]'
    echo "identity = \"$AN_DIR/keys/$name.key\""
    echo "listen = [\"$addr\"]"
    echo "listen_ports = $AN_GW_PORT"
    if [ "$exit" = 1 ]; then
        echo
        echo '[exit]'
        echo "dns_upstream = [\"$SERVER\"]"
        # The per-circuit packet-rate limit (default 50,000/s) is an abuse guard:
        # raised to its maximum so that it does not cap the UDP figure.
      echo 'max_pps = 10000000'
    fi
  } >"$cfg"
  [ "$exit" = 1 ] && extra=(--exit)
  an_start "an-$name" "$ns" "$log" "$AN_BIN" gateway "${extra[@]}" --config "$cfg"
  if ! an_wait_log "$log" ' listening on ' 10 "${AN_PID[an-$name]}"; then
    an_err "anonnet gateway $name in $ns did not start"
    an_tail "$log" >&2
    return 1
  fi
  DAEMONS+=("$name ${AN_PID[an-$name]}")
}

# bn_an_up SYS HOPS: anonnet: gateways in r1 (..r3), the last one --exit, and
# `anonnet up` in bn-c with that fixed path. anonnet-vc (3 hops): a second guard
# r1b in bn-r1 (198.18.21.2) and a second middle r2b in bn-r2 (198.18.22.2) besides;
# the client, with r1 and r1b as its guards, discovers the five and builds one
# virtual circuit of 2 legs (r1 or r1b, then r2 or r2b, then r3). Records
# circuit_build_ms and up_ready_ms (anonnet-vc: until the second leg joined).
bn_an_up() {
  local sys=$1 hops=$2 k cfg last t0 t1 i line st g n
  local ready='^anonnet up:'
  for ((k = 1; k <= hops; k++)); do
    bn_an_gw "$sys" "$hops" "r$k" "bn-r$k" "198.18.1$k.2" "$([ "$k" = "$hops" ] && echo 1 || echo 0)" || return 1
  done
  cfg=$AN_DIR/an-$sys-$hops-client.toml
  st=$AN_DIR/client-state-$RUN-$sys-$hops
  {
    echo '[client]'
    echo "padding_mode = \"$PADDING\""
    if [ "$sys" = anonnet ]; then
      for ((k = 1; k <= hops; k++)); do
        printf '\n[[client.path]]\naddr = "198.18.1%s.2:%s"\nkey = "%s"\n' "$k" "$AN_GW_PORT" \
          "$(cat "$AN_DIR/keys/r$k.pub")"
      done
    else
      printf 'circuits = 1\nlegs = 2\n\n[discovery]\nguards = 2\nsubnet_v4 = 24\nbootstrap = [\n'
      for g in r1:11 r1b:21 r2:12 r2b:22 r3:13; do
        printf '  "198.18.%s.2:%s %s",\n' "${g#*:}" "$AN_GW_PORT" "$(cat "$AN_DIR/keys/${g%:*}.pub")"
      done
      printf ']\n'
    fi
    printf '\n[tunnel]\nstate_dir = "%s"\n' "$st"
  } >"$cfg"
  if [ "$sys" = anonnet-vc ]; then
    ip -n bn-r1 addr add 198.18.21.2/32 dev bn-left || return 1
    ip -n bn-r2 addr add 198.18.22.2/32 dev bn-left || return 1
    ip -n bn-r2 route add 198.18.21.0/24 via 198.18.12.1 || return 1
    ip -n bn-r3 route add 198.18.22.0/24 via 198.18.13.1 || return 1
    bn_an_gw "$sys" "$hops" r1b bn-r1 198.18.21.2 0 || return 1
    bn_an_gw "$sys" "$hops" r2b bn-r2 198.18.22.2 0 || return 1
    mkdir -p "$st" || return 1
    {
      printf 'count = 2\nlifetime_secs = 5184000\n'
      for g in r1 r1b; do
        printf '\n[[guard]]\nkey = "%s"\nchosen_at = %s\n' "$(cat "$AN_DIR/keys/$g.pub")" "$(date +%s)"
      done
    } >"$st/guards.toml"
    n=$(an_in bn-c 60 "$AN_BIN" discover --json --config "$cfg" 2>"$LOGS/$RUN-$sys$hops-discover.log" |
      python3 -c 'import json, sys; print(len(json.load(sys.stdin)))')
    [ "$n" = 5 ] || { an_err "anonnet discover found ${n:-no} gateways, not 5"; an_tail "$LOGS/$RUN-$sys$hops-discover.log" >&2; return 1; }
    ready='joined \(2 live\)'
  fi
  last=$LOGS/$RUN-$sys$hops-client.log
  t0=$(an_now_ms)
  an_start an-client bn-c "$last" "$AN_BIN" up --config "$cfg"
  # Polled every 10 ms, so up_ready_ms is good to ~10 ms.
  for ((i = 0; i < 3000; i++)); do
    grep -qE "$ready" "$last" 2>/dev/null && break
    an_alive "${AN_PID[an-client]}" || break
    sleep 0.01
  done
  t1=$(an_now_ms)
  line=$(grep -m1 '^anonnet up:' "$last" 2>/dev/null)
  if [ -z "$line" ] || ! grep -qE "$ready" "$last"; then
    an_err "anonnet up did not come up (waited for: $ready)"
    an_tail "$last" >&2
    return 1
  fi
  DAEMONS+=("client ${AN_PID[an-client]}")
  rec "$sys" "$hops" up_ready_ms $((t1 - t0))
  [[ $line =~ built\ in\ ([0-9]+)\ ms ]] && rec "$sys" "$hops" circuit_build_ms "${BASH_REMATCH[1]}"
  return 0
}

# Waits until the server answers pings from bn-c (through whatever tunnel is up).
bn_path_ok() {
  local i
  for ((i = 0; i < 40; i++)); do
    an_in bn-c 3 ping -n -q -c 1 -W 1 "$SERVER" >/dev/null 2>&1 && return 0
    sleep 0.25
  done
  return 1
}

# ---------------------------------------------------------------------------------
# Measurements

cpu_busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8; exit }' /proc/stat; }
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)

# bn_tcp SYS HOPS STREAMS up|down: iperf3 TCP; records tcpN_DIR_mbps (and, for 1
# stream up, cpu_s_per_gb from /proc/stat over the test).
bn_tcp() {
  local sys=$1 hops=$2 p=$3 dir=$4 f c0 c1 mbps bytes
  local -a rev=()
  [ "$dir" = down ] && rev=(-R)
  f=$LOGS/$RUN-$sys$hops-tcp$p-$dir.json
  c0=$(cpu_busy)
  an_in bn-c $((T_TCP + 20)) iperf3 -c "$SERVER" -t "$T_TCP" -P "$p" "${rev[@]}" -J \
    --connect-timeout 3000 >"$f" 2>&1
  c1=$(cpu_busy)
  read -r mbps bytes < <(python3 "$REPORT" tcp "$f")
  if [ "$mbps" = ERR ] || [ -z "$bytes" ]; then
    note "$sys $hops hop(s) run $RUN: TCP $p stream(s) $dir failed: $(python3 "$REPORT" tcp "$f" | cut -c5-200)"
    bn_iperf_restart
    return 1
  fi
  rec "$sys" "$hops" "tcp${p}_${dir}_mbps" "$mbps"
  if [ "$p" = 1 ] && [ "$dir" = up ] && [ "$bytes" -gt 0 ]; then
    rec "$sys" "$hops" cpu_s_per_gb "$(calc "($c1 - $c0) / $CLK_TCK / ($bytes / 1e9)")"
  fi
}

# bn_udp_probe PPS: iperf3 UDP, 64-byte payloads, offered at PPS; sets U_SENT,
# U_RECV (packets/s) and U_LOSS (%).
bn_udp_probe() {
  local f=$LOGS/$RUN-$CUR-udp-$1.json
  # -w 4M: with the default socket buffer the iperf3 server itself drops bursts
  # (UdpRcvbufErrors) at ~50,000 packets/s even on the plain path.
  an_in bn-c $((T_UDP + 15)) iperf3 -c "$SERVER" -u -l "$UDP_LEN" -b $(($1 * UDP_LEN * 8)) \
    -w 4M -t "$T_UDP" -J --connect-timeout 3000 >"$f" 2>&1
  read -r U_SENT U_RECV U_LOSS < <(python3 "$REPORT" udp "$f")
  if [ "$U_SENT" = ERR ]; then
    U_ERR=$(python3 "$REPORT" udp "$f" | cut -c5-200)
    bn_iperf_restart
    return 1
  fi
}

# bn_udp SYS HOPS: the highest rate with < 1% loss. Doubles the offered rate from
# UDP_START (at most UDP_UP probes) until loss >= 1% or iperf3 cannot offer more,
# then bisects UDP_BISECT times between the last good and the first bad rate. Records
# the received packets/s of the best good probe.
bn_udp() {
  local sys=$1 hops=$2 rate=$UDP_START good=0 bad=0 best=0 limited=0 i mid
  CUR=$sys$hops
  for ((i = 0; i < UDP_UP; i++)); do
    bn_udp_probe "$rate" || { note "$sys $hops hop(s) run $RUN: UDP probe failed: $U_ERR"; return 1; }
    if fge "$U_LOSS" 1; then
      bad=$rate
      break
    fi
    good=$rate
    fge "$best" "$U_RECV" || best=$U_RECV
    if ! fge "$U_SENT" "$(calc "0.9 * $rate")"; then limited=1; break; fi
    [ $((rate * 2)) -le "$UDP_MAX_PPS" ] || break
    rate=$((rate * 2))
  done
  # Even the first rate lost packets: step down (at most 4 times).
  for ((i = 0; good == 0 && i < 4; i++)); do
    rate=$((rate / 2))
    bn_udp_probe "$rate" || { note "$sys $hops hop(s) run $RUN: UDP probe failed: $U_ERR"; return 1; }
    if fge "$U_LOSS" 1; then bad=$rate; else good=$rate; best=$U_RECV; fi
  done
  if [ "$good" -gt 0 ] && [ "$bad" -gt 0 ] && [ "$limited" = 0 ]; then
    for ((i = 0; i < UDP_BISECT; i++)); do
      mid=$(((good + bad) / 2))
      bn_udp_probe "$mid" || break
      if fge "$U_LOSS" 1; then
        bad=$mid
      else
        good=$mid
        fge "$best" "$U_RECV" || best=$U_RECV
      fi
    done
  fi
  if [ "$good" = 0 ]; then
    note "$sys $hops hop(s) run $RUN: UDP lost >= 1% even at $rate packets/s"
    return 1
  fi
  rec "$sys" "$hops" udp64_pps "$best"
  rec "$sys" "$hops" udp64_sender_limited "$limited"
}

# bn_ping N FILE: N pings, 10 ms apart; sets P_AVG P_P99 P_N (replies) P_LOSS.
bn_ping() {
  an_in bn-c $(($1 / 50 + 15)) ping -n -c "$1" -i 0.01 -W 1 "$SERVER" >"$2" 2>&1
  read -r P_AVG P_P99 P_N P_LOSS < <(python3 "$REPORT" ping "$2")
  export P_N
  [ "$P_AVG" != ERR ]
}

# bn_rtt SYS HOPS: idle and loaded ping; added RTT per hop against RTT_BASE.
bn_rtt() {
  local sys=$1 hops=$2 f lp idle_p99
  f=$LOGS/$RUN-$sys$hops-ping-idle.txt
  if bn_ping "$PING_N" "$f"; then
    rec "$sys" "$hops" rtt_idle_avg_ms "$P_AVG"
    rec "$sys" "$hops" rtt_idle_p99_ms "$P_P99"
    idle_p99=$P_P99
    if [ "$hops" != 0 ] && [ -n "$RTT_BASE" ]; then
      rec "$sys" "$hops" rtt_added_per_hop_ms "$(calc "($P_AVG - $RTT_BASE) / $hops")"
    fi
  else
    note "$sys $hops hop(s) run $RUN: idle ping got no replies"
  fi
  an_in bn-c $((LOAD_T + 20)) iperf3 -c "$SERVER" -t "$LOAD_T" -J --connect-timeout 3000 \
    >"$LOGS/$RUN-$sys$hops-load.json" 2>&1 &
  lp=$!
  sleep 0.5
  f=$LOGS/$RUN-$sys$hops-ping-load.txt
  if bn_ping "$LOAD_PING_N" "$f"; then
    rec "$sys" "$hops" rtt_load_avg_ms "$P_AVG"
    rec "$sys" "$hops" rtt_load_p99_ms "$P_P99"
    rec "$sys" "$hops" rtt_load_loss_pct "$P_LOSS"
    if [ "$hops" != 0 ] && [ -n "$RTT_BASE" ]; then
      rec "$sys" "$hops" rtt_load_added_per_hop_ms "$(calc "($P_AVG - $RTT_BASE) / $hops")"
    fi
    [ -n "${idle_p99:-}" ] && fge "$idle_p99" 0.000001 &&
      rec "$sys" "$hops" rtt_load_p99_over_idle_p99 "$(calc "$P_P99 / $idle_p99")"
  else
    note "$sys $hops hop(s) run $RUN: ping under load got no replies"
  fi
  wait "$lp" 2>/dev/null
  [ "$(python3 "$REPORT" tcp "$LOGS/$RUN-$sys$hops-load.json" | cut -c1-3)" = ERR ] && bn_iperf_restart
  return 0
}

# Peak RSS of this topology's tunnel processes.
bn_rss() {
  local sys=$1 hops=$2 d role pid v max=0 sum=0
  for d in "${DAEMONS[@]}"; do
    role=${d%% *} pid=${d#* }
    v=$(hwm "$pid")
    [ -n "$v" ] || continue
    sum=$((sum + v))
    case $role in
      client) rec "$sys" "$hops" rss_peak_kib_client "$v" ;;
      *) [ "$v" -gt "$max" ] && max=$v ;;
    esac
    rec "$sys" "$hops" "rss_peak_kib_$role" "$v"
  done
  [ "$max" -gt 0 ] && rec "$sys" "$hops" rss_peak_kib_gw_max "$max"
  [ "$sum" -gt 0 ] && rec "$sys" "$hops" rss_peak_kib_sum "$sum"
}

# bn_topology SYS HOPS: fresh namespaces, tunnel up, every figure, everything down.
bn_topology() {
  local sys=$1 hops=$2 t0
  t0=$(date +%s)
  DAEMONS=()
  RTT_BASE=''
  if [ "$hops" = 0 ]; then
    say "run $RUN/$RUNS: $sys path ($(elapsed) s so far)"
  else
    say "run $RUN/$RUNS: $sys, $hops hop(s) ($(elapsed) s so far)"
  fi
  if ! bn_net_up >"$LOGS/$RUN-$sys$hops-net.log" 2>&1; then
    note "$sys $hops hop(s) run $RUN: the namespaces did not come up: $(tail -n 3 "$LOGS/$RUN-$sys$hops-net.log" | tr '\n' ' ')"
    bn_net_down
    return 1
  fi
  if [ "$hops" != 0 ]; then
    # The plain path's RTT in these very namespaces, before the tunnel exists.
    bn_ping "$PING_N" "$LOGS/$RUN-$sys$hops-ping-base.txt" && RTT_BASE=$P_AVG &&
      rec "$sys" "$hops" rtt_base_avg_ms "$P_AVG"
    local ok=1
    case $sys in
      wireguard-go | boringtun) bn_wg_up "$sys" "$hops" >"$LOGS/$RUN-$sys$hops-up.log" 2>&1 || ok=0 ;;
      anonnet | anonnet-vc) bn_an_up "$sys" "$hops" >"$LOGS/$RUN-$sys$hops-up.log" 2>&1 || ok=0 ;;
    esac
    if [ "$ok" = 0 ] || ! bn_path_ok; then
      note "$sys $hops hop(s) run $RUN: the tunnel did not come up: $(tail -n 4 "$LOGS/$RUN-$sys$hops-up.log" | tr '\n' ' ' | cut -c1-300)"
      bn_net_down
      return 1
    fi
  fi
  bn_tcp "$sys" "$hops" 1 up
  bn_tcp "$sys" "$hops" 1 down
  bn_tcp "$sys" "$hops" 4 up
  bn_tcp "$sys" "$hops" 4 down
  bn_udp "$sys" "$hops"
  bn_rtt "$sys" "$hops"
  bn_rss "$sys" "$hops"
  bn_net_down
  say "  done in $(($(date +%s) - t0)) s"
}

# bn_idle N: a fresh gateway (echo on, as idle_circuits asks for) in bn-r1; the
# example builds N one-hop circuits from bn-c and reports the gateway's memory.
bn_idle() {
  local n=$1 cfg=$AN_DIR/idle-gw.toml log out line
  say "run $RUN/$RUNS: anonnet gateway with $n idle circuits ($(elapsed) s so far)"
  if ! bn_net_up >"$LOGS/$RUN-idle$n-net.log" 2>&1; then
    note "idle circuits $n run $RUN: the namespaces did not come up"
    bn_net_down
    return 1
  fi
  printf '[gateway]\nidentity = "%s"\nlisten = ["198.18.11.2"]\nlisten_ports = %s\necho = true\n' \
    "$AN_DIR/keys/r1.key" "$IDLE_GW_PORT" >"$cfg"
  log=$LOGS/$RUN-idle$n-gateway.log
  an_start idle-gw bn-r1 "$log" "$AN_BIN" gateway --config "$cfg"
  if ! an_wait_log "$log" ' listening on ' 10 "${AN_PID[idle-gw]}"; then
    note "idle circuits $n run $RUN: the gateway did not start"
    bn_net_down
    return 1
  fi
  out=$LOGS/$RUN-idle$n.out
  an_in bn-c "$IDLE_TIMEOUT" "$IDLE_BIN" --gateway "198.18.11.2:$IDLE_GW_PORT" \
    --pubkey "$(cat "$AN_DIR/keys/r1.pub")" --circuits "$n" --gateway-pid "${AN_PID[idle-gw]}" \
    >"$out" 2>"$LOGS/$RUN-idle$n.err"
  line=$(grep '^{' "$out" | tail -n 1)
  if [ -z "$line" ]; then
    note "idle circuits $n run $RUN: idle_circuits printed no JSON: $(tail -n 2 "$LOGS/$RUN-idle$n.err" | tr '\n' ' ' | cut -c1-200)"
    bn_net_down
    return 1
  fi
  local bpc ra rb bs
  read -r bpc ra rb bs < <(python3 -c '
import json, sys
o = json.loads(sys.argv[1])
print(*[o.get(k, "") if o.get(k) is not None else "" for k in
        ("bytes_per_circuit", "rss_after_kib", "rss_before_kib", "build_secs")])' "$line")
  rec anonnet 1 "idle_bytes_per_circuit_$n" "$bpc"
  rec anonnet 1 "idle_rss_after_kib_$n" "$ra"
  rec anonnet 1 "idle_rss_before_kib_$n" "$rb"
  rec anonnet 1 "idle_build_secs_$n" "$bs"
  bn_net_down
}

# ---------------------------------------------------------------------------------
# Main

bn_install
bn_build
# The time limit and the reported duration count from here, not from the build.
START_S=$(date +%s)
if want anonnet || want anonnet-vc; then
  for k in r1 r2 r3 r1b r2b; do
    "$AN_BIN" keygen --out "$AN_DIR/keys/$k.key" >/dev/null || die "anonnet keygen failed"
    "$AN_BIN" pubkey "$AN_DIR/keys/$k.key" >"$AN_DIR/keys/$k.pub" || die "anonnet pubkey failed"
  done
fi

TOPOS=()
want plain && TOPOS+=("plain 0")
want wireguard-go && TOPOS+=("wireguard-go 1" "wireguard-go 3")
want boringtun && TOPOS+=("boringtun 1" "boringtun 3")
want anonnet && TOPOS+=("anonnet 1" "anonnet 3")
want anonnet-vc && TOPOS+=("anonnet-vc 3")

for ((RUN = 1; RUN <= RUNS; RUN++)); do
  for t in "${TOPOS[@]}"; do
    if [ "$(elapsed)" -ge "$MAX_SECS" ]; then
      note "stopped early: the run reached its time limit of $MAX_SECS s"
      break 2
    fi
    # shellcheck disable=SC2086
    bn_topology $t
  done
  if want anonnet && [ -n "$IDLE_BIN" ]; then
    for n in "${CIRCUITS[@]}"; do bn_idle "$n"; done
  fi
done
[ "$QUICK" = 1 ] && want anonnet && [ -n "$IDLE_BIN" ] &&
  note "skipped: 10,000 idle circuits (--quick)"

# ---------------------------------------------------------------------------------
# Report

git_rev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -n "$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null)" ] && git_rev="$git_rev+dirty"
BN_MODE=$([ "$QUICK" = 1 ] && echo quick || echo full) BN_RUNS=$RUNS BN_ONLY=$ONLY \
  BN_DURATION=$(elapsed) BN_COMMIT=$git_rev BN_T_TCP=$T_TCP BN_T_UDP=$T_UDP BN_UDP_LEN=$UDP_LEN \
  BN_PING_N=$PING_N BN_LOAD_PING_N=$LOAD_PING_N BN_CIRCUITS="${CIRCUITS[*]}" BN_PADDING=$PADDING \
  BN_WGGO=$(wireguard-go --version 2>/dev/null | head -n 1) \
  BN_BT=$("${BORINGTUN:-boringtun-cli}" --version 2>/dev/null | head -n 1) \
  BN_IPERF=$(iperf3 --version 2>/dev/null | head -n 1) \
  python3 - "$OUT/meta.json" <<'EOF'
import json, os, platform, sys, time
e = os.environ
cpu = "?"
with open("/proc/cpuinfo") as f:
    for line in f:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
with open("/proc/loadavg") as f:
    load = f.read().strip()
meta = {
    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "mode": e["BN_MODE"],
    "runs": int(e["BN_RUNS"]),
    "systems": e["BN_ONLY"].split(","),
    "duration_secs": int(e["BN_DURATION"]),
    "cpu": cpu,
    "cores": os.cpu_count(),
    "kernel": platform.release(),
    "loadavg_at_end": load,
    "anonnet_commit": e["BN_COMMIT"],
    "wireguard_go_version": e.get("BN_WGGO", ""),
    "boringtun_version": e.get("BN_BT", ""),
    "iperf3_version": e.get("BN_IPERF", ""),
    "settings": {
        "tcp_secs": int(e["BN_T_TCP"]), "udp_probe_secs": int(e["BN_T_UDP"]),
        "udp_payload_bytes": int(e["BN_UDP_LEN"]), "ping_idle": int(e["BN_PING_N"]),
        "ping_loaded": int(e["BN_LOAD_PING_N"]), "ping_interval_ms": 10,
        "wireguard_mtu": 1420, "boringtun_threads": 2, "anonnet_exit_max_pps": 10000000,
        "idle_circuits": [int(x) for x in e["BN_CIRCUITS"].split()],
        "anonnet_padding_mode": e["BN_PADDING"],
    },
}
with open(sys.argv[1], "w") as f:
    json.dump(meta, f, indent=2)
EOF
python3 "$REPORT" report "$RAW" "$OUT/meta.json" "$OUT/bench.json" | tee "$OUT/bench.md"
echo
echo "$OUT/bench.json"
