"""`tcae cache-latents`, `tcae sample`: the latent diffusion side of the project (`tcae train-dit` is with the
other training commands, `tcae eval-gen` with the evaluation commands).

    tcae cache-latents --model runs/b/model --data /data/imagenet --flip --out latents/b
    tcae train-dit dit-b latents=latents/b
    tcae sample --dit runs/dit-b/model --model runs/b/model --num 50000 --cfg 1.5 --out samples/
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

from tcae.cli._common import DEVICE_HELP, add_command, add_no_progress, model_arg, out_dir_arg

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


def _interval(text: str) -> tuple[float, float]:
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected 'lo,hi' (two noise levels in [0, 1]), got {text!r}")
    lo, hi = float(parts[0]), float(parts[1])
    if not 0.0 <= lo <= hi <= 1.0:
        raise argparse.ArgumentTypeError(f"need 0 <= lo <= hi <= 1, got {text!r}")
    return lo, hi


# ---------------------------------------------------------------------- cache-latents
def _cache_latents(args: argparse.Namespace) -> int:
    from tcae.data import build_dataset
    from tcae.device import resolve_device
    from tcae.diffusion.latents import cache_latents, tokenizer_source
    from tcae.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(args.model)
    size = args.image_size or tokenizer.config.image_size
    tokenizer.check_image_size(size)  # before anything is written to --out
    dataset = build_dataset(args.data, size, train=False)
    summary = cache_latents(
        tokenizer, dataset, args.out, batch_size=args.batch_size, flip=args.flip, shard_size=args.shard_size,
        device=resolve_device(args.device), num_workers=args.num_workers, progress=not args.no_progress,
        data_spec=args.data, image_size=size, tokenizer_path=tokenizer_source(args.model))
    print(_cache_summary(summary))
    return 0


def _cache_summary(summary: dict) -> str:
    """What cache-latents wrote, in words: latents, shape, classes, shards, where."""
    c, h, w = summary["latent_shape"]
    n, rows = summary["num_samples"], summary["num_latents"]
    flipped = f" ({rows - n} of them of flipped images)" if rows != n else ""
    names = summary.get("class_names") or []
    shown = ", ".join(names[:10]) + (f", ... ({len(names) - 10} more)" if len(names) > 10 else "")
    classes = (f"{summary['num_classes']} classes ({shown})" if names
               else f"{summary['num_classes']} classes" if summary["num_classes"] else "unlabelled")
    shards = f"{summary['num_shards']} shard{'s' if summary['num_shards'] != 1 else ''}"
    resumed = f", {summary['resumed_shards']} already there" if summary["resumed_shards"] else ""
    return (f"cached {rows} latents of {n} images{flipped}, each {c}x{h}x{w} (raw tokenizer output), {classes}, "
            f"in {shards}{resumed} under {summary['out_dir']} (meta.json: per-channel statistics; "
            f"next: tcae train-dit PRESET latents={summary['out_dir']})")


# ---------------------------------------------------------------------- sample
def _grid_layout(labels: torch.Tensor, num: int, classes: list[int] | None, grid_rows: int | None
                 ) -> tuple[list[int], int]:
    """(sample indices shown in grid.png, images per row).

    With classes: one row per class (first 32 classes), its first 16 samples. Without: the first 64
    samples in `grid_rows` rows (default: about square).
    """
    if classes:
        cols = min(num, 16)
        return [r * num + j for r in range(min(len(classes), 32)) for j in range(cols)], cols
    n = min(len(labels), 64)
    rows = grid_rows or max(1, round(math.sqrt(n)))
    return list(range(n)), math.ceil(n / rows)


def _check_is_dit(given: str, model_dir: str) -> None:
    """A local --dit whose config.json is a tokenizer's is named as one (instead of a list of unknown DiT keys)."""
    config = Path(model_dir) / "config.json"
    if not config.is_file():
        return
    try:
        raw = json.loads(config.read_text())
    except ValueError:
        return  # DiT.from_pretrained names the unreadable file
    raw = raw.get("config", raw) if isinstance(raw, dict) else {}
    if "hidden_size" not in raw and {"latent_channels", "compression"} <= set(raw):
        raise ValueError(f"--dit {given} is a tokenizer run, not a DiT; pass it as --model (and the train-dit run "
                         "as --dit)")


