"""The evaluation commands: `tcae eval` (reconstruction metrics of one or several models), `tcae diagnose`
(latent diagnostics), `tcae eval-gen` (gFID / IS of a samples.npz, or an FD in another network) and
`tcae fid-ref` (reference statistics by the pinned FID protocol, docs/fid-protocol.md).

Missing pretrained weights (InceptionV3 for rFID, VGG16 for LPIPS) raise a FileNotFoundError whose
message names the file and where it goes; `tcae.cli.main` prints it without a traceback and exits
with code 2. `--metrics psnr,ssim` needs no pretrained weights at all. Under `torchrun`, `tcae eval`
splits the images between ranks and rank 0 prints and writes.

    tcae eval-gen --samples samples/samples.npz --ref VIRTUAL_imagenet256_labeled.npz --out eval-gen/
    tcae fid-ref --data /data/imagenet/train --image-size 256 --out ref/imagenet256.npz
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from tcae.cli._common import DEVICE_HELP, add_command, add_device, add_no_progress, model_arg, out_dir_arg


def _model_name(model_dir: str) -> str:
    """A short name for a model directory: its folder name, or the run's name for RUN/model."""
    p = Path(model_dir.rstrip("/"))
    return p.parent.name if p.name == "model" and p.parent.name else p.name


def _feature_weights(args: argparse.Namespace) -> dict[str, str]:
    weights: dict[str, str] = {}
    for item in args.feature_weights or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--feature-weights expects NETWORK=PATH (e.g. dinov2=/w/model.safetensors), got {item!r}")
        weights[name] = path
    if args.inception_weights:
        weights["inception"] = args.inception_weights
    return weights


def _grid_path(out: Path | None, name: str, several: bool) -> str | None:
    """OUT/grid.png (OUT/grid_NAME.png with several models); None without --out."""
    if out is None:
        return None
    return str(out / (f"grid_{name}.png" if several else "grid.png"))


def _run_eval(args: argparse.Namespace) -> int:
    from tcae.dist import cleanup, init_distributed
    from tcae.evaluation import Evaluator, compare, format_table, parse_metrics, results_to_json
    from tcae.tokenizers import load_tokenizer

    metrics = parse_metrics(args.metrics)
    names = args.names.split(",") if args.names else [_model_name(m) for m in args.model]
    if len(names) != len(args.model):
        raise ValueError(f"--names has {len(names)} entries for {len(args.model)} --model(s)")
    if len(set(names)) != len(names):
        raise ValueError(f"model names {names} are not unique; pass --names a,b,...")
    weights = _feature_weights(args)
    out = Path(args.out) if args.out else None
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    info = init_distributed(args.device or "auto") if distributed else None
    device = info.device if info else args.device
    main = info is None or info.is_main
    results = []
    try:
        # one evaluator for every model: the originals' feature statistics are computed once
        evaluator = Evaluator(args.data, image_size=args.image_size, metrics=metrics, batch_size=args.batch_size,
                              device=device, fid_stats=args.fid_stats, feature_weights=weights,
                              max_images=args.max_images, num_workers=args.num_workers,
                              lpips_weights=args.lpips_weights, autocast=args.bf16, progress=not args.no_progress)
        for model_dir, name in zip(args.model, names):
            model = load_tokenizer(model_dir)
            result = evaluator.run(model, name, None if args.no_grid else _grid_path(out, name, len(args.model) > 1),
                                   args.save_fid_stats)
            result["model"]["dir"] = str(model_dir)
            results.append(result)
            if main:
                print(format_table(result))
                print()
    finally:
        if distributed:
            cleanup()
    if not main:
        return 0
    if out is not None:
        results_to_json(results, out / "eval.json")  # {"results": [...]}, one entry per model, one model or more
        print(f"wrote {out / 'eval.json'}")
    if len(results) > 1:
        paths = (out / "comparison.md", out / "comparison.png") if out is not None else (None, None)
        print(compare(results, names, *paths))
        for path in paths:
            if path is not None:
                print(f"wrote {path}")
    return 0


