#!/usr/bin/env bash
# Checks the systemd units of systemd/: `systemd-analyze verify` finds no error, and
# `systemd-analyze security --offline` rates each one's exposure no higher than
# measured (the scores are in docs/DESIGN.md, "systemd units"). Installs systemd's tools if missing
# (Debian; nothing is started). Usage: scripts/check-units.sh [ANONNET_BINARY
# [UNIT_DIR]] (defaults target/debug/anonnet, whose path replaces the units' command,
# which must exist to be verified, and systemd/).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

# Each unit's exposure as measured (systemd 252, Debian 12; below 5 is "OK"): a
# unit that loses a hardening line scores higher and fails here.
declare -A MAX=([anonnet-client.service]=2.4 [anonnet-exit.service]=2.4 [anonnet-gateway.service]=1.2)

bin=$(realpath "${1:-target/debug/anonnet}" 2>/dev/null)
units=${2:-systemd}
[ -x "$bin" ] || { echo "error: no anonnet binary at ${1:-target/debug/anonnet} (build it first)" >&2; exit 1; }
# systemd-analyze, and /bin/kill, which the units' ExecReload runs (verify checks it).
pkgs=()
command -v systemd-analyze >/dev/null || pkgs+=(systemd)
[ -x /bin/kill ] || pkgs+=(procps)
if [ ${#pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "error: ${pkgs[*]} missing and only root can install it (apt-get install ${pkgs[*]})" >&2
    exit 1
  fi
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null; } || exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fail=0
for unit in "$units"/*.service; do
  name=$(basename "$unit")
  # The units run `anonnet` from systemd's PATH; verify checks that the command
  # exists, so the copy names the binary under test instead.
  sed -e "s#^\(Exec[A-Za-z]*=\)anonnet #\1$bin #" -e "s#exec anonnet #exec $bin #" "$unit" >"$work/$name"
  if ! out=$(systemd-analyze verify "$work/$name" 2>&1) || [ -n "$out" ]; then
    echo "FAIL $name: systemd-analyze verify: $out"
    fail=1
    continue
  fi
  score=$(systemd-analyze security --offline=yes "$work/$name" 2>&1 | grep -o 'Overall exposure level for [^:]*: [0-9.]*' | awk '{print $NF}')
  if [ -z "$score" ]; then
    echo "FAIL $name: systemd-analyze security gave no score"
    fail=1
  elif awk -v s="$score" -v m="${MAX[$name]:-0}" 'BEGIN { exit !(s > m) }'; then
    echo "FAIL $name: exposure $score, more than ${MAX[$name]:-0} (a hardening line lost?)"
    fail=1
  else
    echo "PASS $name: verify clean, exposure $score (at most ${MAX[$name]}; $(systemd-analyze --version | head -1))"
  fi
done
exit "$fail"
