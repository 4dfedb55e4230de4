#!/usr/bin/env bash
# The four paper ablations at the Fashion-MNIST tiny scale, 3 seeds each (issue 12). Resumable: a finished
# (cell, seed) has its result.json under docs/repro-fashion/EXPERIMENT/CELL/seed-N/ and is never recomputed;
# the training runs themselves (weights, latents) live in out/repro-fashion-cells/ and are shared between
# experiments (a cell with the same resolved config is trained once). Several copies of this script may run
# at once (a (cell, seed) held by one is skipped by the others).
#   bash docs/repro-fashion/run.sh            # from the repository root, after `make test` set up .venv
set -euo pipefail
cd "$(dirname "$0")/../.."
for exp in stc-ssl ssl-method channels token-scaling; do
  .venv/bin/tcae repro "$exp" --data builtin:fashion --scale tiny --seeds 3 \
    --out "docs/repro-fashion/$exp" --cells out/repro-fashion-cells --no-progress
done
