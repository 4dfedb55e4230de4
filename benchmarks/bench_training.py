"""Training throughput: reconstruction-only vs joint reconstruction + iBOT, side by side in one run.

    python benchmarks/bench_training.py --model tcae-tiny --image-size 64 --batch-size 16 --steps 10
    python benchmarks/bench_training.py --model tcae-s --image-size 256 --batch-size 2 --steps 1 --warmup 0

Each setting runs in its own subprocess (so peak memory, ru_maxrss, is that setting's own), timing
`train_step` on batches fetched beforehand (data loading excluded: it overlaps with compute in
DataLoader workers). Reports images/s (median over steps) and the joint/recon cost ratio.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def measure(args: argparse.Namespace, ssl: bool) -> dict:
    import torch

    from tcae.config import TRAIN_ALIASES, TrainConfig, load_config
    from tcae.training.tokenizer import TokenizerTrainer

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(TrainConfig, args.config, [
            f"run_dir={tmp}", f"model={args.model}", f"image_size={args.image_size}",
            f"batch_size={args.batch_size}", f"ssl={str(ssl).lower()}", f"ssl.num_local={args.num_local}",
            "ssl.num_global=2", "progress=false", f"steps={args.steps + args.warmup}", f"precision={args.precision}",
        ], TRAIN_ALIASES)
        trainer = TokenizerTrainer(cfg)
        data = trainer.batches()
        batches = [next(data) for _ in range(args.steps + args.warmup)]
        times = []
        for i, b in enumerate(batches):
            t = time.perf_counter()
            trainer.train_step(b)
            trainer.step += 1
            if i >= args.warmup:
                times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"ssl": ssl, "step_s_median": med, "step_s_min": min(times), "step_s_max": max(times),
            "images_per_s": args.batch_size / med,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tcae-tiny")
    p.add_argument("--config", default="tiny")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-local", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--only", choices=["recon", "joint"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.only:
        print(json.dumps(measure(args, args.only == "joint")))
        return
    rows = {}
    for kind in ("recon", "joint"):
        out = subprocess.run([sys.executable, *sys.argv, "--only", kind], check=True, capture_output=True,
                             text=True).stdout
        rows[kind] = json.loads(out.strip().splitlines()[-1])
    ratio = rows["recon"]["images_per_s"] / rows["joint"]["images_per_s"]
    print(f"command: python {' '.join(sys.argv)}")
    print("| setting | images/s | step s (median, min-max) | peak RSS MiB |\n|---|---|---|---|")
    for kind, r in rows.items():
        print(f"| {kind} | {r['images_per_s']:.2f} | {r['step_s_median']:.3f} ({r['step_s_min']:.3f}-"
              f"{r['step_s_max']:.3f}) | {r['peak_rss_mib']:.0f} |")
    print(f"joint / recon step cost: {ratio:.2f}x (2 global + {args.num_local} local crops)")
    print(json.dumps({"rows": rows, "joint_over_recon": ratio}))


if __name__ == "__main__":
    main()
