#!/usr/bin/env bash
# Runs three anonnet gateways on loopback and pushes data through a 3-hop circuit to an
# echo endpoint, checking every byte. Needs no root and touches no routes.
# Usage: scripts/demo.sh [BYTES]   (default 10000000)
set -euo pipefail
cd "$(dirname "$0")/.."
bytes=${1:-10000000}
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null || { echo "cargo is needed (scripts/test.sh installs it)" >&2; exit 1; }
cargo build --release --quiet
bin=target/release/anonnet
dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM

{
  echo "[client]"
  for i in 1 2 3; do
    port=$((19400 + i))
    "$bin" keygen --out "$dir/gw$i.key" >/dev/null
    echo=false; [ "$i" = 3 ] && echo=true
    printf '[gateway]\nidentity = "%s"\nlisten = ["127.0.0.1"]\nlisten_ports = %d\necho = %s\n' \
      "$dir/gw$i.key" "$port" "$echo" > "$dir/gw$i.toml"
    mkfifo "$dir/gw$i.ready"
    "$bin" gateway --config "$dir/gw$i.toml" > "$dir/gw$i.ready" 2>"$dir/gw$i.log" &
    pids+=($!)
    printf '[[client.path]]\naddr = "127.0.0.1:%d"\nkey = "%s"\n' "$port" "$("$bin" pubkey "$dir/gw$i.key")"
  done
} > "$dir/client.toml"
for i in 1 2 3; do
  # The gateway prints one line once its sockets are bound.
  read -r -t 10 line < "$dir/gw$i.ready" || { echo "gateway $i did not start:"; cat "$dir/gw$i.log"; exit 1; }
  echo "$line"
done
"$bin" circuit-test --config "$dir/client.toml" --bytes "$bytes"
