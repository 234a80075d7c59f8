# shellcheck shell=bash
# Shared by netns-tests/run.sh and scripts/testbed.sh: the test network, its servers,
# the anonnet configs, readiness waits and cleanup. Source it; it defines an_* names.
#
# Topology (every namespace is created here and deleted by an_cleanup):
#
#   client 198.18.1.2 ──┐
#   gw1    198.18.2.2 ──┤   inet: router (forwarding on) + "internet" server host
#   gw2    198.18.3.2 ──┼── 198.18.N.1 / 2001:db8:N::1 on veth v-<ns>
#   exit   198.18.4.2 ──┘   servers on 198.18.0.1 and 2001:db8:ff::1 (on lo):
#                            http :80 :443 :25, dnsmasq :53, iperf3 :5201,
#                            whoami :8080 (anonnet check's test server)
#
# Each of client/gw1/gw2/exit has eth0 with 198.18.N.2/24 and 2001:db8:N::2/64 and
# default routes via inet. Nothing here touches the machine's own namespace: links are
# created inside `inet` with their peer placed directly in the other namespace, and
# sysctls are set only inside the namespaces.
#
# The caller sets AN_DIR (a directory for state, configs and logs) and AN_BIN (the
# anonnet binary, absolute path) before using the functions.

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

AN_NS=(client gw1 gw2 exit inet cont)
AN_SERVER4=198.18.0.1
AN_SERVER6=2001:db8:ff::1
AN_DNS_NAME=www.anonnet.test
AN_PORT=9000
AN_WHOAMI_PORT=8080
# When set (an address:port), every gateway and `up` started by an_start_gateway and
# an_start_client serves its Prometheus metrics there, in its own namespace.
AN_METRICS=${AN_METRICS:-}
AN_BIG_BYTES=$((50 * 1024 * 1024))
declare -gA AN_IDX=([client]=1 [gw1]=2 [gw2]=3 [exit]=4)
declare -gA AN_PID=()   # name -> PID of the latest process started under that name

an_v4() { echo "198.18.${AN_IDX[$1]}.2"; }
an_v6() { echo "2001:db8:${AN_IDX[$1]}::2"; }

an_say() { printf '# %s\n' "$*"; }
an_err() { printf 'error: %s\n' "$*" >&2; }
an_now_ms() { date +%s%3N; }

# an_fetch_until_ok NS URL OUT: from namespace NS, fetches URL-1, URL-2, ..., one
# every 0.25 s (each in the background, so a failing one does not delay the next),
# until one has worked or 48 were started (12 s); OUT gets "START CODE END" (ms) per
# fetch. Prints when the first that worked ended (nothing if none did).
an_fetch_until_ok() {
  local ns=$1 url=$2 out=$3 i pids=()
  : >"$out"
  for i in $(seq 1 48); do
    (
      local t code
      t=$(an_now_ms)
      code=$(an_in "$ns" 3 curl -s -m 2 -o /dev/null -w '%{http_code}' "$url-$i" 2>/dev/null)
      echo "$t $code $(an_now_ms)" >>"$out"
    ) &
    pids+=($!)
    sleep 0.25
    grep -q ' 200 ' "$out" && break
  done
  wait "${pids[@]}"
  awk '$2 == "200" {print $3}' "$out" | sort -n | head -1
}

# Run a command inside a namespace, bounded: an_in NS SECONDS cmd...
an_in() {
  local ns=$1 secs=$2
  shift 2
  timeout -k 2 "$secs" ip netns exec "$ns" "$@"
}

# ---------------------------------------------------------------------------------
# Packages

