"""Training throughput: reconstruction-only vs joint reconstruction + iBOT, side by side in one run.

    python benchmarks/bench_training.py --model tcae-tiny --image-size 64 --batch-size 16 --steps 10
    python benchmarks/bench_training.py --model tcae-s --image-size 256 --batch-size 2 --steps 1 --warmup 0
    python benchmarks/bench_training.py --ref af9b27c~1 --objective paper --steps 8   # before/after a change

Peak memory (ru_maxrss) comes from each setting run alone in its own subprocess. Speed comes from both
trainers built in one process and stepped alternately (recon, joint, recon, ...), so whatever else the
machine is doing slows both alike; `train_step` is timed on batches fetched beforehand (data loading
excluded: it overlaps with compute in DataLoader workers). Reports images/s (median over steps) and
the joint/recon cost ratio, and the FLOPs of one step of each (torch.utils.flop_counter: matmuls, convolutions,
attention), whose ratio is the floor any kernel-level speed-up leaves the time ratio at.

`--objective l1` (default) is the tiny config's L_rec: L1 only. `--objective paper` is PAPER.md's
L_rec = L1 + LPIPS + GAN, as phase 1 runs once the GAN has started: LPIPS's VGG16 from torch hub's cache if
it is there, else a VGG16 with random weights -- *for cost only*: the benchmark reports time, never the
loss value, and cost does not depend on weights -- and the PatchGAN with its adaptive weight from step 0.

`--ref GIT_REF` measures a change instead: the same two settings with the package as it is at GIT_REF (its
`src/`, exported with `git archive` into a temporary folder) and as it is in this working tree, in two worker
processes stepped alternately (ref, tree, ref, tree, ...) so other load slows both alike, side by side with
the speed and FLOPs ratios (no peak memory). The ref must have the trainer API this script drives
(`TokenizerTrainer`, the config keys above).
"""

from __future__ import annotations

import argparse
import inspect
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("recon", "joint")


def build(args: argparse.Namespace, ssl: bool, tmp: str):
    """A trainer for one setting and its batches, fetched up front."""
    from tcae.config import TRAIN_ALIASES, TrainConfig, load_config
    from tcae.training.tokenizer import TokenizerTrainer

    cfg = load_config(TrainConfig, args.config, [
        f"run_dir={tmp}", f"name={'joint' if ssl else 'recon'}", f"model={args.model}",
        f"image_size={args.image_size}", f"batch_size={args.batch_size}", f"ssl={str(ssl).lower()}",
        f"ssl.num_local={args.num_local}", "ssl.num_global=2", "progress=false",
        f"steps={args.steps + args.warmup}", f"precision={args.precision}",
    ], TRAIN_ALIASES)
    if args.objective == "paper":
        cfg.loss.gan, cfg.loss.gan_start = True, 0
    trainer = TokenizerTrainer(cfg)
    if args.objective == "paper":
        trainer.perceptual = perceptual_for_timing().to(trainer.device)
    data = trainer.batches()
    return trainer, [next(data) for _ in range(args.steps + args.warmup)]


def perceptual_for_timing():
    """LPIPS-VGG16 with real weights when cached, else the same network with random weights (timing only)."""
    import lpips
    import torch

    from tcae.losses.perceptual import LPIPSLoss, default_backbone_path

    if default_backbone_path("vgg").is_file():
        return LPIPSLoss("vgg")
    print(f"note: {default_backbone_path('vgg')} is missing; LPIPS runs with a random VGG16 (cost only)",
          file=sys.stderr)
    net = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False).eval().requires_grad_(False)

    class MeanLPIPS(torch.nn.Module):  # what LPIPSLoss computes: the batch mean
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, pred, target):
            return self.net(pred, target).mean()

    return MeanLPIPS()


def train_step(trainer, batch) -> None:
    """One optimizer step on `batch` (trainers older than gradient accumulation took one batch, not a list)."""
    takes_list = "micro_batches" in inspect.signature(trainer.train_step).parameters
    trainer.train_step([batch] if takes_list else batch)
    trainer.step += 1


