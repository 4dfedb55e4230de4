"""`tcae bench`: TC-AE presets vs DC-AE-f32c32 side by side (FLOPs, images/s, memory, % of matmul peak)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from tcae.cli._common import add_command, add_no_progress

# tcae.bench.run.DEFAULT_MODELS, spelt here so that building the parser does not import torch
DEFAULT_MODELS = ("tcae-tiny", "tcae-s", "tcae-b", "dc-ae-f32c32")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _command_line() -> str | None:
    """The command line, for the report's header, when run as `tcae bench` or the benchmarks script."""
    prog = Path(sys.argv[0]).name if sys.argv else ""
    if prog in ("tcae", "bench_tokenizers.py", "__main__.py", "main.py"):
        return shlex.join([prog if prog == "tcae" else sys.argv[0], *sys.argv[1:]])
    return None


def _run(args: argparse.Namespace) -> int:
    import torch

    from tcae.bench.run import run_bench, write_results

    if args.threads:
        torch.set_num_threads(args.threads)
    models = _csv(args.models)
    out = run_bench(
        models=models, image_size=args.image_size, batch_size=args.batch_size, dtypes=_csv(args.dtypes),
        device=args.device, repeats=args.repeats, warmup=args.warmup, train_step=not args.no_train_step,
        memory=not args.no_memory, compile=args.compile, channels_last=args.channels_last,
        baseline=args.baseline if args.baseline in models else None, matmul_size=args.matmul_size,
        log=(lambda msg: None) if args.no_progress else (lambda msg: print(msg, file=sys.stderr, flush=True)),
    )
    command = _command_line()
    md = write_results(out, args.out_json, args.out_md, command=command)
    print(md)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers, "bench", _run,
        "benchmark TC-AE presets against DC-AE-f32c32: FLOPs, images/s, memory, %% of matmul peak",
        description="Measures every model in one run, interleaved, with the same batch, device and dtype "
                    "policy: parameters, encode/decode FLOPs, images/s for encode, decode, encode+decode and a "
                    "training step, peak memory and achieved FLOP/s against the measured matmul peak. "
                    "DC-AE is diffusers' AutoencoderDC from the published dc-ae-f32c32-in-1.0 config with "
                    "random weights (cost does not depend on weights).")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help="comma-separated TC-AE presets and/or dc-ae-f32c32 (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16, fp16 (autocast)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=5, help="timed calls per phase (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed calls per phase after one that counts FLOPs; the last measures memory "
                        "(at least 1; default: %(default)s)")
    p.add_argument("--no-train-step", action="store_true", help="skip the training-step measurement")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--compile", action="store_true", help="torch.compile every model's encode/decode/forward")
    p.add_argument("--channels-last", action="store_true", help="channels_last weights and inputs for all models")
    p.add_argument("--baseline", default="dc-ae-f32c32", help="model the ratio columns divide by")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--matmul-size", type=int, default=None, help="matmul peak size (default 4096 CPU, 8192 CUDA)")
    # files, not an --out directory: a results folder holds several runs side by side (benchmarks/results/)
    p.add_argument("--out-json", default=None, metavar="FILE.json", help="write the full results as JSON here")
    p.add_argument("--out-md", default=None, metavar="FILE.md", help="write the Markdown table here")
    add_no_progress(p, "per-measurement log lines on stderr")
