"""`tcae models`: the presets with their latent shapes, parameter counts and FLOPs."""

from __future__ import annotations

import argparse
import json

from tcae.cli._common import add_command, add_no_progress


def models_table(names: list[str], image_size: int | None = None, overrides: dict | None = None) -> list[dict]:
    """One row per preset: latent shape, parameters, encode/decode GFLOPs at `image_size`."""
    from tcae.models import create_model, flops

    rows = []
    for name in names:
        m = create_model(name, **(overrides or {}))
        size = image_size or m.config.image_size
        fl = flops(m, size)
        c, h, w = m.latent_shape(size, size)
        rows.append({"model": name, "image_size": size, "staged": m.config.staged,
                     "patch_size": m.config.patch_size, "tokens": (size // m.config.patch_size) ** 2,
                     "latent": f"{c}x{h}x{w}", "params_M": round(sum(p.numel() for p in m.parameters()) / 1e6, 2),
                     **{k: round(v, 3) for k, v in fl.as_dict().items()}})
    return rows


def format_markdown(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from tcae.models import list_models

    names = args.names or list_models()
    rows = []
    for staged in ([True, False] if args.both else [None]):
        over = {} if staged is None else {"staged": staged}
        rows += models_table(names, args.image_size, over)
    print(json.dumps(rows, indent=2) if args.json else format_markdown(rows))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "models", _run, "list TC-AE presets: latent shape, parameters, FLOPs (1 MAC = 2 FLOPs)")
    p.add_argument("names", nargs="*", help="presets (default: all)")
    p.add_argument("--image-size", type=int, default=None, help="default: each preset's own")
    p.add_argument("--both", action="store_true", help="also list the single-stage (staged=false) baseline")
    p.add_argument("--json", action="store_true")
    add_no_progress(p, "progress output (this command shows none)")