def _sample(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image
    from torchvision.utils import save_image

    from tcae.device import resolve_device
    from tcae.diffusion.dit import DiT
    from tcae.diffusion.generate import class_ids, class_labels, generate_images, load_latent_stats
    from tcae.evaluation.npz import NpzSampleWriter
    from tcae.models.checkpoint_io import resolve_run_dir
    from tcae.tokenizers import load_tokenizer
    from tcae.util import to_uint8_hwc

    device = resolve_device(args.device)
    dit_dir = resolve_run_dir(args.dit)
    _check_is_dit(args.dit, dit_dir)
    dit = DiT.from_pretrained(dit_dir).to(device).eval()
    tokenizer = load_tokenizer(args.model, device)
    mean, std, stats_source = load_latent_stats(dit, tokenizer)
    classes = class_ids(args.classes, dit.config.num_classes, dit.config.class_names) if args.classes else None
    labels = class_labels(args.num, dit.config.num_classes, classes)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.pngs:
        (out / "samples").mkdir(exist_ok=True)
    grid_idx, grid_cols = _grid_layout(labels, args.num, classes, args.grid_rows)
    grid_pos = {i: j for j, i in enumerate(grid_idx)}
    grid: list[torch.Tensor | None] = [None] * len(grid_idx)
    writer = None

    from tqdm.auto import tqdm

    bar = tqdm(total=len(labels), unit="img", desc="sample", disable=True if args.no_progress else None)
    for start, images in generate_images(
        dit, tokenizer, labels, mean, std, steps=args.steps, sampler=args.sampler, cfg_scale=args.cfg,
        cfg_interval=args.cfg_interval, seed=args.seed, batch_size=args.batch_size, shift=args.shift,
        bf16=args.bf16,
    ):
        if writer is None:
            writer = NpzSampleWriter(out / "samples.npz", len(labels), images.shape[2], images.shape[3])
        u8 = to_uint8_hwc(images)
        writer.write(u8)
        for j in range(images.shape[0]):
            i = start + j
            if i in grid_pos:
                grid[grid_pos[i]] = images[j].cpu()
            if args.pngs:
                Image.fromarray(u8[j].numpy()).save(out / "samples" / f"{i:06d}.png")
        bar.update(images.shape[0])
    bar.close()
    writer.close(labels)
    save_image(torch.stack(grid) * 0.5 + 0.5, out / "grid.png", nrow=grid_cols, padding=2)
    info = {"dit": dit_dir, "tokenizer": args.model, "latent_stats": stats_source, "num_samples": len(labels),
            "classes": classes,
            "class_names": [dit.config.class_names[c] for c in classes] if classes and dit.config.class_names else None,
            "cfg": args.cfg, "cfg_interval": list(args.cfg_interval), "steps": args.steps,
            "sampler": args.sampler, "shift": args.shift, "seed": args.seed, "dit_config": dit.config.to_dict()}
    (out / "sample_config.json").write_text(json.dumps(info, indent=2))
    print(f"wrote {len(labels)} samples to {out / 'samples.npz'} and {out / 'grid.png'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "cache-latents", _cache_latents,
                    "encode a dataset into sharded latents (+ per-channel stats); resumable",
                    description="Encode a dataset with a TC-AE tokenizer into sharded safetensors of raw latents "
                                "and labels, with per-channel mean/std in meta.json (for `tcae train-dit`). "
                                "Rerunning with the same arguments resumes.")
    model_arg(p)
    p.add_argument("--data", required=True, help="data spec (builtin:digits, an image folder, shards; val split "
                                                 "unless the spec names one)")
    out_dir_arg(p, what="output directory (the latent cache)")
    p.add_argument("--image-size", type=int, default=None, help="default: the tokenizer's config image_size")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--flip", action="store_true", help="also cache each image's horizontal flip")
    p.add_argument("--shard-size", type=int, default=4096, help="dataset samples per shard")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--num-workers", type=int, default=0)
    add_no_progress(p)

    p = add_command(sub, "sample", _sample, "generate images with a DiT and a tokenizer (samples.npz + grid.png)",
                    description="Sample class-conditional latents with a flow-matching DiT, decode them with the "
                                "tokenizer, write samples.npz (ADM evaluator layout: arr_0 uint8 (N, H, W, 3), "
                                "arr_1 labels) and grid.png.")
    p.add_argument("--dit", required=True, metavar="DIT", help="DiT directory, train-dit run directory or Hub repo id")
    model_arg(p, help="the tokenizer that decodes the DiT's latents (model directory, run directory, Hub repo id or "
                      "diffusers:PATH_OR_HUB_ID)")
    p.add_argument("--num", type=int, required=True,
                   help="samples in total (labels cycle through all classes), or per class with --classes")
    p.add_argument("--classes", nargs="+", default=None,
                   help="class names or ids, e.g. cat,dog or 0,1,2 or 0 1 2 (names as the DiT records them: the "
                        "image folder's sub-folders, a built-in's classes): one grid row each")
    p.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance scale (1 = none)")
    p.add_argument("--cfg-interval", type=_interval, default=(0.0, 1.0),
                   help="'lo,hi': apply guidance only at noise levels t in [lo, hi] (t = 1 is noise)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--sampler", choices=("euler", "heun"), default="euler")
    p.add_argument("--shift", type=float, default=1.0,
                   help="timestep shift of the sampling time grid; the default 1.0 (none) matches training, "
                        "which uses no shift")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the DiT")
    out_dir_arg(p, what="output directory: samples.npz, grid.png, sample_config.json")
    p.add_argument("--grid-rows", type=int, default=None, help="rows of grid.png without --classes")
    p.add_argument("--pngs", action="store_true", help="also write each sample as samples/NNNNNN.png")
    add_no_progress(p)

