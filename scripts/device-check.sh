#!/usr/bin/env bash
# The one call made on a lent GPU machine (H100/H200, CUDA 13, PyTorch, no network, no crates):
# proves the CUDA path right and measures it against PyTorch on the same card, in one run.
#
# Here:   scripts/build-device-bundle.sh            (the stripped release binary, xz, in .bundle/)
# There:  scripts/device-check.sh                   (device tool: carry [".bundle"], OUT set)
#
# Steps, each under its own time budget (seconds), all output under $OUT:
#   1. card, driver, toolkit                                   → device-check.log
#   2. the machine's own NVRTC + ptxas over every generated CUDA kernel, with the version skew
#      against the pinned wheels (13.0.88) and a diff against the committed resource snapshot
#                                                              → nvrtc.txt
#   3. `sparsecube selftest --device cuda`: every kernel, fwd + bwd, vs the reference executor
#                                                              → selftest.log
#   4. compute-sanitizer memcheck and racecheck over one call of each kernel, launched unchecked
#      (the executor's default: no CubeCL bounds clamping hides an access) → sanitizer.log
#   5. `sparsecube bench --suite paper --device cuda --json`   → ours.json
#  5b. `sparsecube tune --device cuda` over every op's schedule space → tune.json
#  5c. `sparsecube finetune --device cuda` (SPT and SaRA, the training runtime on our kernels)
#                                                              → finetune/report.json
#   6. benches/torch_baselines.py on the same shapes (and a CPU smoke run at tiny shapes), with
#      the measured ceilings (copy bandwidth, matmul rates)   → torch.json
#  6b. Nsight Compute: per-kernel time and DRAM bytes of one attention step → ncu.csv, and of one
#      routed-FFN step → ncu-ffn.csv (each with its kernel families' shares of the step)
#   7. the joined table of ratios                  → table.md (also printed last), table.json
# Exit status: non-zero when the selftest, a sanitizer or the NVRTC check failed (the table is
# still written).
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder that collects the results}"
BIN=${SPARSECUBE_BIN:-.bundle/sparsecube}
PY=${PYTHON:-python3}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export LD_LIBRARY_PATH="$CUDA_HOME/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1
LOG="$OUT/device-check.log"
status=0
started=$(date +%s)

log() { echo "[$(($(date +%s) - started))s] $*" | tee -a "$LOG" >&2; }
# step NAME BUDGET_S OUTFILE CMD...: runs CMD (a program or an exported function) under a time
# limit with its output in OUTFILE, and logs its exit status.
step() {
    local name=$1 budget=$2 out=$3
    shift 3
    log "== $name (budget ${budget}s)"
    timeout --kill-after=10 "$budget" bash -c '"$@"' step "$@" >"$out" 2>&1
    local rc=$?
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        log "!! $name ran past its ${budget}s budget"
    fi
    log "== $name: exit $rc"
    return $rc
}
export BIN CUDA_HOME

# The bundle carries the binary xz-compressed (the device call's 64 MiB limit): unpack it once.
if [ ! -x "$BIN" ] && [ -f .bundle/sparsecube.xz ] && [ -z "${SPARSECUBE_BIN:-}" ]; then
    if command -v xz >/dev/null; then
        xz -dc .bundle/sparsecube.xz >.bundle/sparsecube.tmp
    else
        "$PY" -c 'import lzma, shutil, sys
with lzma.open(sys.argv[1]) as f, open(sys.argv[2], "wb") as o: shutil.copyfileobj(f, o)' \
            .bundle/sparsecube.xz .bundle/sparsecube.tmp
    fi
    chmod +x .bundle/sparsecube.tmp && mv .bundle/sparsecube.tmp .bundle/sparsecube
fi
[ -x "$BIN" ] || { echo "no $BIN: run scripts/build-device-bundle.sh first and carry .bundle" >&2; exit 2; }

# 1. The card.
{
    log "binary built from $(cat .bundle/COMMIT 2>/dev/null || echo 'an unknown commit'), $(date -u +%FT%TZ)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    nvcc --version 2>/dev/null | tail -n 2
    "$BIN" devices
} 2>&1 | tee -a "$LOG"

# 2. The machine's NVRTC and ptxas (a toolkit root works where the wheels folder does).
nvrtc_check() {
    SPARSECUBE_CUDA_WHEELS="$CUDA_HOME" "$BIN" gen --file scripts/canonical-cuda.sc --target cuda \
        --resources
}
export -f nvrtc_check
step "NVRTC + ptxas of this machine" 90 "$OUT/nvrtc.txt" nvrtc_check || status=1
{
    echo "--- version skew: this machine vs the CI wheels (NVRTC 13.0, ptxas V13.0.88)"
    grep -m1 '^#' "$OUT/nvrtc.txt"
    echo "--- resources here that the committed snapshot (CI's ptxas) does not list:"
    snap=tests/it/snapshots/it__cuda_offline__cuda_resources_sm90.snap
    sed -n 's/^[^ ]* [^ ]* \([a-z_0-9]*: .*\)$/\1/p' "$snap" | sort -u >/tmp/ci-res.txt
    sed -n 's/^[^:]*: \([a-z_0-9]*: .*\)$/\1/p' "$OUT/nvrtc.txt" | sort -u >/tmp/here-res.txt
    comm -13 /tmp/ci-res.txt /tmp/here-res.txt || true
} >>"$OUT/nvrtc.txt" 2>&1
tail -n 20 "$OUT/nvrtc.txt" | tee -a "$LOG"

