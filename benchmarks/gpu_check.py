"""The GPU check: one script, under 10 minutes on one GPU, that exercises every CUDA code path of training.

    python benchmarks/gpu_check.py                      # on a CUDA machine: tcae-b at 256 px, bf16
    python benchmarks/gpu_check.py --device cpu --tiny  # the same code paths on tiny shapes (CI runs it)

It runs, in order, and prints one Markdown table (img/s, achieved TFLOP/s, % of the measured bf16 matmul
peak, peak GB):
1. joint iBOT training steps of the `b` config (L_rec = L1 + LPIPS + GAN; LPIPS's VGG16 with random weights
   when its file is missing -- cost only, no loss value is reported), eager and with `compile=true`;
2. tcae-b and DC-AE-f32c32 encode / decode throughput (`tcae.bench`);
3. 20 training steps (eager) under `torch.cuda.set_sync_debug_mode("error")`: any host sync in the step raises;
4. a 1-process `torchrun` training run (NCCL on CUDA, gloo on CPU).
Exit status 0 only if every check passed. `--out FILE.md` also writes the table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


# --tiny: a 1024-wide peak matmul (2 GFLOP) instead of 4096 (137 GFLOP, seconds a call on one CPU core); the
# peak is then a lower bound and the "% of matmul peak" column only shows that the arithmetic runs
TINY_MATMUL = 1024


def trainer_for(args: argparse.Namespace, run_dir: str, name: str, compile_: bool):
    """A joint-iBOT tokenizer trainer of the check's size, and a list of its batches (fetched up front)."""
    from bench_training import perceptual_for_timing

    from tcae.config import TRAIN_ALIASES, TrainConfig, load_config
    from tcae.training.tokenizer import TokenizerTrainer

    size = ["model=tcae-tiny", "image_size=32", "batch_size=4", "ssl.out_dim=64", "ssl.patch_out_dim=64",
            "ssl.head_hidden_dim=32", "ssl.head_bottleneck_dim=16", "ssl.num_local=2", "data=builtin:digits",
            "data.num_workers=0"] \
        if args.tiny else [f"batch_size={args.batch_size}", "data=builtin:photos", "data.num_workers=4"]
    cfg = load_config(TrainConfig, "b", [
        f"run_dir={run_dir}", f"name={name}", *size, f"device={args.device}", f"precision={args.precision}",
        "gan=true", "loss.gan_start=0", "perceptual=none", "progress=false", f"compile={str(compile_).lower()}",
        "data.epoch_size=4096", f"steps={args.steps + args.sync_steps + 3}"], TRAIN_ALIASES)
    trainer = TokenizerTrainer(cfg)
    trainer.perceptual = perceptual_for_timing().to(trainer.device)  # the `b` config's LPIPS, for cost
    data = trainer.batches()
    return trainer, [next(data) for _ in range(2)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(trainer, batches, steps: int) -> float:
    """Seconds per step (median of `steps`, after 2 warm-up steps that include compilation)."""
    times = []
    for i in range(steps + 2):
        sync(trainer.device)
        t = time.perf_counter()
        trainer.train_step([batches[i % len(batches)]])
        trainer.step += 1
        sync(trainer.device)
        if i >= 2:
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def train_rows(args: argparse.Namespace, peak: float, tmp: str) -> list[dict]:
    from tcae.models.flops import flop_counter

    rows = []
    for compile_ in (False, True) if not args.skip_compile else (False,):
        trainer, batches = trainer_for(args, tmp, f"train-{compile_}", compile_)
        device = trainer.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with flop_counter() as counter:  # one eager step: FLOPs do not depend on compilation
            trainer.train_step([batches[0]])
        trainer.step += 1
        flops = counter.get_total_flops()
        sec = time_steps(trainer, batches, args.steps)
        rows.append({"what": f"train step, joint iBOT + GAN{', compile' if compile_ else ''}",
                     "img_s": trainer.cfg.data.batch_size / sec, "tflops": flops / sec / 1e12,
                     "peak_pct": 100 * flops / sec / peak if peak else None, "gb": _peak_gb(device)})
        if not compile_:
            rows.append(sync_free_row(trainer, batches, args.sync_steps))
        del trainer
    return rows


def sync_free_row(trainer, batches, steps: int) -> dict:
    """`steps` steps with host syncs turned into errors (CUDA only; elsewhere the steps run unguarded)."""
    cuda = trainer.device.type == "cuda"
    ok = "passed"
    if cuda:
        torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(steps):
            trainer.train_step([batches[i % len(batches)]])
            trainer.step += 1
    except RuntimeError as e:
        ok = f"FAILED: {str(e).splitlines()[0][:120]}"
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode("default")
    what = f"{steps} steps under set_sync_debug_mode('error')" if cuda else f"{steps} steps (no CUDA: no sync check)"
    return {"what": what, "status": ok}


def bench_rows(args: argparse.Namespace) -> list[dict]:
    from tcae.bench.run import run_bench

    size, batch = (32, 2) if args.tiny else (256, args.batch_size)
    models = ("tcae-tiny", "dc-ae-f32c32") if args.tiny else ("tcae-b", "dc-ae-f32c32")
    out = run_bench(models, image_size=size, batch_size=batch, dtypes=(args.precision,), device=args.device,
                    repeats=1 if args.tiny else 5, warmup=0 if args.tiny else 1, train_step=False,
                    memory=args.device == "cuda", matmul_size=TINY_MATMUL if args.tiny else None)
    rows = []
    for r in out["results"]:
        for phase in ("encode", "decode"):
            ips = r["images_per_s"][phase]["median"]
            achieved = r.get("achieved_flops_per_s", {}).get(phase)
            frac = r.get("peak_fraction", {}).get(phase)
            gb = r.get("peak_memory_bytes", {}).get(phase)
            rows.append({"what": f"{r['model']} {phase} ({size} px, batch {batch})", "img_s": ips,
                         "tflops": achieved / 1e12 if achieved else None,
                         "peak_pct": 100 * frac if frac else None, "gb": gb / 2**30 if gb else None})
    return rows


def torchrun_row(args: argparse.Namespace, tmp: str) -> dict:
    size = ["model=tcae-tiny", "image_size=32", "batch_size=4", "data=builtin:digits", "ssl.out_dim=64",
            "ssl.patch_out_dim=64", "ssl.head_hidden_dim=32", "ssl.head_bottleneck_dim=16",
            "data.num_workers=0", "latent_stats_images=64"] if args.tiny else ["batch_size=8", "data=builtin:photos"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "--standalone",
           "-m", "tcae.cli.main", "train", "b", f"run_dir={tmp}", "name=torchrun", *size, "steps=2",
           "perceptual=none", f"device={args.device}", f"precision={args.precision}", "progress=false"]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    backend = "nccl" if args.device == "cuda" else "gloo"
    status = "passed" if r.returncode == 0 else f"FAILED (rc {r.returncode}): {r.stderr.strip()[-300:]}"
    return {"what": f"torchrun --nproc-per-node 1 ({backend}), 2 steps, {time.perf_counter() - t:.0f} s",
            "status": status}


def _peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(rows: list[dict], header: str) -> str:
    lines = [header, "", "| check | img/s | TFLOP/s | % of matmul peak | peak GB | status |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['what']} | {_fmt(r.get('img_s'), '.3g')} | {_fmt(r.get('tflops'), '.3g')} | "
                     f"{_fmt(r.get('peak_pct'), '.1f')} | {_fmt(r.get('gb'), '.2f')} | {r.get('status', 'ok')} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny shapes (CPU / CI): the same code paths")
    p.add_argument("--batch-size", type=int, default=32, help="tcae-b training and bench batch (default 32)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per setting")
    p.add_argument("--sync-steps", type=int, default=None, help="steps under the sync check (default 20; 2 tiny)")
    p.add_argument("--precision", default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--out", default=None, help="also write the table to this Markdown file")
    p.add_argument("--skip-compile", action="store_true",
                   help="no compiled training row (CI on a CPU: tests/test_training.py checks compile=true)")
    args = p.parse_args()
    args.precision = args.precision or ("bf16" if args.device == "cuda" else "fp32")
    args.sync_steps = args.sync_steps if args.sync_steps is not None else (2 if args.tiny else 20)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    from tcae.bench.core import matmul_peak

    peak = matmul_peak(args.device, "bf16" if args.device == "cuda" else "fp32",
                       size=TINY_MATMUL if args.tiny else None)["flops_per_s"]
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = train_rows(args, peak, tmp) + bench_rows(args) + [torchrun_row(args, tmp)]
    header = (f"gpu_check on {name}, torch {torch.__version__}, precision {args.precision}, measured matmul peak "
              f"{peak / 1e12:.1f} TFLOP/s ({'bf16' if args.device == 'cuda' else 'fp32'}), "
              f"{time.perf_counter() - t0:.0f} s{' (tiny shapes)' if args.tiny else ''}")
    text = table(rows, header)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if all(r.get("status", "ok") in ("ok", "passed") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
