#!/usr/bin/env bash
# The four paper ablations at the Fashion-MNIST tiny scale, 3 seeds each (issue 12; docs/repro-fashion-tiny.md
# has the scale, its mapping onto the paper and the budget). Resumable: a finished (cell, seed) has its
# result.json under docs/repro-fashion/EXPERIMENT/CELL/seed-N/ (committed) and is never recomputed; the runs
# themselves (weights, latents, checkpoints) live in out/repro-fashion-cells/ and are shared between
# experiments (a cell with the same resolved config trains once). Two 1-thread workers share the grid (a
# (cell, seed) one holds is skipped by the other in a first pass over all its experiments and waited for
# in a second). From the repository root,
# after `make test` set up .venv:
#   bash docs/repro-fashion/run.sh                  # both workers in the background, logs in out/
#   bash docs/repro-fashion/run.sh worker A B ...   # one worker over experiments A B ... (in this shell)
# An experiment may be written EXP@val@N: evaluated on the val split carved from train (choosing settings,
# issue 12 item 6), seeds 0..N-1, report in docs/repro-fashion/EXP-val; plain EXP is the test split, 3 seeds.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "${1:-}" = worker ]; then
  shift
  # First pass: skip (cell, seed) runs the other worker holds, so a worker never idles on one while other
  # experiments have work; second pass: wait for what is left, and write the final reports (a worker
  # stopped between the passes leaves interim reports: run it again).
  for wait in --no-wait ""; do
    for item in "$@"; do
      IFS=@ read -r exp split seeds <<< "$item"
      split=${split:-test}; seeds=${seeds:-3}
      out="docs/repro-fashion/$exp$([ "$split" = test ] || echo "-$split")"
      OMP_NUM_THREADS=1 .venv/bin/tcae repro "$exp" --data builtin:fashion --scale tiny --seeds "$seeds" \
        --eval-split "$split" --out "$out" --cells out/repro-fashion-cells --no-progress $wait
    done
  done
  exit 0
fi
mkdir -p out
nohup bash "$0" worker ssl-causes@val@1 stc-ssl ssl-method token-scaling channels ssl-causes \
  > out/repro-fashion-worker-1.log 2>&1 &
nohup bash "$0" worker stc-ssl channels token-scaling ssl-method ssl-causes > out/repro-fashion-worker-2.log 2>&1 &
echo "workers started: out/repro-fashion-worker-{1,2}.log"