# Installs the missing tools (Debian). Never installs `dnsmasq` (it would start a
# system service); dnsmasq-base has the binary only.
an_install_missing() {
  local pair
  local -a pkgs=()
  for pair in ip:iproute2 nft:nftables tcpdump:tcpdump iperf3:iperf3 dnsmasq:dnsmasq-base \
    curl:curl python3:python3 ping:iputils-ping traceroute:traceroute ps:procps \
    sysctl:procps findmnt:util-linux setsid:util-linux sha256sum:coreutils ethtool:ethtool \
    systemd-analyze:systemd dpkg-shlibdeps:dpkg-dev; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || pkgs+=("${pair#*:}")
  done
  [ ${#pkgs[@]} -eq 0 ] && return 0
  mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u)
  an_say "installing ${pkgs[*]}"
  apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
}

# ---------------------------------------------------------------------------------
# Processes. Every process is started through an_start, which records "name pid
# starttime" in $AN_DIR/pids; stopping checks the start time so that a reused PID is
# never signalled.

# Prints "state starttime" of a PID, or nothing if it does not exist.
an_proc_stat() {
  local line rest
  read -r line 2>/dev/null <"/proc/$1/stat" || return 1
  rest=${line##*) }
  # shellcheck disable=SC2086
  set -- $rest
  echo "$1 ${20}"
}

# an_alive PID [STARTTIME]: the process exists, is not a zombie, and (if given) started
# at STARTTIME.
an_alive() {
  local st
  st=$(an_proc_stat "$1") || return 1
  [ "${st%% *}" != Z ] || return 1
  [ -z "${2:-}" ] || [ "${st#* }" = "$2" ]
}

# an_start NAME NS LOG cmd...: runs cmd in namespace NS in its own session (so a
# terminal's Ctrl-C or hangup does not reach it), stdout and stderr to LOG.
# Sets AN_LAST_PID and AN_PID[NAME].
an_start() {
  local name=$1 ns=$2 log=$3
  shift 3
  an_start2 "$name" "$ns" "$log" "" "$@"
}

# an_start2 NAME NS OUT ERR cmd...: the same with stderr to ERR (empty: to OUT).
an_start2() {
  local name=$1 ns=$2 out=$3 err=$4 st
  shift 4
  # Only stdin, stdout and stderr: no inherited descriptor (e.g. a caller's pipe, which
  # would then stay open as long as the daemon runs).
  if [ -z "$err" ]; then
    setsid ip netns exec "$ns" "$@" </dev/null >"$out" 2>&1 3>&- 4>&- &
  else
    setsid ip netns exec "$ns" "$@" </dev/null >"$out" 2>"$err" 3>&- 4>&- &
  fi
  AN_LAST_PID=$!
  AN_PID[$name]=$AN_LAST_PID
  st=$(an_proc_stat "$AN_LAST_PID") || st="? 0"
  echo "$name $AN_LAST_PID ${st#* }" >>"$AN_DIR/pids"
}

# The recorded start time of a PID (empty if not recorded).
an_pid_starttime() {
  awk -v p="$1" '$2 == p { t = $3 } END { print t }' "$AN_DIR/pids" 2>/dev/null
}

# Is the latest process called NAME running?
an_running() {
  local pid=${AN_PID[$1]:-}
  [ -n "$pid" ] && an_alive "$pid" "$(an_pid_starttime "$pid")"
}

# an_stop_pid PID [SIGNAL] [SECONDS]: signals PID (only if it is the process we
# recorded), waits up to SECONDS (default 10) for it to end, then SIGKILLs it.
# Sets AN_RC to its exit status when it is our child (else 0), 124 if it had to be
# killed, 125 if it was not running. Returns 0 if it ended by itself.
an_stop_pid() {
  # stderr off: bash would print "Killed ..." when it reaps a job that a signal ended.
  an_stop_pid_ "$@" 2>/dev/null
}
an_stop_pid_() {
  local pid=$1 sig=${2:-TERM} secs=${3:-10} st i
  st=$(an_pid_starttime "$pid")
  AN_RC=125
  if ! an_alive "$pid" "$st"; then
    wait "$pid" 2>/dev/null && AN_RC=0 || AN_RC=$?
    [ "$AN_RC" = 127 ] && AN_RC=125
    return 1
  fi
  kill "-$sig" "$pid" 2>/dev/null
  for ((i = 0; i < secs * 10; i++)); do
    an_alive "$pid" "$st" || break
    sleep 0.1
  done
  if an_alive "$pid" "$st"; then
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    AN_RC=124
    return 1
  fi
  if wait "$pid" 2>/dev/null; then AN_RC=0; else AN_RC=$?; fi
  # Not our child (e.g. testbed down from another shell): no status to collect.
  [ "$AN_RC" = 127 ] && AN_RC=0
  return 0
}

# an_stop NAME [SIGNAL] [SECONDS]: an_stop_pid on the latest process called NAME.
an_stop() {
  local pid=${AN_PID[$1]:-}
  AN_RC=125
  [ -n "$pid" ] || return 1
  an_stop_pid "$pid" "${2:-TERM}" "${3:-10}"
}

# Stops every recorded process that still runs, newest first (the client daemon,
# started last, goes first and can still clean up behind itself).
an_stop_all() {
  local name pid st
  [ -f "$AN_DIR/pids" ] || return 0
  while read -r name pid st; do
    if an_alive "$pid" "$st"; then
      an_stop_pid "$pid" TERM 5 || an_say "$name ($pid) had to be killed"
    fi
  done < <(tac "$AN_DIR/pids")
}

# an_wait_log FILE REGEX SECONDS [PID]: waits until FILE has a line matching the
# extended REGEX. Fails after SECONDS, or as soon as PID (if given) has ended.
an_wait_log() {
  local file=$1 re=$2 secs=$3 pid=${4:-} i
  for ((i = 0; i < secs * 10; i++)); do
    grep -Eq -- "$re" "$file" 2>/dev/null && return 0
    if [ -n "$pid" ] && ! an_alive "$pid"; then
      grep -Eq -- "$re" "$file" 2>/dev/null
      return
    fi
    sleep 0.1
  done
  return 1
}

# Prints the last lines of a log, indented, for failure reports.
an_tail() {
  local file=$1 n=${2:-15}
  [ -s "$file" ] || { echo "    ($file is empty or missing)"; return 0; }
  echo "    --- last lines of $file:"
  tail -n "$n" "$file" | cut -c1-300 | sed 's/^/    | /'
}

# ---------------------------------------------------------------------------------
# Namespaces

# Prints which of our namespace names or /etc/netns dirs already exist.
an_ns_conflicts() {
  local ns existing
  existing=$(ip netns list 2>/dev/null | awk '{print $1}')
  for ns in "${AN_NS[@]}"; do
    grep -qx -- "$ns" <<<"$existing" && echo "namespace $ns"
    [ -e "/etc/netns/$ns" ] && echo "/etc/netns/$ns"
  done
  return 0
}

# Records something created, for an_cleanup: "ns NAME", "etcnetns NAME", "etcnetns-root".
an_created() { echo "$*" >>"$AN_DIR/created"; }

# an_resolv NS NAMESERVER: gives NS its own /etc/resolv.conf (bind-mounted by
# `ip netns exec`) and checks that it really is a mount inside NS, so that a daemon
# rewriting /etc/resolv.conf there can never touch the machine's own file.
an_resolv() {
  local ns=$1 server=$2 got
  if [ ! -d /etc/netns ]; then
    mkdir /etc/netns || return 1
    an_created etcnetns-root
  fi
  mkdir "/etc/netns/$ns" || return 1
  an_created etcnetns "$ns"
  printf '# anonnet test namespace %s\nnameserver %s\n' "$ns" "$server" >"/etc/netns/$ns/resolv.conf"
  if ! ip netns exec "$ns" findmnt -n /etc/resolv.conf >/dev/null 2>&1; then
    an_err "/etc/resolv.conf in namespace $ns is not a bind mount; refusing to go on"
    return 1
  fi
  got=$(ip netns exec "$ns" cat /etc/resolv.conf)
  if [ "$got" != "$(cat "/etc/netns/$ns/resolv.conf")" ]; then
    an_err "/etc/resolv.conf in namespace $ns is not ours; refusing to go on"
    return 1
  fi
}

# Waits (bounded) until every veth in NS has its IPv6 link-local address (the kernel
# adds it once the link has carrier; the pre-`up` snapshots must not race it) and no
# IPv6 address is tentative.
an_wait_dad() {
  local ns=$1 i dev ok
  for ((i = 0; i < 100; i++)); do
    ok=1
    for dev in $(ip -n "$ns" -o link show type veth | awk -F': ' '{print $2}' | cut -d@ -f1); do
      [ -n "$(ip -n "$ns" -6 addr show dev "$dev" scope link 2>/dev/null)" ] || ok=0
    done
    [ -n "$(ip -n "$ns" -6 addr show tentative 2>/dev/null)" ] && ok=0
    [ "$ok" = 1 ] && return 0
    sleep 0.1
  done
  an_err "IPv6 link-local addresses in $ns missing or tentative after 10 s"
  return 1
}

# an_ns_add NS [SYSCTL=VALUE...]: a fresh namespace NS (recorded for cleanup) with lo
# up, no IPv6 DAD (every address is ours and unique), no router advertisements, and the
# extra sysctls given.
an_ns_add() {
  local ns=$1
  shift
  ip netns add "$ns" || return 1
  an_created ns "$ns"
  ip -n "$ns" link set lo up || return 1
  ip netns exec "$ns" sysctl -q -w net.ipv6.conf.all.accept_dad=0 \
    net.ipv6.conf.default.accept_dad=0 net.ipv6.conf.all.accept_ra=0 \
    net.ipv6.conf.default.accept_ra=0 "$@" >/dev/null
}

# an_attach NS N: a veth from inet (v-NS) to NS (eth0) with 198.18.N.0/24 and
# 2001:db8:N::/64, inet .1 and NS .2, and NS's default routes via inet.
an_attach() {
  local ns=$1 i=$2
  ip -n inet link add "v-$ns" type veth peer name eth0 netns "$ns" || return 1
  ip -n inet addr add "198.18.$i.1/24" dev "v-$ns" || return 1
  ip -n inet -6 addr add "2001:db8:$i::1/64" dev "v-$ns" nodad || return 1
  ip -n "$ns" addr add "198.18.$i.2/24" dev eth0 || return 1
  ip -n "$ns" -6 addr add "2001:db8:$i::2/64" dev eth0 nodad || return 1
  ip -n inet link set "v-$ns" up || return 1
  ip -n "$ns" link set eth0 up || return 1
  ip -n "$ns" route add default via "198.18.$i.1" || return 1
  ip -n "$ns" -6 route add default via "2001:db8:$i::1" || return 1
}

an_topology_up() {
  local ns i
  for ns in "${AN_NS[@]}"; do
    an_ns_add "$ns" || return 1
  done
  ip netns exec inet sysctl -q -w net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 >/dev/null || return 1
  # The resolvers: the client asks the internet's DNS server until `up` changes it; so
  # does the exit (its dns_upstream is that server too).
  an_resolv client "$AN_SERVER4" || return 1
  an_resolv exit "$AN_SERVER4" || return 1

  ip -n inet addr add "$AN_SERVER4/32" dev lo || return 1
  # 20 more "sites" for the per-flow routing case.
  local site
  for site in $(seq 11 30); do
    ip -n inet addr add "198.18.0.$site/32" dev lo || return 1
  done
  ip -n inet -6 addr add "$AN_SERVER6/128" dev lo nodad || return 1
  for ns in client gw1 gw2 exit; do
    an_attach "$ns" "${AN_IDX[$ns]}" || return 1
  done
  # cont: a container-like host routed through the client (198.19.1.0/24,
  # 2001:db8:c1::/64), for the kill switch's forward chain.
  ip -n client link add v-cont type veth peer name eth0 netns cont || return 1
  ip -n client addr add 198.19.1.1/24 dev v-cont || return 1
  ip -n client -6 addr add 2001:db8:c1::1/64 dev v-cont nodad || return 1
  ip -n cont addr add 198.19.1.2/24 dev eth0 || return 1
  ip -n cont -6 addr add 2001:db8:c1::2/64 dev eth0 nodad || return 1
  ip -n client link set v-cont up || return 1
  ip -n cont link set eth0 up || return 1
  ip -n cont route add default via 198.19.1.1 || return 1
  ip -n cont -6 route add default via 2001:db8:c1::1 || return 1
  ip netns exec client sysctl -q -w net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 >/dev/null || return 1
  ip -n inet route add 198.19.1.0/24 via "$(an_v4 client)" || return 1
  ip -n inet -6 route add 2001:db8:c1::/64 via "$(an_v6 client)" || return 1
  for ns in "${AN_NS[@]}"; do an_wait_dad "$ns" || return 1; done
  # Reachability, polled: every host reaches both server addresses.
  for ns in client gw1 gw2 exit cont; do
    for ((i = 0; i < 50; i++)); do
      ip netns exec "$ns" ping -n -q -c 1 -W 1 "$AN_SERVER4" >/dev/null 2>&1 &&
        ip netns exec "$ns" ping -n -q -c 1 -W 1 "$AN_SERVER6" >/dev/null 2>&1 && break
      sleep 0.1
    done
    [ "$i" -lt 50 ] || { an_err "$ns cannot reach the server addresses"; return 1; }
  done
}

# Stops every recorded process, then whatever else still runs in our namespaces
# (only processes we started can be there: the namespaces are ours), deletes the
# namespaces and the /etc/netns dirs we created. Safe to call more than once.
an_cleanup() {
  local kind name pid i
  [ -n "${AN_DIR:-}" ] && [ -d "$AN_DIR" ] || return 0
  an_stop_all
  [ -f "$AN_DIR/created" ] || return 0
  while read -r kind name; do
    [ "$kind" = ns ] || continue
    [ -e "/run/netns/$name" ] || continue
    for i in 1 2; do
      for pid in $(ip netns pids "$name" 2>/dev/null); do
        an_say "stopping leftover process $pid ($(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-80)) in $name"
        if [ "$i" = 1 ]; then kill -TERM "$pid" 2>/dev/null; else kill -KILL "$pid" 2>/dev/null; fi
      done
      [ -z "$(ip netns pids "$name" 2>/dev/null)" ] && break
      sleep 1
    done
  done <"$AN_DIR/created"
  while read -r kind name; do
    case $kind in
      ns) [ -e "/run/netns/$name" ] && ip netns del "$name" 2>/dev/null ;;
      etcnetns) rm -rf -- "/etc/netns/${name:?}" ;;
    esac
  done < <(tac "$AN_DIR/created")
  if grep -qx etcnetns-root "$AN_DIR/created"; then rmdir /etc/netns 2>/dev/null; fi
  rm -f "$AN_DIR/created"
  return 0
}

