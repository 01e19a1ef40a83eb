#!/usr/bin/env bash
# Builds what scripts/device-check.sh runs on the lent GPU machine, which has no crates and no
# network: one stripped release `sparsecube` (CUDA + wgpu + the reference executor) in .bundle/
# (ignored by git; the device call carries it), and checks that everything that travels — the
# working tree plus the bundle — stays under the device tool's 64 MiB limit.
#
#   scripts/build-device-bundle.sh        # then: run scripts/device-check.sh with carry [".bundle"]
set -euo pipefail
cd "$(dirname "$0")/.."
limit=$((64 * 1024 * 1024))

# cudarc generates its driver bindings for one CUDA version. The GPU machines run CUDA 13.0
# (driver 580); pin it so no symbol newer than that driver is expected. A separate target folder
# keeps this from invalidating the everyday release build.
CUDARC_CUDA_VERSION=13000 cargo build --release --locked -p sparsecube --target-dir target/device
mkdir -p .bundle
cp target/device/release/sparsecube .bundle/sparsecube.tmp
mv .bundle/sparsecube.tmp .bundle/sparsecube
# The device copy of the tree may carry a stale .git: record what the binary was built from.
git describe --always --dirty --abbrev=12 >.bundle/COMMIT

bundle=$(stat -c %s .bundle/sparsecube)
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null \
    | awk '{s += $1} END {print s + 0}')
total=$((bundle + tree))
awk -v b="$bundle" -v t="$tree" 'BEGIN {
    printf "bundle: sparsecube %.1f MiB; working tree %.1f MiB; together %.1f of 64 MiB\n",
        b / 1048576, t / 1048576, (b + t) / 1048576 }'
if [ "$total" -gt "$limit" ]; then
    echo "error: what travels to the device is over 64 MiB; shrink the binary or the tree" >&2
    exit 1
fi
