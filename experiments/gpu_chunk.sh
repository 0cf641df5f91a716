#!/bin/bash
# One device-tool call (one <= 10-minute command): the GPU figures, then the paper-config evidence
# runs (lr 5e-4) for the rest of the budget, their resumable archives packed into $OUT.
#
#   bash experiments/gpu_chunk.sh [BUDGET_S=540] [METHODS=wd0,wd0.01,wdctl_t2] [BENCH=quick|full|0]
#
# Carry `.gpu` (README "Running on a GPU"): .gpu/cache/mnist-uint8.npz (np.savez_compressed of
# alphareg's cache, 11.5 MB), .gpu/commit (`git rev-parse --short HEAD` here: the device's copy
# of .git can be stale, so runs record this one), and .gpu/archive/*.tar.gz from earlier chunks (then the runs resume).
# Back here: `cat <files_at>/archive.tar.part-* | tar xf - -C .gpu` restores .gpu/archive; then
# `python -m experiments.evidence paper --methods ... --runs-dir runs --archive .gpu/archive --hours 0`
# extracts the runs into runs/ and `--verdict reports/verdict/paper_preset_h<N> --horizon N` builds the verdict.
#
# Order: (1) `benchmarks.bench_gpu --quick` (speed, and the CUDA-graph path against the plain loop
# after 1,000 steps and, with the penalty and WD controller, against the eager path after 500;
# `full`: all five parts); without those figures, or either above 1e-8, the runs use
# the eager path (ALPHAREG_CUDA_GRAPHS=0). (2) `experiments.evidence paper` with every method in parallel until
# BUDGET_S - 100 s after the start (with a penalty method, `--threads` from `benchmarks.profile_penalty
# threads`: the host thread count that makes its refresh fastest) (SIGINT: each run checkpoints at a step boundary), a bounded
# HTSR catch-up and figures (`experiments.report`), then archives (alphareg.archive).
# (3) archives split into 15 MB parts, the session log and figures into $OUT (8 files at most).
set -u
T0=$(date +%s)
BUDGET=${1:-540}
METHODS=${2:-wd0,wd0.01,wdctl_t2}
BENCH=${3:-quick}
OUT=${OUT:-/tmp/gpu_chunk_out}
mkdir -p "$OUT" .gpu/runs .gpu/archive
export ALPHAREG_CACHE_DIR=.gpu/cache ALPHAREG_NO_DOWNLOAD=1 PYTHONUNBUFFERED=1
export ALPHAREG_GIT_COMMIT=$(cat .gpu/commit 2>/dev/null || echo unknown)
LOG=$OUT/session.log
el() { echo $(( $(date +%s) - T0 )); }
say() { echo "[gpu_chunk $(el)s] $*" | tee -a "$LOG"; }

say "commit $ALPHAREG_GIT_COMMIT, budget ${BUDGET}s, methods $METHODS, $(nproc) cores"
{ nvidia-smi -L 2>&1; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"; } 2>&1 | tee -a "$LOG"

if [ "$BENCH" != 0 ]; then
  [ "$BENCH" = full ] && parts="" || parts=--quick
  say "bench_gpu $parts"
  timeout -k 5 $([ "$BENCH" = full ] && echo 240 || echo 90) python3 -m benchmarks.bench_gpu $parts \
      --steps 1000 --full-steps 10000 --json "$OUT/engine_gpu.json" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  dev=$(python3 -c "import json; r = json.load(open('$OUT/engine_gpu.json')); print(max(r['max_relative_deviation_vs_plain_cpu_loop_1000_steps'], r['max_relative_deviation_hooks_graph_vs_eager']))" 2>/dev/null || echo nan)
  say "bench_gpu rc=$rc, graph path vs plain loop after 1,000 steps / with hooks vs eager after 500 steps, the larger: $dev"
  if ! python3 -c "import sys; sys.exit(0 if float('$dev') <= 1e-8 else 1)"; then
    export ALPHAREG_CUDA_GRAPHS=0
    say "CUDA graphs OFF for the runs (no correctness figure, or it deviated)"
  fi
fi

python3 - <<'EOF' 2>&1 | tee -a "$LOG"
from pathlib import Path
from alphareg.archive import SUFFIX, restore
for a in sorted(Path(".gpu/archive").glob(f"*{SUFFIX}")):
    print("restore", a.name, *restore(a.name[:-len(SUFFIX)], ".gpu/runs", ".gpu/archive"))
EOF

THREADS_ARG=""   # the penalty's refresh is host work: give the runs the host thread count that does it fastest
if [[ ",$METHODS," == *,penalty* ]]; then
  best=$(timeout -k 5 60 python3 -m benchmarks.profile_penalty threads 2>&1 | tee -a "$LOG" | sed -n 's/^best threads //p')
  [ -n "$best" ] && THREADS_ARG="--threads $best"
  say "host threads for the runs: ${best:-default (no figure)}"
fi

left=$(( BUDGET - 100 - $(el) ))
say "evidence paper --methods $METHODS for ${left}s"
hours=$(python3 -c "print(max(0.0, $left / 3600))")
timeout -k 20 -s INT $(( left + 30 )) python3 -m experiments.evidence paper --methods "$METHODS" \
    --workers $(echo "$METHODS" | tr , "\n" | wc -l) $THREADS_ARG --hours "$hours" --chunk 10000000 --runs-dir .gpu/runs \
    --run-args "--device ${DEVICE:-cuda} --ww-per-decade 0" 2>&1 | tee -a "$LOG"
say "evidence rc=${PIPESTATUS[0]}"
pkill -INT -f -- "--runs-dir .gpu/runs" && sleep 10

say "HTSR catch-up of the snapshots the monitors had not reached (<= 45 s), figures"
for r in .gpu/runs/*/; do
  timeout -k 5 45 python3 -m experiments.report "$r" --no-progress > "${r%/}.report.log" 2>&1 &
done
wait
say "packing"
python3 - <<'EOF' 2>&1 | tee -a "$LOG"
# Archives keep the snapshots still unanalysed unless those would not fit what comes back
# (64 MiB): then they are dropped (their HTSR rows are lost; the training state is complete).
from pathlib import Path
from alphareg.archive import SNAPSHOTS, archive_path, members, save
runs = sorted(p for p in Path(".gpu/runs").iterdir() if p.is_dir())
snaps = [r / m for r in runs for m in members(r) if m.parts[0] == SNAPSHOTS]
size = sum(p.stat().st_size for p in snaps)
print(f"{len(snaps)} snapshots not analysed, {size / 1e6:.1f} MB")
if size > 15e6:
    for p in snaps:
        p.unlink()
    print("dropped them (too large to bring back)")
for run in runs:
    archive_path(".gpu/archive", run.name).unlink(missing_ok=True)
    print(run.name, *save(run, ".gpu/archive")[1:])
EOF
ls -la .gpu/archive | tee -a "$LOG"
tar cf - -C .gpu archive | split -b 15m - "$OUT/archive.tar.part-"
tar czf "$OUT/plots_logs.tgz" -C .gpu/runs --exclude snapshots --exclude checkpoint.pt . 2>/dev/null
say "done"
