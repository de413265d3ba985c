#!/usr/bin/env bash
# Runs setup and every test: unit tests, the integration tests (tiny models on the bundled
# corpus; Python transformers as the reference) and the launcher's libtorch-freedom check.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# The launcher runs on login nodes without libtorch: it must not depend on tch, torch-sys or cudarc.
if cargo tree -e normal -p rankforge-launcher 2>/dev/null | grep -qE ' (tch|torch-sys|cudarc) v'; then
  echo "FAIL: rankforge-launcher depends on libtorch/CUDA crates:" >&2
  cargo tree -e normal -p rankforge-launcher | grep -E ' (tch|torch-sys|cudarc) v' >&2
  exit 1
fi

if ldd target/release/rankforge-launch | grep -qE 'libtorch|libc10'; then
  echo "FAIL: target/release/rankforge-launch links libtorch:" >&2
  ldd target/release/rankforge-launch | grep -E 'libtorch|libc10' >&2
  exit 1
fi

# --release: the same build as setup.sh, so nothing is compiled twice.
cargo test --release --workspace "$@"
