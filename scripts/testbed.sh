#!/usr/bin/env bash
# An interactive anonnet testbed in network namespaces: a client, two relays (gw1,
# gw2), an exit and an "internet" with a web server, DNS (www.anonnet.test) and
# iperf3 (see netns-tests/lib.sh for the addresses). Nothing runs in, or changes,
# the machine's own network namespace.
#
#   scripts/testbed.sh up      install what is missing, build, start everything, and
#                              fetch http://www.anonnet.test/ through the 3 hops
#   scripts/testbed.sh shell   a bash in the client namespace: all its traffic goes
#                              through anon0
#   scripts/testbed.sh status  what runs
#   scripts/testbed.sh down    stop everything and delete the namespaces
#
# State (PIDs, keys, configs, logs): /run/anonnet-testbed. Needs root.
# ANONNET_BIN=/path/to/anonnet uses that binary instead of building one.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=netns-tests/lib.sh
. "$ROOT/netns-tests/lib.sh"
# shellcheck source=scripts/toolchain.sh
. "$ROOT/scripts/toolchain.sh"
AN_DIR=/run/anonnet-testbed
AN_BIN=$AN_DIR/anonnet
ME=scripts/testbed.sh

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }

need_root() {
  [ "$(id -u)" = 0 ] || { echo "$ME $1 needs root (network namespaces): sudo $ME $1" >&2; exit 1; }
}

# Rebuilds AN_PID (latest PID per name) from the record of an earlier invocation.
load_pids() {
  local name pid st
  [ -f "$AN_DIR/pids" ] || return 0
  while read -r name pid st; do AN_PID[$name]=$pid; done <"$AN_DIR/pids"
}

# ---------------------------------------------------------------------------------

