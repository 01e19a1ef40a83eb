#!/usr/bin/env bash
# Builds what scripts/device-check.sh runs on the lent GPU machine, which has no crates and no
# network: one stripped release `sparsecube` (CUDA + wgpu + the reference executor), compressed
# with xz into .bundle/sparsecube.xz (ignored by git; the device call carries it and the check
# unpacks it there), and checks that everything that travels — the working tree plus the bundle —
# stays under the device tool's 64 MiB limit. The tree is measured before the (long) build, so an
# oversized tree fails at once.
#
#   scripts/build-device-bundle.sh        # then: run scripts/device-check.sh with carry [".bundle"]
set -euo pipefail
cd "$(dirname "$0")/.."
limit=$((64 * 1024 * 1024))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null \
    | awk '{s += $1} END {print s + 0}')
# A compressed binary has been 14-16 MiB; leave it at least that.
if [ $((tree + 16 * 1024 * 1024)) -gt "$limit" ]; then
    echo "error: the working tree alone is $(mib "$tree"); with the compressed binary (~16 MiB)" \
        "it would pass the device call's 64 MiB: shrink the tree" >&2
    exit 1
fi

# cudarc generates its driver bindings for one CUDA version. The GPU machines run CUDA 13.0
# (driver 580); pin it so no symbol newer than that driver is expected. A separate target folder
# keeps this from invalidating the everyday release build.
CUDARC_CUDA_VERSION=13000 cargo build --release --locked -p sparsecube --target-dir target/device
mkdir -p .bundle
rm -f .bundle/sparsecube .bundle/sparsecube.xz.tmp
# xz -6: about a quarter of the stripped size; a few seconds to unpack on the GPU machine.
xz -6 -T2 -c target/device/release/sparsecube >.bundle/sparsecube.xz.tmp
mv .bundle/sparsecube.xz.tmp .bundle/sparsecube.xz
# The device copy of the tree may carry a stale .git: record what the binary was built from.
git describe --always --dirty --abbrev=12 >.bundle/COMMIT

raw=$(stat -c %s target/device/release/sparsecube)
bundle=$(stat -c %s .bundle/sparsecube.xz)
total=$((bundle + tree))
echo "bundle: sparsecube $(mib "$raw") stripped, $(mib "$bundle") as xz; working tree $(mib "$tree");" \
    "together $(mib "$total") of 64 MiB"
if [ "$total" -gt "$limit" ]; then
    echo "error: what travels to the device is $(mib "$total"), over 64 MiB; shrink the binary or the tree" >&2
    exit 1
fi
