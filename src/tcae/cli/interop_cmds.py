"""`tcae export-diffusers` (a TC-AE as a diffusers model folder), `tcae fid-ref` (reference statistics by
the pinned FID protocol, docs/fid-protocol.md) and `tcae score` (the generation-proxy score of any tokenizer).

    tcae export-diffusers --model runs/b/model --out export/tcae-b
    tcae fid-ref --data /data/imagenet/train --image-size 256 --out ref/imagenet256.npz
    tcae score --model diffusers:export/tcae-b --data builtin:digits --budget tiny
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _export_diffusers(args: argparse.Namespace) -> int:
    from tcae.integrations.diffusers import export_diffusers
    from tcae.models import TCAE

    model = TCAE.from_pretrained(args.model)
    out = export_diffusers(model, args.out)
    config = json.loads((out / "config.json").read_text())
    print(f"wrote {out} ({config['_class_name']}: config.json, diffusion_pytorch_model.safetensors); load it with\n"
          f"  from tcae.integrations.diffusers import TCAEAutoencoder\n"
          f"  vae = TCAEAutoencoder.from_pretrained({str(out)!r})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-diffusers", help="write a TC-AE as a diffusers model folder (TCAEAutoencoder)",
                       description="Write a tcae model as a diffusers ModelMixin folder: config.json (_class_name "
                                   "TCAEAutoencoder, the TCAEConfig fields, scaling_factor, latents_mean, "
                                   "latents_std) and diffusion_pytorch_model.safetensors. Load it with "
                                   "tcae.integrations.diffusers.TCAEAutoencoder.from_pretrained (diffusers' loader) "
                                   "or use it in tcae's tools as --model diffusers:DIR.")
    p.add_argument("--model", required=True, help="tcae model directory, training run directory or Hub repo id")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_export_diffusers)
