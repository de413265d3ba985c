#!/usr/bin/env bash
# One-time (and idempotent) setup of a rankforge checkout:
#   1. a Python venv with torch==2.11.0 (the libtorch that tch 0.24 binds) and the packages the
#      conformance tests use, kept in a per-user cache and linked as .venv/, so a fresh clone or
#      a CI run reuses it instead of downloading and unpacking 4.6 GB again;
#   2. .libtorch -> that venv's torch package, which .cargo/config.toml hands to torch-sys, so
#      plain `cargo build` / `cargo test` work;
#   3. release builds of `rankforge` and `rankforge-launch` (rpath set by build.rs: no
#      LD_LIBRARY_PATH needed).
# A second run with nothing changed takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0
# Everything the tests import, pinned exactly with all their dependencies (a lock file), so a
# fresh machine tests against the same packages as every other: peft and trl are the reference
# implementations of the LoRA and SFT conformance tests, pyarrow writes their Parquet inputs.
# The stamp is the file's hash: editing it reinstalls.
REQUIREMENTS=scripts/requirements-test.txt
PIP_VERSION=26.3
grep -qx "torch==${TORCH_VERSION}" "$REQUIREMENTS" || { echo "setup: $REQUIREMENTS must pin torch==${TORCH_VERSION} (the libtorch tch binds)" >&2; exit 1; }

PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null || { echo "setup: $PYTHON not found; install Python 3.11+" >&2; exit 1; }
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "setup: $PYTHON is $("$PYTHON" -V 2>&1); the pinned packages ($REQUIREMENTS) need Python 3.11+ (set PYTHON=python3.11)" >&2; exit 1; }
pyver=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
cache=${RANKFORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rankforge}
venv="$cache/venv-torch-${TORCH_VERSION}-py${pyver}"
STAMP="pip-${PIP_VERSION} $(basename "$REQUIREMENTS") sha256 $("$PYTHON" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$REQUIREMENTS")"

if [ ! -f "$venv/.rankforge-stamp" ] || [ "$(cat "$venv/.rankforge-stamp")" != "$STAMP" ]; then
  echo "setup: installing $REQUIREMENTS into $venv (once per user, and again when the file changes; ~1-2 min, 4.6 GB)"
  mkdir -p "$cache"
  # Serialize concurrent setups (two checkouts, CI beside a developer) on the shared cache.
  exec 9>"$cache/.setup.lock"; flock 9
  if [ ! -f "$venv/.rankforge-stamp" ] || [ "$(cat "$venv/.rankforge-stamp")" != "$STAMP" ]; then
    [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install -q "pip==${PIP_VERSION}"
    "$venv/bin/python" -m pip install -q -r "$REQUIREMENTS"
    echo "$STAMP" > "$venv/.rankforge-stamp"
  fi
  flock -u 9
fi

# .venv and .libtorch are links into the cache (both git-ignored).
if [ "$(readlink .venv 2>/dev/null)" != "$venv" ]; then
  [ -e .venv ] && [ ! -L .venv ] && { echo "setup: .venv exists and is not a link; move it away" >&2; exit 1; }
  ln -sfn "$venv" .venv
fi
torch_dir=$(.venv/bin/python -c 'import os, torch; print(os.path.dirname(torch.__file__))')
[ "$(readlink .libtorch 2>/dev/null)" = "$torch_dir" ] || ln -sfn "$torch_dir" .libtorch

if [ "${RANKFORGE_SKIP_BUILD:-0}" != 1 ]; then
  command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (https://rustup.rs)" >&2; exit 1; }
  cargo build --release --quiet --workspace --bins
  echo "setup: ok: target/release/rankforge, target/release/rankforge-launch (libtorch $TORCH_VERSION from $torch_dir)"
fi
