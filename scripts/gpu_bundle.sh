#!/usr/bin/env bash
# Packs the release binaries for a GPU host that has PyTorch but no Rust toolchain:
#
#   scripts/gpu_bundle.sh DIR      # after `cargo build --release --workspace --bins`
#
# DIR gets stripped binaries in DIR/bin (no RUNPATH naming this machine), the wrappers
# DIR/rankforge and DIR/rankforge-launch, the GPU check (DIR/bench/gpu_check.sh with the
# PyTorch reference scripts and the tiny recipes and data it uses), everything under 64 MiB.
# A wrapper finds libtorch in whichever `python3` on the host has torch ($RANKFORGE_PYTHON
# wins, else `python3` on PATH), sets LD_LIBRARY_PATH to its torch/lib and runs the binary;
# the libraries libtorch needs (CUDA, cuDNN, NCCL) come from the same torch install.
#   DIR/rankforge --version
#   PATH=/opt/torch/.venv/bin:$PATH DIR/bench/gpu_check.sh
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
cd "$(dirname "$0")/.."
out=$1
for b in rankforge rankforge-launch; do
  [ -x "target/release/$b" ] || { echo "error: target/release/$b is missing: cargo build --release --workspace --bins" >&2; exit 2; }
done
mkdir -p "$out/bin" "$out/bench" "$out/configs" "$out/data"

# Stripped binaries without the build machine's RUNPATH (patchelf when installed, else the
# RUNPATH string is blanked in place: glibc ignores an empty runpath).
for b in rankforge rankforge-launch; do
  strip -o "$out/bin/$b" "target/release/$b"
  if command -v patchelf >/dev/null; then
    patchelf --remove-rpath "$out/bin/$b"
  else
    python3 - "$out/bin/$b" <<'PY'
import struct, sys
path = sys.argv[1]
elf = bytearray(open(path, "rb").read())
assert elf[:4] == b"\x7fELF" and elf[4] == 2 and elf[5] == 1, "a little-endian ELF64 file"
phoff, = struct.unpack_from("<Q", elf, 0x20)
phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
phdrs = [struct.unpack_from("<IIQQQQQQ", elf, phoff + i * phentsize) for i in range(phnum)]
def offset(vaddr):  # file offset of a virtual address, through the PT_LOAD segments
    for typ, _, off, va, _, filesz, _, _ in phdrs:
        if typ == 1 and va <= vaddr < va + filesz:
            return off + vaddr - va
    raise SystemExit(f"{path}: address {vaddr:#x} is in no PT_LOAD segment")
dyn = [p for p in phdrs if p[0] == 2]  # PT_DYNAMIC
if dyn:
    entries, pos = {}, dyn[0][2]
    paths = []
    while True:
        tag, val = struct.unpack_from("<qQ", elf, pos)
        pos += 16
        if tag == 0:
            break
        if tag in (15, 29):  # DT_RPATH, DT_RUNPATH
            paths.append(val)
        entries[tag] = val
    strtab = offset(entries[5])  # DT_STRTAB
    for p in paths:
        start = strtab + p
        end = elf.index(b"\0", start)
        elf[start:end] = b"\0" * (end - start)
open(path, "wb").write(elf)
PY
  fi
  if readelf -d "$out/bin/$b" | grep -E 'R(UN)?PATH' | grep -q /; then
    echo "error: $out/bin/$b still has a runpath: $(readelf -d "$out/bin/$b" | grep -E 'R(UN)?PATH')" >&2
    exit 1
  fi
done

# The wrappers: libtorch from the host's python3, then the real binary.
for b in rankforge rankforge-launch; do
  cat > "$out/$b" <<'SH'
#!/usr/bin/env bash
# Runs bin/NAME with LD_LIBRARY_PATH set to the torch/lib of the python3 that has torch
# ($RANKFORGE_PYTHON, else python3 on PATH), found without importing torch.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
py=${RANKFORGE_PYTHON:-python3}
lib=$("$py" -c 'import importlib.util as u, os, sys
s = u.find_spec("torch")
if s is None or not s.submodule_search_locations: sys.exit(1)
print(os.path.join(list(s.submodule_search_locations)[0], "lib"))' 2>/dev/null) || {
  echo "error: $py has no torch (install torch 2.11.0, or point RANKFORGE_PYTHON at a python3 that has it)" >&2
  exit 2
}
[ -e "$lib/libtorch_cpu.so" ] || { echo "error: $lib has no libtorch_cpu.so (torch from $py)" >&2; exit 2; }
export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$here/bin/NAME" "$@"
SH
  sed -i "s/NAME/$b/g" "$out/$b"
  chmod +x "$out/$b"
done

# The GPU check and what it reads.
cp bench/gpu_check.sh bench/pytorch_gpt.py bench/timing.py "$out/bench/"
cp configs/gpt_tiny_pretrain_cpu.toml configs/gpt_small_pretrain.toml "$out/configs/"
cp data/kjv.txt data/kjv_sft.jsonl "$out/data/"
total=$(du -sb "$out" | cut -f1)
echo "bundle $out: $((total / 1024 / 1024)) MiB"
if [ "$total" -ge $((64 << 20)) ]; then
  echo "error: the bundle is $total bytes, over 64 MiB" >&2
  exit 1
fi
