"""A tokenizer out of tcae: `tcae push` (with its model card to the Hugging Face Hub, or with --dry-run into a
folder; the work lives in tcae.hub) and `tcae export-diffusers` (a TC-AE as a diffusers model folder).

    tcae export-diffusers --model runs/b/model --out export/tcae-b
"""

from __future__ import annotations

import argparse
import json

from tcae.cli._common import add_command, add_no_progress, model_arg, out_dir_arg


def _push(args: argparse.Namespace) -> int:
    from tcae.hub import metrics_card_info, push_model

    if args.dry_run and not args.out:
        raise ValueError("--dry-run writes the upload into --out DIR; give one")
    info = metrics_card_info(args.eval_json) if args.eval_json else {}
    if args.name:
        info["name"] = args.name
    if args.license:
        info["license"] = args.license
    result = push_model(args.model, args.repo, card_info=info, dry_run_dir=args.out if args.dry_run else None,
                        private=args.private)
    listing = "\n".join(f"  {name}  ({size} bytes)" for name, size in result["files"].items())
    if result["dry_run"]:
        print(f"dry run: would upload to {result['repo_id']}; the files are in {result['out']}:\n{listing}")
    else:
        print(f"uploaded to {result['repo_id']} ({result['url']}):\n{listing}")
    return 0


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
    p = add_command(sub, "push", _push, "upload a tokenizer and its model card to the Hugging Face Hub",
                    description="Load the tokenizer (a bad checkpoint fails before any upload), save it with its "
                                "model card (README.md: what it is, the paper, license, latent shape, training "
                                "data and steps, metrics, usage) and upload that folder. --dry-run writes exactly "
                                "those files into --out instead. Log in first (huggingface-cli login or HF_TOKEN).")
    model_arg(p)
    p.add_argument("--repo", required=True, metavar="ORG/NAME", help="Hub repo id (created if it does not exist)")
    p.add_argument("--eval-json", default=None, metavar="FILE",
                   help="metrics for the card: the eval.json `tcae eval --out DIR` wrote")
    p.add_argument("--name", default=None, help="display name in the card (default: the repo name)")
    p.add_argument("--license", default=None, help="license id of the weights (default: the card's, or apache-2.0)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--dry-run", action="store_true", help="upload nothing: write the files into --out")
    out_dir_arg(p, required=False, what="with --dry-run: where the files go (must be empty or new)")
    add_no_progress(p, "progress output")

    p = add_command(sub, "export-diffusers", _export_diffusers,
                    "write a TC-AE as a diffusers model folder (TCAEAutoencoder)",
                    description="Write a tcae model as a diffusers ModelMixin folder: config.json (_class_name "
                                "TCAEAutoencoder, the TCAEConfig fields, scaling_factor, latents_mean, latents_std) "
                                "and diffusion_pytorch_model.safetensors. Load it with "
                                "tcae.integrations.diffusers.TCAEAutoencoder.from_pretrained (diffusers' loader) or "
                                "use it in tcae's tools as --model diffusers:DIR.")
    p.add_argument("--model", required=True, metavar="MODEL",
                   help="tcae model directory, training run directory or Hub repo id")
    out_dir_arg(p, what="output folder (diffusers layout)")
    add_no_progress(p)
