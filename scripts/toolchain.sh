# shellcheck shell=bash
# Sourced by scripts/test.sh and scripts/testbed.sh: makes sure a Rust toolchain at
# least as new as Cargo.toml's rust-version is on PATH. Tries, in order: what is
# installed (including ~/.cargo/bin), Debian's cargo and rustc (new enough from
# Debian 13 on), then rustup's minimal profile (needs curl and access to
# static.rust-lang.org). Returns non-zero with a message when none works.

an_toolchain_ok() {
  local need have
  need=$(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' "$1/Cargo.toml")
  command -v cargo >/dev/null 2>&1 || return 1
  have=$(rustc --version 2>/dev/null | awk '{print $2}')
  [ -n "$have" ] || return 1
  [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -1)" = "$need" ]
}

an_ensure_toolchain() { # repo root
  export PATH="$HOME/.cargo/bin:$PATH"
  an_toolchain_ok "$1" && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "no Rust toolchain new enough for anonnet, and not root to install one" >&2
    return 1
  fi
  echo "# installing Debian's cargo and rustc"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cargo rustc >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rustfmt rust-clippy >/dev/null 2>&1 || true
  an_toolchain_ok "$1" && return 0
  echo "# Debian's rustc is older than anonnet needs; installing rustup's stable toolchain"
  command -v curl >/dev/null 2>&1 ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl ca-certificates >/dev/null
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
    sh -s -- -y --profile minimal --component rustfmt,clippy >/dev/null || true
  an_toolchain_ok "$1" && return 0
  echo "cannot install a Rust toolchain of the version in Cargo.toml's rust-version" >&2
  return 1
}
