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
    from tcae.cli._common import add_command, add_device, add_no_progress, out_dir_arg

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
