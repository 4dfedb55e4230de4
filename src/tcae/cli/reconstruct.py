"""`tcae reconstruct`, `tcae encode`, `tcae decode`: a tokenizer on image files of any size (the work
lives in tcae.inference).

    tcae reconstruct --model runs/b/model --data photos/ --out rec/          # rec/**/NAME.png, original sizes
    tcae encode --model runs/b/model --data photos/ --out latents/           # latents/**/NAME.safetensors
    tcae decode --model runs/b/model --latents latents/ --out decoded/       # decoded/**/NAME.png
    tcae reconstruct --model runs/b/model --data big/ --out rec/ --tile auto # large images in tiles
"""

from __future__ import annotations

import argparse

from tcae.cli._common import add_command, add_device, add_no_progress, model_arg, out_dir_arg

DATA_HELP = ("an image folder (recursive; sub-folders are kept in --out; FOLDER:train / FOLDER:val pick a split), "
             "one image file, or built-in data (builtin:digits:val, at --image-size)")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _tiled(summary: dict) -> str:
    return f"; {summary['tiled']} in tiles" if summary.get("tiled") else ""


def _tile(text: str):
    """argparse type of --tile: a bad value is a usage error naming the accepted forms."""
    from tcae.inference import parse_tile

    try:
        return parse_tile(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


TILE_HELP = ("auto: images larger than the model's training size go through in tiles of that size (bounded "
             "memory and time; a ViT sees only its tile, so seams can show); N: tiles of N pixels (a multiple of "
             "f); none: whole images")


def _sources_and_model(args: argparse.Namespace):
    """(images, model, device): the data is checked before the model is loaded."""
    from tcae.device import resolve_device
    from tcae.inference import list_images
    from tcae.tokenizers import load_tokenizer

    builtin = args.data.startswith("builtin:")
    sources = None if builtin else list_images(args.data, max_images=args.max_images)
    device = resolve_device(args.device)
    model = load_tokenizer(args.model, device)
    if builtin:
        size = args.image_size or model.config.image_size
        model.check_image_size(size)
        sources = list_images(args.data, image_size=size, max_images=args.max_images)
    return sources, model, device


def _reconstruct(args: argparse.Namespace) -> int:
    from tcae.inference import reconstruct_images

    sources, model, device = _sources_and_model(args)
    summary = reconstruct_images(model, sources, args.out, batch_size=args.batch_size, pad=args.pad, device=device,
                                 progress=not args.no_progress, tile=args.tile)
    print(f"wrote {_count(summary['images'], 'reconstruction')} (PNG, original sizes{_tiled(summary)}) to "
          f"{summary['out']}")
    return 0


def _encode(args: argparse.Namespace) -> int:
    from tcae.inference import encode_images

    sources, model, device = _sources_and_model(args)
    summary = encode_images(model, sources, args.out, model_id=args.model, batch_size=args.batch_size, pad=args.pad,
                            device=device, progress=not args.no_progress, tile=args.tile)
    stats = "with" if model.has_latent_stats else "without (not measured)"
    print(f"wrote {_count(summary['images'], 'latent')} (.safetensors, {stats} the model's latent "
          f"statistics{_tiled(summary)}) to {summary['out']}")
    return 0


def _decode(args: argparse.Namespace) -> int:
    from tcae.device import resolve_device
    from tcae.inference import decode_latents, list_latents
    from tcae.tokenizers import load_tokenizer

    files = list_latents(args.latents)  # checked before the model is loaded
    device = resolve_device(args.device)
    model = load_tokenizer(args.model, device)
    summary = decode_latents(model, files, args.out, batch_size=args.batch_size, device=device,
                             progress=not args.no_progress, tile=args.tile)
    print(f"wrote {_count(summary['images'], 'image')} (PNG, original sizes{_tiled(summary)}) to {summary['out']}")
    return 0


def _image_inputs(p: argparse.ArgumentParser) -> None:
    model_arg(p)
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--pad", choices=("reflect", "edge"), default="reflect",
                   help="how images are padded (bottom, right) to a multiple of f before encoding (default: reflect)")
    p.add_argument("--image-size", type=int, default=None, help="built-in data only (default: the model's)")
    p.add_argument("--max-images", type=int, default=None, help="the first N images (sorted by name) only")
    p.add_argument("--tile", type=_tile, default=None, metavar="auto|none|N", help=TILE_HELP + " (default: none)")


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=16, help="images of the same size encoded together")
    add_device(p)
    add_no_progress(p)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "reconstruct", _reconstruct, "encode and decode images of any size: PNGs, names kept",
                    description="Reconstruct every image with a tokenizer: padded to a multiple of f, encoded, "
                                "decoded and cropped back; written to --out as PNG with the same relative path "
                                "(suffix .png) and size.")
    _image_inputs(p)
    out_dir_arg(p, what="output directory (DIR/NAME.png)")
    _run_options(p)

    p = add_command(sub, "encode", _encode, "encode images of any size to .safetensors latents",
                    description="Encode every image to DIR/NAME.safetensors: tensor 'latent' (c, h, w) float32, the "
                                "raw latent, with the original file name and size, the padding and the model's "
                                "per-channel latent statistics in its metadata (tcae decode reads them).")
    _image_inputs(p)
    out_dir_arg(p, what="output directory (DIR/NAME.safetensors)")
    _run_options(p)

    p = add_command(sub, "decode", _decode, "decode .safetensors latents (from tcae encode) back to PNGs",
                    description="Decode every latent file written by `tcae encode` under --latents to "
                                "DIR/NAME.png at the original image's size.")
    model_arg(p)
    p.add_argument("--latents", required=True, metavar="DIR", help="directory written by tcae encode")
    p.add_argument("--tile", type=_tile, default=False, metavar="auto|none|N",
                   help=TILE_HELP + " (default: the tiling each latent was encoded with, so encode + decode = "
                        "reconstruct)")
    out_dir_arg(p, what="output directory (DIR/NAME.png)")
    _run_options(p)
