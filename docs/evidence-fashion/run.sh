#!/usr/bin/env bash
# Issue 22: the evidence with trained tokenizers and the paper's whole recipe (phase 1 + phase 2), Fashion-MNIST,
# two 1-thread workers. Resumable at every level: a finished run is read back, an interrupted one resumes from its
# last checkpoint (every 250 steps). Runs live in $CELLS (default /work/evidence/cells, outside the work tree so a
# new checkout keeps them when the machine does); results and reports are written under docs/evidence-fashion/.
#
#   bash docs/evidence-fashion/run.sh curves     # stage 1 (val): both phases' learning curves choose their steps
#   bash docs/evidence-fashion/run.sh collect    # copy the finished curve runs' scores into docs (commit them)
#
# After stage 1, the chosen steps go into tcae.studies.paper.DATA_SCALES[("tiny", "fashion")] (tokenizer_steps,
# decoder_steps); stage 2 is `stc-ssl` on val (seed 0) to choose dit_limited_step; stage 3 the four experiments on
# test with 3 seeds, `stc-ssl` first (docs/repro-fashion/run.sh's worker loop with --out docs/evidence-fashion/EXP).
set -euo pipefail
cd "$(dirname "$0")/../.."
CELLS=${CELLS:-/work/evidence/cells}
OUT=docs/evidence-fashion
case "${1:-}" in
  curves)
    mkdir -p out
    for w in 1 2; do
      nohup bash -c "OMP_NUM_THREADS=1 .venv/bin/tcae repro curves --scale tiny --data builtin:fashion \
        --out $OUT/curves --cells $CELLS --no-progress" > out/evidence-curves-$w.log 2>&1 &
      sleep 5
    done
    echo "curve workers started: out/evidence-curves-{1,2}.log";;
  collect)
    mkdir -p $OUT/curves/scores
    for f in "$CELLS"/curve-*/run/curve-eval-*.json; do
      [ -e "$f" ] || continue
      cp "$f" "$OUT/curves/scores/$(basename "$(dirname "$(dirname "$f")")").json"
    done
    ls $OUT/curves/scores;;
  *) echo "usage: $0 curves|collect" >&2; exit 2;;
esac
