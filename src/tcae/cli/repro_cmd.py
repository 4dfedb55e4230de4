"""`tcae demo` and `tcae repro` parsers (the work lives in tcae.studies.demo and tcae.studies.cells)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tcae.cli._common import add_command, add_no_progress, out_dir_arg

# tcae.studies.paper's PAPER and SCALES keys, spelt here so that building the parser does not import torch
EXPERIMENTS = ("stc-ssl", "ssl-method", "channels", "token-scaling", "ssl-causes", "dcae")
CURVES = "curves"  # not a paper table: the learning curves that choose both phases' steps (tcae.studies.curves)
SCALES = ("tiny", "small", "base")


def _demo(args: argparse.Namespace) -> int:
    from tcae.studies.demo import run_demo

    report = run_demo(Path(args.out), args.tokenizer_steps, args.dit_steps, args.per_class, args.cfg,
                      progress=not args.no_progress, data=args.data, feature_network=args.feature_network,
                      feature_weights=args.feature_weights, inception_weights=args.inception_weights)
    print(f"report: {report}")
    return 0


def _repro(args: argparse.Namespace) -> int:
    if args.experiment == CURVES:
        from tcae.studies.curves import run_curves

        if args.eval_split == "test":
            raise ValueError("curves choose settings: they are evaluated on val, never on test")
        print(f"report: {run_curves(args.scale, args.data, args.out, args.cells)}")
        return 0
    from tcae.studies.experiments import run_experiment

    only = [c.strip() for c in args.only.split(";")] if args.only is not None else None
    if only is not None and not all(only):
        raise ValueError(f"--only {args.only!r}: an empty cell name (cells are separated by ';')")
    if only and args.report_only:
        raise ValueError("--only computes cells and --report-only computes none: give one of them")

    report = run_experiment(args.experiment, args.scale, args.out, args.data, args.seeds, args.eval_split,
                            args.cells, report_only=args.report_only, only=only, wait=not args.no_wait)
    print(f"report: {report}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "demo", _demo, "the whole pipeline on built-in digits or your folder (CPU, ~10 min): "
                                        "report.md")
    p.add_argument("--out", default="out/demo", metavar="DIR", help="output directory (default: %(default)s)")
    p.add_argument("--tokenizer-steps", type=int, default=500)
    p.add_argument("--dit-steps", type=int, default=2000)
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--cfg", type=float, default=2.0)
    p.add_argument("--data", default="builtin:digits",
                   help="builtin:digits (embedded, the default), builtin:fashion[@DIR] (Fashion-MNIST idx files) or "
                        "an image folder (a class per sub-folder: a row per class; else unconditional samples)")
    p.add_argument("--feature-network", default=None, metavar="NAME",
                   help="a folder's samples: FD against the folder in this network's features (dinov2, "
                        "torchvision:NAME); the built-ins are judged by their own judge")
    p.add_argument("--feature-weights", default=None, metavar="PATH", help="weights file of --feature-network")
    p.add_argument("--inception-weights", default=None, metavar="PATH",
                   help="a folder's samples: gFID against the folder with this InceptionV3 file")
    add_no_progress(p)

    p = add_command(sub, "repro", _repro, "re-run one of the paper's ablations: " + ", ".join(EXPERIMENTS))
    p.add_argument("experiment", choices=(*EXPERIMENTS, CURVES),
                   help=f"a paper ablation, or {CURVES}: the learning curves (val) that choose both phases' steps")
    p.add_argument("--scale", choices=SCALES, default="tiny")
    p.add_argument("--data", default=None, help="data spec (default: builtin:digits at --scale tiny; "
                   "builtin:fashion[@DIR] picks the tiny scale that mirrors the paper's regime)")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per cell (tokenizer, DiT and sampling)")
    p.add_argument("--eval-split", choices=("val", "test"), default=None,
                   help="split the cells are evaluated on (default: test where the data has one, else val); "
                        "choose settings on val, report on test")
    out_dir_arg(p, required=False, what="output directory (default: out/repro/EXPERIMENT-SCALE[-DATA][-SPLIT])")
    p.add_argument("--cells", default=None, metavar="DIR",
                   help="folder of the shared (cell, seed) runs (default: OUT/../cells)")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: report the finished (cell, seed) results in OUT, listing the missing ones")
    p.add_argument("--only", default=None, metavar="CELL[;CELL]",
                   help="compute only these cells (';'-separated names as in the report); the others are "
                        "reported if finished, else listed as missing")
    p.add_argument("--no-wait", action="store_true",
                   help="leave a (cell, seed) another process is computing to it (listed as missing) instead "
                        "of waiting for it at the end")
    add_no_progress(p)