# ---------------------------------------------------------------------------------
# Servers on inet

an_python() {
  # The system interpreter, not a user's shim.
  if [ -x /usr/bin/python3 ]; then echo /usr/bin/python3; else command -v python3; fi
}

# Serves $AN_DIR/www over HTTP on 80, 443 and 25 (logs $AN_DIR/httpPORT.log), DNS
# ($AN_DIR/dnsmasq.log), iperf3 ($AN_DIR/iperf3.log) and the caller's address on
# $AN_WHOAMI_PORT ($AN_DIR/whoami.log), all in inet.
an_services_start() {
  local www=$AN_DIR/www port py
  py=$(an_python)
  mkdir -p "$www"
  if [ ! -s "$www/big.bin" ]; then
    head -c "$AN_BIG_BYTES" /dev/urandom >"$www/big.bin" || return 1
  fi
  sha256sum <"$www/big.bin" | cut -d' ' -f1 >"$AN_DIR/big.sha256"
  printf '<!doctype html><title>anonnet test server</title><p>Hello from the anonnet test server (%s, %s).\n' \
    "$AN_SERVER4" "$AN_SERVER6" >"$www/index.html"
  for port in 80 443 25; do
    # --bind :: makes http.server dual-stack (IPV6_V6ONLY off): both server addresses.
    an_start "http$port" inet "$AN_DIR/http$port.log" "$py" -u -m http.server --bind :: \
      --directory "$www" "$port"
  done
  an_start dnsmasq inet "$AN_DIR/dnsmasq.out" dnsmasq --keep-in-foreground \
    --conf-file=/dev/null --no-resolv --no-hosts --user=root --group=root \
    --bind-interfaces --listen-address="$AN_SERVER4" --listen-address="$AN_SERVER6" \
    --host-record="$AN_DNS_NAME,$AN_SERVER4,$AN_SERVER6" --log-queries \
    --log-facility="$AN_DIR/dnsmasq.log" --pid-file="$AN_DIR/dnsmasq.pid"
  # Bound to the server address: a wildcard UDP server would answer from the address
  # facing the client (198.18.N.1), which the client's connected socket refuses.
  an_start iperf3 inet "$AN_DIR/iperf3.log" iperf3 -s -B "$AN_SERVER4" --forceflush
  an_start whoami inet "$AN_DIR/whoami.log" "$py" -u "$(dirname "${BASH_SOURCE[0]}")/whoami.py" "$AN_WHOAMI_PORT"
  for port in 80 443 25; do
    an_wait_log "$AN_DIR/http$port.log" 'Serving HTTP on' 10 "${AN_PID[http$port]}" ||
      { an_err "http server on port $port did not start"; an_tail "$AN_DIR/http$port.log"; return 1; }
  done
  an_wait_log "$AN_DIR/dnsmasq.log" 'started, version' 10 "${AN_PID[dnsmasq]}" ||
    { an_err "dnsmasq did not start"; an_tail "$AN_DIR/dnsmasq.out"; an_tail "$AN_DIR/dnsmasq.log"; return 1; }
  an_wait_log "$AN_DIR/iperf3.log" 'Server listening' 10 "${AN_PID[iperf3]}" ||
    { an_err "iperf3 did not start"; an_tail "$AN_DIR/iperf3.log"; return 1; }
  an_wait_log "$AN_DIR/whoami.log" '^whoami serving' 10 "${AN_PID[whoami]}" ||
    { an_err "the whoami server did not start"; an_tail "$AN_DIR/whoami.log"; return 1; }
}