def format_diagnostics(result: dict) -> str:
    """A short plain-text summary of a :func:`tcae.evaluation.diagnose` result."""
    s = result["latent_stats"]
    c, h, w = result["latent_shape"]
    lines = [
        f"latent diagnostics on {result['data']} ({result['num_images']} images, latent {c}x{h}x{w})",
        f"  latent channel mean: spread {s['mean_spread']:.4f}, max |mean| {s['mean_abs_max']:.4f}",
        f"  latent channel std:  spread {s['std_spread']:.4f}, min {s['std_min']:.4f}, max {s['std_max']:.4f}",
        f"  effective rank latents: {result['effective_rank_latents']:.2f} (of dim {result['latent_dim']})",
    ]
    tokens = "effective_rank_tokens" in result  # a model with encoder tokens (not a conv autoencoder)
    lines.append(f"  effective rank tokens:  {result['effective_rank_tokens']:.2f} (of dim {result['token_dim']})"
                 if tokens else "  effective rank tokens:  n/a (the model has no encoder tokens)")
    if "probe_acc_latents" in result:
        p = result["probe"]
        lines += [
            f"  linear probe ({p['num_classes']} classes, chance {p['chance']:.3f}; {p['split']}, "
            f"{p['train_images']} train / {p['val_images']} val images)",
            f"    A1 on pooled encoder tokens: {result['probe_acc_tokens']:.4f}" if tokens else
            "    A1 on pooled encoder tokens: n/a (no encoder tokens)",
            f"    A2 on latents:               {result['probe_acc_latents']:.4f}",
            f"    structural loss 1 - A2/A1:   {result['structural_loss']:.4f}" if tokens else
            "    structural loss 1 - A2/A1:   n/a",
        ]
    else:
        lines.append("  linear probe: skipped (unlabelled data, or --no-probe)")
    if "latent_stats_written_to" in result:
        lines.append(f"  latent statistics written into {result['latent_stats_written_to']}")
    return "\n".join(lines)


def _run_diagnose(args: argparse.Namespace) -> int:
    from tcae.evaluation import diagnose, results_to_json
    from tcae.models.checkpoint_io import resolve_run_dir
    from tcae.tokenizers import is_diffusers_spec, load_tokenizer

    if args.write_stats and is_diffusers_spec(args.model):
        raise ValueError(f"--write-stats writes into a tcae model directory; {args.model} is a diffusers model, "
                         "whose latent scaling lives in its config.json")
    model_dir = resolve_run_dir(args.model)  # --write-stats rewrites the model itself, not the run directory
    model = load_tokenizer(model_dir)
    result = diagnose(model, args.data, image_size=args.image_size, batch_size=args.batch_size,
                      device=args.device, max_images=args.max_images, num_workers=args.num_workers,
                      probe=not args.no_probe, write_stats_to=model_dir if args.write_stats else None,
                      progress=not args.no_progress)
    result["model"] = {"dir": str(args.model), "config": model.config.to_dict()}
    print(format_diagnostics(result))
    if args.out:
        path = Path(args.out) / "diagnostics.json"
        results_to_json(result, path)
        print(f"wrote {path}")
    return 0


def _common(p: argparse.ArgumentParser, out_files: str) -> None:
    p.add_argument("--data", required=True, help="data spec (builtin:photos, builtin:digits, a folder, shards); "
                   "its val split unless the spec names one")
    p.add_argument("--image-size", type=int, default=None, help="default: the model's config.image_size")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    out_dir_arg(p, required=False, what=f"output directory: {out_files} (default: print only)")
    add_no_progress(p)


def _eval_gen(args: argparse.Namespace) -> int:
    from tcae.device import resolve_device
    from tcae.evaluation.gen_eval import evaluate_samples

    network = args.feature_network
    if args.inception_weights and network != "inception":
        raise ValueError(f"--inception-weights is for the inception network; pass --feature-weights for {network}")
    result = evaluate_samples(args.samples, args.ref, image_size=args.image_size, feature_network=network,
                              inception_weights=args.inception_weights or args.feature_weights,
                              batch_size=args.batch_size,
                              device=resolve_device(args.device), max_reference=args.max_ref,
                              progress=not args.no_progress, allow_unbalanced=args.allow_unbalanced)
    text = json.dumps(result, indent=2)
    print(text)
    print(result["summary"])  # the numbers with the sample count and the reference they belong to
    if args.out:
        path = Path(args.out) / "eval_gen.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    return 0