# 3. Correctness on CUDA.
step "selftest on CUDA" 150 "$OUT/selftest.log" \
    "$BIN" selftest --device cuda --cases 48 --max-len 300 || status=1
grep -E "^FAIL|selftest|error" "$OUT/selftest.log" | tail -n 15 | tee -a "$LOG"
tail -n 2 "$OUT/selftest.log" | tee -a "$LOG"

# 4. Memory errors and shared-memory races, over one call of each kernel, launched unchecked
#    (SPARSECUBE_CHECKED unset: CubeCL's bounds clamping would hide an out-of-bounds access).
sanitize() {
    local tool
    for tool in memcheck racecheck; do
        echo "### compute-sanitizer --tool $tool (unchecked launches)"
        env -u SPARSECUBE_CHECKED compute-sanitizer --tool "$tool" --error-exitcode 3 \
            "$BIN" selftest --device cuda --quick || return 1
    done
}
export -f sanitize
step "compute-sanitizer" 150 "$OUT/sanitizer.log" sanitize || status=1
grep -E "ERROR SUMMARY|RACECHECK SUMMARY|selftest passed|###" "$OUT/sanitizer.log" | tee -a "$LOG"

# 5. Our side of the paper suite.
step "sparsecube bench --suite paper" 120 /tmp/ours.out \
    "$BIN" bench --suite paper --device cuda --json
# The JSON document is the last thing printed; the progress lines go to stderr.
sed -n '/^{/,$p' /tmp/ours.out >"$OUT/ours.json"

# 5b. The autotuner on the card: every op's schedule space at its example size, cache under $OUT
#     (the report shows each candidate's time and speed-up over the fallback).
step "sparsecube tune" 90 "$OUT/tune.log" \
    "$BIN" tune --device cuda --budget 60 --cache-dir "$OUT/tune-cache" --json "$OUT/tune.json"

# 5c. The training runtime on the card: SPT (attention + routed FFN kernels) and SaRA through
#     Burn's autodiff, the embedded default model, each in its own process.
step "sparsecube finetune --compare spt,sara" 120 "$OUT/finetune.log" \
    "$BIN" finetune --compare spt,sara --device cuda --quiet --out "$OUT/finetune"

# 6. PyTorch on the same shapes (suite read from our --list, so the shapes cannot drift).
"$BIN" bench --suite paper --list --scale tiny >/tmp/suite-tiny.json
"$BIN" bench --suite paper --list >/tmp/suite.json
step "torch baselines, CPU smoke (tiny)" 60 /tmp/torch-tiny.log "$PY" benches/torch_baselines.py \
    --suite /tmp/suite-tiny.json --device cpu --repeats 2 --warmup 1 --out /tmp/torch-tiny.json
tail -n 3 /tmp/torch-tiny.log | tee -a "$LOG"
step "torch baselines on CUDA" 150 /tmp/torch.log "$PY" benches/torch_baselines.py \
    --suite /tmp/suite.json --device cuda --budget-s 120 --out "$OUT/torch.json"
cat /tmp/torch.log >>"$LOG"
grep -m1 ceilings /tmp/torch.log >&2

# 6b. Per-kernel time and DRAM traffic of one training step at the paper's attention shape (the
#     roofline inputs), from Nsight Compute at the card's own clocks.
step "ncu per-kernel, attention f32 at the paper shape" 120 "$OUT/ncu.csv" \
    ncu --clock-control none --csv \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,sm__throughput.avg.pct_of_peak_sustained_elapsed \
    "$BIN" bench --suite paper --device cuda --workload attention/B16-H32-L512-D64-topk64/f32 \
    --warmup 0 --repeats 1
[ -s "$OUT/ncu.csv" ] && "$PY" benches/ncu_summary.py "$OUT/ncu.csv" | tee -a "$LOG"
# The routed FFN's grouping and its db2 / router-gradient column reductions (issue 19: ≤ 3 %).
# Only the sparse step's launches (its plans' step count; the dense FFN runs after it and
# shares the tile kernel's name).
ffn_launches=$("$BIN" gen routed-ffn --dim T=8192 --dim d_model=1024 --dim d_ff=4096 \
    --param blocks=4 --param top=2 --direction backward --plan 2>/dev/null | grep -cE '^ +[0-9]+\. ')
step "ncu per-kernel, routed FFN f32 at the paper shape" 90 "$OUT/ncu-ffn.csv" \
    ncu --clock-control none --csv --launch-count "${ffn_launches:-20}" \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,sm__throughput.avg.pct_of_peak_sustained_elapsed \
    "$BIN" bench --suite paper --device cuda --workload ffn/T8192-d_model1024-d_ff4096-blocks4-r2/f32 \
    --warmup 0 --repeats 1
[ -s "$OUT/ncu-ffn.csv" ] && "$PY" benches/ncu_summary.py "$OUT/ncu-ffn.csv" | tee -a "$LOG"

# 7. One table.
if [ -s "$OUT/ours.json" ] && [ -s "$OUT/torch.json" ]; then
    card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
    "$PY" benches/join_table.py "$OUT/ours.json" "$OUT/torch.json" --json "$OUT/table.json" \
        --card "${card:-unknown}" --commit "$(cat .bundle/COMMIT 2>/dev/null || echo unknown)" \
        >"$OUT/table.md" 2>>"$LOG"
fi
log "done, overall status $status"
cat "$OUT/table.md" 2>/dev/null
exit $status