# ---------------------------------------------------------------------------------
# anonnet configs and daemons

# Keys and configs for gw1, gw2 and exit, and the client config $AN_DIR/client.toml
# (state in $AN_DIR/client-state).
an_configs() {
  local gw i
  for gw in gw1 gw2 exit; do
    if [ ! -f "$AN_DIR/$gw.key" ]; then
      "$AN_BIN" keygen --out "$AN_DIR/$gw.key" >/dev/null || return 1
    fi
    "$AN_BIN" pubkey "$AN_DIR/$gw.key" >"$AN_DIR/$gw.pub" || return 1
  done
  for gw in gw1 gw2 exit; do
    i=${AN_IDX[$gw]}
    {
      echo '[gateway]'
      echo "identity = \"$AN_DIR/$gw.key\""
      echo "listen = [\"198.18.$i.2\", \"2001:db8:$i::2\"]"
      echo "listen_ports = $AN_PORT"
      # The exit also echoes, for `anonnet circuit-test` (the handshake-flood case).
      [ "$gw" = exit ] && echo 'echo = true'
      if [ "$gw" = exit ]; then
        echo
        echo '[exit]'
        echo 'tun = "anonexit0"'
        echo "dns_upstream = [\"$AN_SERVER4\"]"
      fi
      # gw2 and the exit know gw1 and publish their descriptors to it, so a client
      # that knows only gw1 learns them. gw2 does not share what it knows (it still
      # hands out its own descriptor).
      if [ "$gw" != gw1 ]; then
        echo
        echo '[discovery]'
        echo "bootstrap = [\"198.18.2.2:$AN_PORT $(cat "$AN_DIR/gw1.pub")\"]"
        [ "$gw" = gw2 ] && echo 'share = false'
      fi
    } >"$AN_DIR/$gw.toml"
  done
  an_client_config "$AN_DIR/client.toml" "$AN_DIR/client-state" "198.18.2.2:$AN_PORT"
}

