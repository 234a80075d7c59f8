#!/usr/bin/env bash
# Runs anonnet's fuzz targets (fuzz/, cargo-fuzz + libFuzzer) for a bounded time each
# and ends with one line per target: "TARGET: N runs in S s, 0 crashes" or the crash.
#
# Usage: scripts/fuzz.sh [--seconds S] [TARGET...]
#   --seconds S   time per target (default 300)
#   TARGET        a subset of: hostile_client, hostile_gateway, messages, packets,
#                 files (default: all)
#
# hostile_client and hostile_gateway start from established circuits (fuzz/src/lib.rs):
# the fuzzer's bytes become forged cells sealed with real keys. messages, packets and
# files feed every parser of network messages, IP packets and files or configs
# directly. No sanitizer (-s none): the crate forbids unsafe code, and a panic is what
# is looked for. Needs a nightly toolchain (rustup toolchain nightly) and installs
# cargo-fuzz with `cargo install --locked` if missing.
# Corpora stay in fuzz/corpus/TARGET, crashes in fuzz/artifacts/TARGET (not committed).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
export PATH="$HOME/.cargo/bin:$PATH"

seconds=300
targets=()
while [ $# -gt 0 ]; do
  case $1 in
    --seconds) seconds=${2:?--seconds needs a value}; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "unknown option: $1 (try --help)" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
case $seconds in ''|*[!0-9]*) echo "--seconds takes a whole number, got '$seconds'" >&2; exit 2 ;; esac
[ ${#targets[@]} -gt 0 ] || targets=(hostile_client hostile_gateway messages packets files)

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "cargo fuzz needs a nightly toolchain: rustup toolchain install nightly --profile minimal" >&2
  exit 1
fi
cargo fuzz --version >/dev/null 2>&1 || cargo install --locked cargo-fuzz || exit 1
cargo +nightly fuzz build -O -a -s none || exit 1

failed=0
for t in "${targets[@]}"; do
  log=$(mktemp)
  mkdir -p "fuzz/corpus/$t"
  timeout $((seconds + 120)) cargo +nightly fuzz run -O -a -s none "$t" -- \
    -max_total_time="$seconds" -max_len=8192 -len_control=0 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1
  rc=$?
  runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' | tail -1)
  # The targets report the datagrams they forged at every power-of-two run count.
  forged=$(grep -Eo 'hostile sessions: [0-9]+ runs, [0-9]+ forged' "$log" | tail -1)
  if [ "$rc" -eq 0 ]; then
    echo "$t: ${runs:-?} runs in $seconds s, 0 crashes${forged:+ (last report: $forged)}"
  else
    failed=1
    echo "$t: FAILED (exit $rc) after ${runs:-?} runs:"
    grep -E -A8 'panicked|ERROR' "$log" | head -20
  fi
  rm -f "$log"
done
exit "$failed"