install_toolchain() {
  an_install_missing || return 1
  local -a pkgs=()
  command -v cc >/dev/null 2>&1 || pkgs+=(build-essential)
  command -v pkg-config >/dev/null 2>&1 || pkgs+=(pkg-config)
  if [ ${#pkgs[@]} -gt 0 ]; then
    an_say "installing ${pkgs[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null || return 1
  fi
  an_ensure_toolchain "$ROOT"
}

build() {
  if [ -n "${ANONNET_BIN:-}" ]; then
    cp "$ANONNET_BIN" "$AN_BIN"
    return
  fi
  an_say "building anonnet (cargo build --release)"
  (cd "$ROOT" && cargo build --release --quiet --bin anonnet) || return 1
  cp "$ROOT/target/release/anonnet" "$AN_BIN"
}

# Prints the flows the router (inet) saw during a fetch, along the path and back.
show_flows() {
  awk '
    BEGIN {
      split("198.18.1.2 198.18.2.2 198.18.3.2 198.18.4.2 198.18.0.1", a4, " ")
      split("2001:db8:1::2 2001:db8:2::2 2001:db8:3::2 2001:db8:4::2 2001:db8:ff::1", a6, " ")
      split("client gw1 gw2 exit server", nm, " ")
      for (i = 1; i <= 5; i++) { name[a4[i]] = nm[i]; rank[a4[i]] = i; name[a6[i]] = nm[i]; rank[a6[i]] = i }
    }
    {
      for (i = 1; i <= NF; i++) if ($i == "IP" || $i == "IP6") break
      if (i > NF || $(i + 2) != ">") next
      src = $(i + 1); dst = $(i + 3); sub(/:$/, "", dst)
      sport = src; sub(/.*\./, "", sport); sub(/\.[0-9]+$/, "", src)
      dport = dst; sub(/.*\./, "", dport); sub(/\.[0-9]+$/, "", dst)
      if (!(src in rank) || !(dst in rank)) next
      # A forwarded packet is seen twice: count it as it enters (packets of the server
      # host only leave).
      if ($3 != (name[src] == "server" ? "Out" : "In")) next
      proto = ($0 ~ /Flags \[/) ? "TCP" : "UDP"
      port = (dport == 9000 || dport == 80 || dport == 53) ? dport : sport
      key = rank[src] " " rank[dst] " " port
      if (!(key in count)) line[key] = sprintf("%-6s -> %-6s  %-15s -> %-15s %s port %s", name[src], name[dst], src, dst, proto, port)
      count[key]++
    }
    function show(s, d,   p, k) {
      split("9000 53 80", ports, " ")
      for (p = 1; p <= 3; p++) {
        k = s " " d " " ports[p]
        if (k in count) printf "      %s  (%d packets)\n", line[k], count[k]
      }
    }
    END {
      print "    towards the server:"
      for (s = 1; s <= 5; s++) for (d = s + 1; d <= 5; d++) show(s, d)
      print "    and back:"
      for (s = 5; s >= 1; s--) for (d = s - 1; d >= 1; d--) show(s, d)
    }
  ' "$1"
}

testbed_up() {
  need_root up
  if [ -f "$AN_DIR/up" ]; then
    echo "the testbed is already up ($ME status; $ME shell; $ME down)"
    exit 0
  fi
  if [ -d "$AN_DIR" ]; then
    echo "a testbed is partly there ($AN_DIR): run $ME down first" >&2
    exit 1
  fi
  local conflicts
  conflicts=$(an_ns_conflicts)
  if [ -n "$conflicts" ]; then
    echo "refusing: these exist already (netns-tests running?): $(tr '\n' ' ' <<<"$conflicts")" >&2
    exit 1
  fi
  install_toolchain || { echo "could not install what the testbed needs" >&2; exit 1; }
  mkdir -p "$AN_DIR" && chmod 755 "$AN_DIR"
  exec 3>&1 4>&2
  trap 'exec 1>&3 2>&4; echo "interrupted: cleaning up"; testbed_down >/dev/null; exit 130' INT TERM
  build || up_failed "the build failed"
  an_has_cmd up || up_failed "this anonnet has no 'up' subcommand yet"
  an_has_opt gateway --exit || up_failed "this anonnet has no 'gateway --exit' yet"

  an_say "network: namespaces ${AN_NS[*]} (198.18.0.0/15, 2001:db8::/32)"
  an_topology_up || up_failed "could not build the network"
  an_say "servers in inet: http on $AN_SERVER4 and [$AN_SERVER6] ports 80/443/25, DNS, iperf3, whoami :$AN_WHOAMI_PORT"
  an_services_start || up_failed "could not start the servers"
  an_configs || up_failed "could not create the keys and configs"
  local gw
  for gw in gw1 gw2 exit; do
    an_say "starting $gw ($(an_v4 "$gw"):$AN_PORT)"
    an_start_gateway "$gw" || up_failed "$gw did not start" "$AN_DIR/$gw.log"
  done
  an_say "starting the client: anonnet up (3 hops: gw1, gw2, exit)"
  an_start_client "$AN_DIR/client.toml" 30 || up_failed "anonnet up did not come up" "$AN_DIR/client-up.log"

  # Proof: fetch the page by name through anon0, watching the wire in inet.
  local cap=$AN_DIR/proof.txt result
  an_start2 proof-capture inet "$cap" "$AN_DIR/proof.err" tcpdump -i any -n -l -c 2000 \
    "udp port $AN_PORT or port 80 or port 53"
  an_wait_log "$AN_DIR/proof.err" 'listening on' 10 "$AN_LAST_PID" || an_say "(tcpdump did not start)"
  local off
  off=$(stat -c %s "$AN_DIR/http80.log")
  result=$(an_in client 30 curl -sS --max-time 20 -o "$AN_DIR/page.html" \
    -w 'HTTP %{http_code}, %{size_download} bytes from %{remote_ip}' "http://$AN_DNS_NAME/" 2>&1)
  local rc=$?
  sleep 0.3
  an_stop proof-capture INT 5
  [ "$rc" = 0 ] || up_failed "curl http://$AN_DNS_NAME/ from the client failed: $result" "$AN_DIR/client-up.log"
  touch "$AN_DIR/up"
  trap - INT TERM

  echo
  echo "The testbed is up. From the client namespace, curl http://$AN_DNS_NAME/ gave:"
  echo "    $result"
  echo "  the client:      $(grep -m1 '^anonnet up:' "$AN_DIR/client-up.log")"
  echo "  route:           $(ip -n client route get "$AN_SERVER4" 2>&1 | head -1)"
  echo "  the web server logged (the exit's address, never the client's $(an_v4 client)):"
  tail -c +$((off + 1)) "$AN_DIR/http80.log" | grep -m2 'GET / ' | sed 's/^/    /'
  echo "  DNS server:      $(grep "query\[A\] $AN_DNS_NAME" "$AN_DIR/dnsmasq.log" | tail -1 | sed 's/.*: //')"
  echo "  packets the router (inet) saw during the fetch:"
  show_flows "$cap"
  echo "  anonnet check (the leak self-test; its test server is the whoami server on inet):"
  an_in client 40 "$AN_BIN" check --server "http://$AN_DNS_NAME:$AN_WHOAMI_PORT/" 2>&1 | sed 's/^/    /'
  echo
  echo "Next:"
  echo "  $ME shell    a shell in the client namespace (all its traffic goes through anon0);"
  echo "  ${ME//?/ }          try curl http://$AN_DNS_NAME/, ping $AN_SERVER4, traceroute $AN_SERVER4,"
  echo "  ${ME//?/ }          anonnet status, anonnet check --server http://$AN_DNS_NAME:$AN_WHOAMI_PORT/"
  echo "  $ME status   what runs; logs and configs are in $AN_DIR"
  echo "  $ME down     stop everything and delete the namespaces"
}

# up_failed REASON [LOG...]: shows the logs, removes what up made, exits 1.
up_failed() {
  local reason=$1 f
  shift
  echo "testbed up failed: $reason" >&2
  for f in "$@"; do an_tail "$f" 25 >&2; done
  echo "removing what was started" >&2
  testbed_down >/dev/null
  exit 1
}

testbed_down() {
  need_root down
  if [ ! -d "$AN_DIR" ]; then
    local conflicts
    conflicts=$(an_ns_conflicts)
    echo "the testbed is not up"
    [ -n "$conflicts" ] && echo "(these exist, but not made by the testbed; netns-tests running?): $(tr '\n' ' ' <<<"$conflicts")"
    return 0
  fi
  load_pids
  an_cleanup
  rm -rf -- "${AN_DIR:?}"
  echo "the testbed is down: processes stopped, namespaces and /etc/netns entries removed"
}

testbed_status() {
  local name pid st alive ns
  if [ ! -d "$AN_DIR" ]; then
    echo "the testbed is down"
    return 0
  fi
  [ -f "$AN_DIR/up" ] && echo "the testbed is up ($AN_DIR)" || echo "the testbed is partly up ($AN_DIR): $ME down"
  echo "namespaces: $(ip netns list | awk '{print $1}' | grep -xE "$(
    IFS='|'
    echo "${AN_NS[*]}"
  )" | tr '\n' ' ')"
  echo "processes:"
  [ -f "$AN_DIR/pids" ] && awk '{ last[$1] = $0; if (!($1 in seen)) { seen[$1] = 1; o[++k] = $1 } }
      END { for (i = 1; i <= k; i++) print last[o[i]] }' "$AN_DIR/pids" |
    while read -r name pid st; do
      case $name in proof-capture) continue ;; esac
      if an_alive "$pid" "$st"; then alive="running"; else alive="not running"; fi
      ns=$(ip netns identify "$pid" 2>/dev/null)
      printf '  %-14s pid %-8s %-12s %s\n' "$name" "$pid" "$alive" "${ns:+in $ns}"
    done
  if ip -n client link show anon0 >/dev/null 2>&1; then
    echo "client anon0: $(ip -n client -br addr show anon0 | tr -s ' ')"
  else
    echo "client: no anon0"
  fi
  grep -h '^anonnet up:' "$AN_DIR/client-up.log" 2>/dev/null | tail -1 | sed 's/^/  /'
  echo "logs: $AN_DIR/*.log"
}

testbed_shell() {
  need_root shell
  [ -f "$AN_DIR/up" ] || { echo "the testbed is not up: $ME up" >&2; exit 1; }
  load_pids
  an_running client-up || echo "warning: the client daemon (anonnet up) is not running; see $AN_DIR/client-up.log" >&2
  cat >"$AN_DIR/shellrc" <<EOF
[ -f ~/.bashrc ] && . ~/.bashrc
export PATH="$AN_DIR:\$PATH"
PS1='\[\e[1;32m\][anonnet client ns, all traffic via anon0]\[\e[0m\] \w\\$ '
echo "In the client namespace; its traffic goes through anon0 (gw1 -> gw2 -> exit)."
echo "Try: curl http://$AN_DNS_NAME/   ping $AN_SERVER4   ping $AN_SERVER6   traceroute $AN_SERVER4"
echo "     iperf3 -c $AN_SERVER4   curl -O http://$AN_SERVER4/big.bin   ip route get $AN_SERVER4"
echo "The server's logs are $AN_DIR/http80.log and dnsmasq.log. 'exit' leaves."
EOF
  exec ip netns exec client bash --rcfile "$AN_DIR/shellrc" -i
}

case ${1:-} in
  up) testbed_up ;;
  down) testbed_down ;;
  status) testbed_status ;;
  shell) testbed_shell ;;
  -h | --help | help) usage ;;
  *) usage >&2; exit 2 ;;
esac