# an_discovery_config OUT STATE_DIR BOOTSTRAP_ADDR: no path; discovers gateways from
# gw1's key at BOOTSTRAP_ADDR. The testbed's gateways share one /16, so the "no two
# hops in one network" rule is applied at /24 (IPv4) and /48 (IPv6).
an_discovery_config() {
  {
    echo '[client]'
    printf '\n[discovery]\nbootstrap = ["%s %s"]\nsubnet_v4 = 24\nsubnet_v6 = 48\n' "$3" "$(cat "$AN_DIR/gw1.pub")"
    printf '\n[tunnel]\nstate_dir = "%s"\n' "$2"
  } >"$1"
}

# an_client_config OUT STATE_DIR FIRST_HOP_ADDR: a 3-hop path gw1 (at FIRST_HOP_ADDR),
# gw2, exit.
an_client_config() {
  local out=$1 state=$2 first=$3
  {
    echo '[client]'
    printf '\n[[client.path]]\naddr = "%s"\nkey = "%s"\n' "$first" "$(cat "$AN_DIR/gw1.pub")"
    printf '\n[[client.path]]\naddr = "198.18.3.2:%s"\nkey = "%s"\n' "$AN_PORT" "$(cat "$AN_DIR/gw2.pub")"
    printf '\n[[client.path]]\naddr = "198.18.4.2:%s"\nkey = "%s"\n' "$AN_PORT" "$(cat "$AN_DIR/exit.pub")"
    printf '\n[tunnel]\nstate_dir = "%s"\n' "$state"
  } >"$out"
}

