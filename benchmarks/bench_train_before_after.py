"""Training speed before/after a change, measured side by side: tokenizer training steps of a git revision
(`--ref`) and of the working tree, stepped alternately (A, B, A, B, ...) by two worker processes, so other load
on the machine slows both alike. Batches are fetched before timing; the config is the same for both.

    .venv/bin/python benchmarks/bench_train_before_after.py --ref 2f58032 --steps 20
    .venv/bin/python benchmarks/bench_train_before_after.py --ref 2f58032 -- ssl=false batch_size=32

Prints each side's median step time and images/s and the after/before speed ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKER = r"""
import inspect, json, sys, tempfile, time, torch
torch.set_num_threads(int(sys.argv[1]))
from tcae.config import TRAIN_ALIASES, TrainConfig, load_config
from tcae.training.tokenizer import TokenizerTrainer
overrides = json.loads(sys.argv[2])
cfg = load_config(TrainConfig, "tiny", [f"run_dir={tempfile.mkdtemp()}", *overrides], TRAIN_ALIASES)
trainer = TokenizerTrainer(cfg)
data = trainer.batches()
batches = [next(data) for _ in range(4)]
takes_list = "micro_batches" in inspect.signature(trainer.train_step).parameters  # the new API
print("ready", flush=True)
for i, line in enumerate(sys.stdin):
    batch = batches[i % len(batches)]
    t = time.perf_counter()
    terms = trainer.train_step([batch] if takes_list else batch)
    float(terms["loss"])  # both sides read the loss once per step here, as a log step would
    trainer.step += 1
    print(time.perf_counter() - t, flush=True)
"""


def start(src: Path, threads: int, overrides: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(threads)}
    p = subprocess.Popen([sys.executable, "-c", WORKER, str(threads), json.dumps(overrides)], env=env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready", f"worker on {src} did not start"
    return p


def step(p: subprocess.Popen) -> float:
    p.stdin.write("step\n")
    p.stdin.flush()
    return float(p.stdout.readline())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", required=True, help="git revision of the 'before' side")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the `tiny` config, for both sides")
    a = ap.parse_args()
    overrides = ["progress=false", "data=builtin:digits", "image_size=32", "steps=100000", *a.overrides]
    with tempfile.TemporaryDirectory() as tmp:
        before_tree = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(before_tree), a.ref], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            sides = {"before": start(before_tree / "src", a.threads, overrides),
                     "after": start(ROOT / "src", a.threads, overrides)}
            times: dict[str, list[float]] = {k: [] for k in sides}
            for i in range(a.warmup + a.steps):
                for name, p in sides.items():
                    t = step(p)
                    if i >= a.warmup:
                        times[name].append(t)
            for p in sides.values():
                p.stdin.close()
                p.wait()
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before_tree)], cwd=ROOT, check=False)
    batch = next((int(o.split("=")[1]) for o in overrides if o.startswith("batch_size=")), 16)
    print(f"command: python {' '.join(sys.argv)}")
    print("| side | median step s | img/s |\n|---|---|---|")
    med = {k: statistics.median(v) for k, v in times.items()}
    for k in sides:
        print(f"| {k} ({a.ref if k == 'before' else 'working tree'}) | {med[k]:.4f} | {batch / med[k]:.1f} |")
    print(f"after / before speed: {med['before'] / med['after']:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