def _fid_ref(args: argparse.Namespace) -> int:
    from tcae.evaluation.fid_protocol import PROTOCOL, load_reference, reference_statistics, save_reference

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; --out is a directory (fid_stats.npz and fid_stats.pt go in it)")
    batch = out / "reference_batch.npz" if args.images else None
    mu, sigma, count = reference_statistics(args.data, args.image_size, weights=args.inception_weights,
                                            batch_size=args.batch_size, device=args.device,
                                            max_images=args.max_images, images_out=batch,
                                            progress=not args.no_progress)
    meta = {"data": args.data, "image_size": args.image_size, "feature_network": "inception-v3-compat"}
    npz = save_reference(out / "fid_stats.npz", mu, sigma, count, **meta)
    pt = save_reference(out / "fid_stats.pt", mu, sigma, count)
    print(f"wrote {npz}: {load_reference(npz).describe()}; {PROTOCOL}")
    print(f"wrote {pt}: the same statistics in torch-fidelity's layout")
    if batch is not None:
        print(f"wrote {batch}: the {count} uint8 crops as an ADM reference batch (arr_0, arr_1)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `eval` and `diagnose` sub-commands to the `tcae` parser."""
    p = add_command(
        sub, "eval", _run_eval, "reconstruction metrics (PSNR, SSIM, LPIPS, rFID) of one or several tokenizers",
        description="Encode and decode every image of a dataset and report PSNR, SSIM, LPIPS and rFID "
        "(Fréchet distance of InceptionV3 statistics, originals vs reconstructions, or vs --fid-stats). "
        "Several --model give a side-by-side Markdown table and bar plot.")
    model_arg(p, action="append", help="tokenizer: model directory (save_pretrained), training run directory, Hub "
              "repo id or diffusers:PATH_OR_HUB_ID (AutoencoderKL, AutoencoderDC, a tcae export-diffusers folder); "
              "repeat for a comparison")
    p.add_argument("--names", default=None, help="comma-separated display names for the models")
    _common(p, "eval.json, grid.png (originals, reconstructions, latent view; grid_NAME.png per model) and with "
               "several models comparison.md and comparison.png")
    p.add_argument("--metrics", default="psnr,ssim,lpips,rfid",
                   help="comma-separated: psnr, ssim, lpips, rfid, fd:dinov2, fd:torchvision:NAME "
                   "(psnr,ssim need no pretrained weights)")
    p.add_argument("--fid-stats", default=None, metavar="FILE.npz",
                   help="reference InceptionV3 statistics (ADM/clean-fid .npz with mu, sigma): rFID of the "
                   "reconstructions against them")
    p.add_argument("--save-fid-stats", default=None, metavar="FILE.npz",
                   help="also write the originals' InceptionV3 statistics (a reference for later runs)")
    p.add_argument("--inception-weights", default=None, metavar="PATH",
                   help="InceptionV3 file weights-inception-2015-12-05-6726825d.pth (default: torch hub cache)")
    p.add_argument("--lpips-weights", default=None, metavar="PATH",
                   help="VGG16 weights file for LPIPS (default: torch hub cache)")
    p.add_argument("--feature-weights", action="append", default=None, metavar="NETWORK=PATH",
                   help="weights of an fd: network, e.g. dinov2=model.safetensors, torchvision:resnet50=r50.pth")
    p.add_argument("--max-images", type=int, default=None, help="evaluate the first N images only")
    p.add_argument("--no-grid", action="store_true", help="no grid.png in --out")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the tokenizer")

    d = add_command(
        sub, "diagnose", _run_diagnose, "latent diagnostics: channel stats, effective ranks, linear probes (A1, A2)",
        description="Per-channel latent mean/std, effective rank of latents and encoder tokens, and on "
        "labelled data linear-probe accuracy on pooled tokens (A1) and latents (A2) with the structural "
        "loss 1 - A2/A1. --write-stats stores the latent statistics in the model for diffusion training.")
    model_arg(d)
    _common(d, "diagnostics.json")
    d.add_argument("--max-images", type=int, default=2000, help="images per split (default 2000)")
    d.add_argument("--no-probe", action="store_true", help="skip the linear probes")
    d.add_argument("--write-stats", action="store_true",
                   help="store the per-channel latent mean/std (measured on --data as given: name the "
                   "training split, e.g. builtin:digits:train) in the model directory's weights")
    d.set_defaults(batch_size=64)

    p = add_command(sub, "eval-gen", _eval_gen, "gFID and Inception Score of a samples.npz (or FD in another network)",
                    description="gFID (InceptionV3, torch-fidelity's TF-FID port) and IS of an ADM-layout "
                                "samples .npz against reference statistics (.npz with mu/sigma, e.g. ADM's "
                                "VIRTUAL_imagenet256_labeled.npz read as is, tcae fid-ref's, or a torch-fidelity "
                                ".pt), reference images (.npz arr_0) or a data spec (ADM center crop). Labelled "
                                "samples must be class-balanced; every number names the sample count and "
                                "reference (docs/fid-protocol.md). --feature-network picks another network: a "
                                "Fréchet distance in its features (never called FID); a judge (judge:fashion, "
                                "judge:digits) also reports the class agreement of labelled samples.")
    p.add_argument("--samples", required=True, help="samples .npz (arr_0 uint8 (N, H, W, 3))")
    p.add_argument("--ref", required=True, help="reference .npz (mu/sigma or arr_0), torch-fidelity .pt or data spec")
    p.add_argument("--image-size", type=int, default=None, help="reference image size (default: the samples')")
    p.add_argument("--inception-weights", default=None, help="InceptionV3 weights file (default: torch hub cache)")
    p.add_argument("--feature-network", default="inception",
                   help="inception (gFID, IS), dinov2[:NAME], torchvision:NAME, judge:fashion[@DIR], judge:digits")
    p.add_argument("--feature-weights", default=None,
                   help="weights file of --feature-network (default: its cache location; judges: trained once)")
    p.add_argument("--max-ref", type=int, default=None, help="use the first N reference images only")
    p.add_argument("--allow-unbalanced", action="store_true",
                   help="evaluate labelled samples whose classes are not equally represented (not the protocol)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    out_dir_arg(p, required=False, what="also write the result as DIR/eval_gen.json")
    add_no_progress(p)

    p = add_command(sub, "fid-ref", _fid_ref, "reference InceptionV3 statistics by the pinned FID protocol (ADM crop)",
                    description="Reference statistics the ADM way (docs/fid-protocol.md): each image BOX-halved "
                                "while its short side is >= 2 S, BICUBIC-resized to short side S, center-cropped to "
                                "S x S, as uint8; InceptionV3 (torch-fidelity's TF-FID port) pool features. Writes "
                                "DIR/fid_stats.npz (ADM / clean-fid layout: mu, sigma, + num_images, protocol) and "
                                "DIR/fid_stats.pt (torch-fidelity's layout).")
    p.add_argument("--data", required=True, help="data spec (its val split unless it names one, e.g. DIR:train)")
    p.add_argument("--image-size", type=int, required=True, help="S: side of the reference images")
    out_dir_arg(p, what="output directory: fid_stats.npz, fid_stats.pt (and reference_batch.npz with --images)")
    p.add_argument("--images", action="store_true",
                   help="also write the crops as an ADM reference batch, DIR/reference_batch.npz (arr_0, arr_1): "
                        "what ADM's own evaluator reads")
    p.add_argument("--max-images", type=int, default=None, help="the first N images only")
    p.add_argument("--inception-weights", default=None, help="InceptionV3 weights file (default: torch hub cache)")
    p.add_argument("--batch-size", type=int, default=100)
    add_device(p)
    add_no_progress(p)