def step_flops(trainer, batch) -> int:
    """FLOPs of one training step (forward, backward, optimizer), counted on a warm-up step."""
    from tcae.models.flops import flop_counter

    with flop_counter() as counter:
        train_step(trainer, batch)
    return int(counter.get_total_flops())


def timed_step(trainer, batch) -> float:
    t = time.perf_counter()
    train_step(trainer, batch)
    return time.perf_counter() - t


def summary(times: list[float], batch_size: int) -> dict:
    med = statistics.median(times)
    return {"step_s_median": med, "step_s_min": min(times), "step_s_max": max(times),
            "images_per_s": batch_size / med}


def measure_alone(args: argparse.Namespace, ssl: bool) -> dict:
    """One setting in this process: its peak RSS (and its own timing)."""
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        trainer, batches = build(args, ssl, tmp)
        times = [timed_step(trainer, b) for b in batches][args.warmup:]
    return {**summary(times, args.batch_size),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure_interleaved(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {kind: build(args, kind == "joint", tmp) for kind in ("recon", "joint")}
        times: dict[str, list[float]] = {"recon": [], "joint": []}
        flops = {kind: step_flops(trainer, batches[0]) for kind, (trainer, batches) in runs.items()}
        for i in range(1, args.steps + args.warmup):
            for kind, (trainer, batches) in runs.items():
                dt = timed_step(trainer, batches[i])
                if i >= args.warmup:
                    times[kind].append(dt)
    return {kind: {**summary(t, args.batch_size), "step_gflops": flops[kind] / 1e9} for kind, t in times.items()}


# ---------------------------------------------------------------------------- --ref: before/after a change
def serve(args: argparse.Namespace) -> None:
    """Worker of --ref (the `tcae` on PYTHONPATH): build both settings, print their step FLOPs as JSON, then
    for each line "recon"/"joint" on stdin time one step of that setting and print its seconds."""
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {kind: build(args, kind == "joint", tmp) for kind in KINDS}
        counts = {kind: step_flops(trainer, batches[0]) for kind, (trainer, batches) in runs.items()}
        print(json.dumps(counts), flush=True)
        next_batch = dict.fromkeys(KINDS, 1)  # batch 0 counted the FLOPs
        for line in sys.stdin:
            kind = line.strip()
            trainer, batches = runs[kind]
            print(timed_step(trainer, batches[next_batch[kind] % len(batches)]), flush=True)
            next_batch[kind] += 1


def fail(message: str) -> None:
    """Stop with `message` and exit code 2 (bad input: a wrong --ref, a worker that cannot run)."""
    print(f"bench_training.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def export_src(ref: str, dest: Path) -> Path:
    """`src/` of the repository at git revision `ref`, written under `dest`; returns its path."""
    found = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd=ROOT,
                           capture_output=True, text=True)
    if found.returncode != 0:
        fail(f"--ref {ref}: not a git revision of {ROOT}")
    archive = subprocess.run(["git", "archive", "--format=tar", found.stdout.strip(), "src"], cwd=ROOT,
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest / "src"


class Worker:
    """One side of --ref: this script's `serve` in a process importing `tcae` from `src`."""

    def __init__(self, src: Path, argv: list[str], threads: int) -> None:
        env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(threads)}
        self.src = src
        self.proc = subprocess.Popen([sys.executable, __file__, *argv, "--serve"], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.flops = json.loads(self._read())

    def _read(self) -> str:
        line = self.proc.stdout.readline()
        if not line:  # its traceback went to stderr, above
            fail(f"the worker importing tcae from {self.src} stopped (its error is above)")
        return line

    def step(self, kind: str) -> float:
        self.proc.stdin.write(kind + "\n")
        self.proc.stdin.flush()
        return float(self._read())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def measure_against_ref(args: argparse.Namespace) -> dict:
    """{"recon"|"joint": {"ref"|"tree": summary + step_gflops}}, the two trees stepped alternately."""
    argv = [f"--{name.replace('_', '-')}={getattr(args, name)}" for name in
            ("model", "config", "image_size", "batch_size", "num_local", "steps", "warmup", "objective", "threads",
             "precision")]
    with tempfile.TemporaryDirectory() as tmp:
        sides = {"ref": Worker(export_src(args.ref, Path(tmp)), argv, args.threads),
                 "tree": Worker(ROOT / "src", argv, args.threads)}
        times = {kind: {side: [] for side in sides} for kind in KINDS}
        for i in range(1, args.steps + args.warmup):
            for kind in KINDS:
                for side, worker in sides.items():
                    dt = worker.step(kind)
                    if i >= args.warmup:
                        times[kind][side].append(dt)
        for worker in sides.values():
            worker.close()
    return {kind: {side: {**summary(t, args.batch_size), "step_gflops": sides[side].flops[kind] / 1e9}
                   for side, t in by_side.items()} for kind, by_side in times.items()}


def ref_table(rows: dict, ref: str) -> str:
    """Markdown: per setting, images/s and step GFLOPs at the ref and in the tree, and their ratios."""
    lines = [f"| setting | {ref} img/s | tree img/s | speed tree / {ref} | {ref} GFLOPs | tree GFLOPs | "
             f"FLOPs {ref} / tree |", "|---|---|---|---|---|---|---|"]
    for kind, r in rows.items():
        old, new = r["ref"], r["tree"]
        lines.append(f"| {kind} | {old['images_per_s']:.2f} | {new['images_per_s']:.2f} | "
                     f"{new['images_per_s'] / old['images_per_s']:.3f}x | {old['step_gflops']:.1f} | "
                     f"{new['step_gflops']:.1f} | {old['step_gflops'] / new['step_gflops']:.3f}x |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tcae-tiny")
    p.add_argument("--config", default="tiny")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-local", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (>= 1: the first counts FLOPs)")
    p.add_argument("--objective", choices=["l1", "paper"], default="l1",
                   help="L_rec: L1 only, or L1 + LPIPS + GAN (PAPER.md)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--ref", metavar="GIT_REF", help="measure the same at this git revision and in the working "
                   "tree, stepped alternately, side by side with ratios (a before/after check of a change)")
    p.add_argument("--only", choices=KINDS, help=argparse.SUPPRESS)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.warmup = max(args.warmup, 1)
    if args.serve:
        serve(args)
        return
    if args.ref:
        rows = measure_against_ref(args)
        print(f"command: python {' '.join(sys.argv)}")
        print(ref_table(rows, args.ref))
        print(json.dumps({"args": vars(args), "rows": rows}))
        return
    if args.only:
        print(json.dumps(measure_alone(args, args.only == "joint")))
        return
    memory = {}
    for kind in ("recon", "joint"):
        out = subprocess.run([sys.executable, *sys.argv, "--only", kind], check=True, capture_output=True,
                             text=True).stdout
        memory[kind] = json.loads(out.strip().splitlines()[-1])["peak_rss_mib"]
    rows = measure_interleaved(args)
    ratio = rows["joint"]["step_s_median"] / rows["recon"]["step_s_median"]
    flops_ratio = rows["joint"]["step_gflops"] / rows["recon"]["step_gflops"]
    print(f"command: python {' '.join(sys.argv)}")
    print("| setting | images/s | step s (median, min-max) | step GFLOPs | peak RSS MiB (alone) |\n"
          "|---|---|---|---|---|")
    for kind, r in rows.items():
        print(f"| {kind} | {r['images_per_s']:.2f} | {r['step_s_median']:.3f} ({r['step_s_min']:.3f}-"
              f"{r['step_s_max']:.3f}) | {r['step_gflops']:.1f} | {memory[kind]:.0f} |")
    print(f"joint / recon step cost ({args.objective} L_rec; 2 global + {args.num_local} local crops): "
          f"time {ratio:.2f}x, FLOPs {flops_ratio:.2f}x")
    print(json.dumps({"args": vars(args), "rows": rows, "peak_rss_mib": memory, "joint_over_recon": ratio,
                      "joint_over_recon_flops": flops_ratio}))


if __name__ == "__main__":
    main()
