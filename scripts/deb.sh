#!/usr/bin/env bash
# Builds anonnet's Debian package with cargo-deb (`[package.metadata.deb]` in
# Cargo.toml), installing cargo-deb with cargo first if it is missing. The package
# holds /usr/bin/anonnet (release build, stripped), the units of systemd/ in
# /usr/lib/systemd/system (installed, not enabled), and README.md and the example
# configs in /usr/share/doc/anonnet. Its last line of output is the package's path:
#   target/debian/anonnet_VERSION-1_ARCH.deb
# Install it with `apt-get install ./target/debian/anonnet_*.deb` (which also installs
# nftables). Usage: scripts/deb.sh [more cargo-deb options, e.g. --output DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/toolchain.sh
. scripts/toolchain.sh
an_ensure_toolchain "$PWD"
if ! cargo deb --version >/dev/null 2>&1; then
  echo "# installing cargo-deb (cargo install --locked cargo-deb@^3)" >&2
  cargo install --locked --quiet cargo-deb@^3
fi
exec cargo deb --locked --strip "$@"