# an_start_gateway gw1|gw2|exit: starts it (the exit with --exit), waits for its
# " listening on " line. Log: $AN_DIR/NAME.log.
an_start_gateway() {
  local gw=$1
  local -a extra=()
  [ "$gw" = exit ] && extra=(--exit)
  [ -n "$AN_METRICS" ] && extra+=(--metrics "$AN_METRICS")
  an_start "$gw" "$gw" "$AN_DIR/$gw.log" "$AN_BIN" gateway "${extra[@]}" --config "$AN_DIR/$gw.toml"
  if ! an_wait_log "$AN_DIR/$gw.log" ' listening on ' 10 "${AN_PID[$gw]}"; then
    an_err "$gw did not start (no ' listening on ' line within 10 s)"
    an_tail "$AN_DIR/$gw.log" 20 >&2
    an_stop "$gw" TERM 3
    return 1
  fi
}

# an_start_client CONFIG [SECONDS]: `anonnet up` in client (name client-up, log
# $AN_DIR/client-up.log, appended to $AN_DIR/client-up.all.log afterwards by callers
# if they wish), waits for its "anonnet up:" line.
an_start_client() {
  local config=$1 secs=${2:-20}
  local -a extra=()
  [ -n "$AN_METRICS" ] && extra+=(--metrics "$AN_METRICS")
  an_start client-up client "$AN_DIR/client-up.log" "$AN_BIN" up --config "$config" "${extra[@]}"
  an_wait_log "$AN_DIR/client-up.log" '^anonnet up:' "$secs" "${AN_PID[client-up]}"
}

# Does the binary have this subcommand (or, with a third argument, this option)?
an_has_cmd() { "$AN_BIN" help "$1" >/dev/null 2>&1; }
an_has_opt() { "$AN_BIN" help "$1" 2>/dev/null | grep -q -- "$2"; }

# an_snapshot NS OUT: the network state `up`/`down` may change, for comparison.
an_snapshot() {
  local ns=$1
  {
    echo '## ip rule'; ip -n "$ns" rule
    echo '## ip -6 rule'; ip -n "$ns" -6 rule
    echo '## ip route show table all'; ip -n "$ns" route show table all
    echo '## ip -6 route show table all'; ip -n "$ns" -6 route show table all
    echo '## nft list ruleset'; ip netns exec "$ns" nft list ruleset
    echo '## ip link'; ip -n "$ns" -br link
    echo '## ip addr'; ip -n "$ns" -br addr
    echo '## sysctl'
    ip netns exec "$ns" sysctl net.ipv4.ip_forward net.ipv6.conf.all.forwarding \
      net.ipv4.conf.all.src_valid_mark
    echo '## /etc/resolv.conf'; ip netns exec "$ns" cat /etc/resolv.conf
  } >"$2" 2>&1
}
