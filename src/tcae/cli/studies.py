"""The research harness's commands (the work lives in tcae.studies): `tcae demo`, `tcae repro` (the paper's
ablations, and `curves`) and `tcae score` (the generation-proxy score of any tokenizer).

    tcae score --model diffusers:export/tcae-b --data builtin:digits --budget tiny
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tcae.cli._common import add_command, add_no_progress, out_dir_arg

# tcae.studies.paper's PAPER and SCALES keys, spelt here so that building the parser does not import torch
EXPERIMENTS = ("stc-ssl", "ssl-method", "channels", "token-scaling", "ssl-causes", "stc-causes", "dcae")
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
        given = [flag for flag, on in (("--seeds", args.seeds != 1), ("--only", args.only is not None),
                                       ("--report-only", args.report_only), ("--no-wait", args.no_wait),
                                       ("--judge-weights", args.judge_weights is not None)) if on]
        if given:
            raise ValueError(f"repro curves does not take {', '.join(given)} (seed 0, every budget, workers wait)")
        print(f"report: {run_curves(args.scale, args.data, args.out, args.cells)}")
        return 0
    from tcae.studies.experiments import run_experiment

    only = [c.strip() for c in args.only.split(";")] if args.only is not None else None
    if only is not None and not all(only):
        raise ValueError(f"--only {args.only!r}: an empty cell name (cells are separated by ';')")

    report = run_experiment(args.experiment, args.scale, args.out, args.data, args.seeds, args.eval_split,
                            args.cells, report_only=args.report_only, only=only, wait=not args.no_wait,
                            judge_weights=args.judge_weights)
    print(f"report: {report}")
    return 0


def _score(args: argparse.Namespace) -> int:
    import torch

    from tcae.studies.score import score_models

    # the tiny budget's operations are small (a DiT over 2x2 latents): on a CPU shared with other work, torch's
    # one-thread-per-core default spends most of its time synchronising threads (measured: 112 s vs 25 s per
    # tokenizer on builtin:digits on a busy 2-core machine), so one thread unless --threads says otherwise
    threads = args.threads or (1 if args.budget == "tiny" and not torch.cuda.is_available() else None)
    if threads:
        torch.set_num_threads(threads)
    names = args.names.split(",") if args.names else None
    payload = score_models(args.model, args.data, args.budget, args.out, names=names, image_size=args.image_size,
                           dit_steps=args.dit_steps, progress=not args.no_progress,
                           feature_network=args.feature_network, feature_weights=args.feature_weights,
                           inception_weights=args.inception_weights)
    print(payload["markdown"])
    out = Path(payload["out"])
    print(f"wrote {out / 'score.json'} and {out / 'score.md'}")
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
                        "reported if finished, else listed as missing. With --report-only: report only these "
                        "cells, naming the others as left out")
    p.add_argument("--no-wait", action="store_true",
                   help="leave a (cell, seed) another process is computing to it (listed as missing) instead "
                        "of waiting for it at the end")
    p.add_argument("--judge-weights", default=None, metavar="PATH",
                   help="the data's judge from this file instead of the one trained on this machine (judges "
                        "trained on two machines differ: to compare with published FD-fashion numbers, use the "
                        "judge that measured them, e.g. docs/evidence-fashion/judge/)")
    add_no_progress(p)

    p = add_command(sub, "score", _score, "generation-proxy score of tokenizers: recon + probes + a budget DiT's gFID",
                    description="For each --model (a tcae model or diffusers:PATH_OR_HUB_ID): PSNR/SSIM (LPIPS, rFID "
                                "with their weights), the latent probes (A1, A2, structural loss; labelled data), "
                                "then its latents cached, a DiT of the budget's size trained for the budget's steps, "
                                "samples drawn (class-balanced on labelled data, unconditional on an unlabelled "
                                "folder) and judged: gFID/IS with the Inception weights, FD in --feature-network's "
                                "features, FD-digits / FD-fashion on the built-ins. "
                                "One JSON and one Markdown row per tokenizer, the budget named in every generation "
                                "figure. The same code path as tcae repro; resumable per tokenizer.")
    p.add_argument("--model", action="append", required=True, metavar="MODEL",
                   help="tokenizer: tcae model or run directory, Hub repo id or diffusers:PATH_OR_HUB_ID; repeat "
                        "for one table")
    p.add_argument("--names", default=None, help="comma-separated names for the table rows")
    p.add_argument("--data", default=None, help="data spec (default: the budget's, builtin:digits for tiny; "
                                               "builtin:fashion gets the fashion tiny scale); a folder with a "
                                               "sub-folder per class, or unlabelled (an unconditional DiT)")
    p.add_argument("--budget", default="tiny", choices=("tiny", "small", "base"),
                   help="tiny: dit-tiny, 1500 steps, 30 samples per class, 32 px (CPU minutes); small / base: GPU")
    p.add_argument("--image-size", type=int, default=None,
                   help="image size (default: the budget's); changes the budget's name, e.g. tiny[image_size=64]")
    p.add_argument("--dit-steps", type=int, default=None,
                   help="DiT steps (default: the budget's); changes the budget's name, e.g. tiny[dit_steps=200]")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: 1 for the tiny budget on a CPU, whose small operations run slower "
                        "on several threads of a busy machine; torch's choice otherwise)")
    p.add_argument("--inception-weights", default=None, metavar="PATH",
                   help="InceptionV3 file weights-inception-2015-12-05-6726825d.pth for gFID / IS (default: torch "
                        "hub cache, used when present)")
    p.add_argument("--feature-network", default=None, metavar="NAME",
                   help="also an FD of the samples in this network's features (never called FID): dinov2, "
                        "dinov2:<timm name>, torchvision:<name> (e.g. torchvision:resnet50), judge:fashion")
    p.add_argument("--feature-weights", default=None, metavar="PATH",
                   help="weights file of --feature-network (default: its library's cache location)")
    out_dir_arg(p, required=False, what="output directory (default out/score-BUDGET): score.json, score.md, a "
                                        "folder per tokenizer")
    add_no_progress(p)
