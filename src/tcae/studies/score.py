"""`tcae score`: a generation-proxy score for any tokenizer, on the repro harness's cell runner.

For each tokenizer (a tcae model or ``diffusers:PATH_OR_HUB_ID``): reconstruction metrics and latent
diagnostics on the evaluation split (PSNR, SSIM, LPIPS and rFID where their weights are present; A1,
A2, structural loss), its train latents cached, a DiT of the budget's size trained for the budget's
steps, ``per_class`` samples of every class drawn (no CFG) and judged: gFID / IS against the evaluation
split (ADM crop) where the Inception weights are present, and on built-in data by its judge
(``tcae.evaluation.judges``: FD-<data> in the judge's features, never called FID, and class agreement),
and by a named feature network where one is given (FD-<network>, labelled by the network).
One code path with ``tcae repro``: :func:`tcae.studies.cells.score_tokenizer`.

Your own folder: with a sub-folder per class, as above; without, an unconditional DiT (one class) and
``per_class`` unconditional samples, no probes (no labels). A folder without ``train/`` and ``val/``
sub-folders is evaluated on its own images, the ones the DiT trains on (score.md says so). The DiT's
batch shrinks to the largest power of two that fits a small cache.

A budget is a repro scale (:func:`tcae.studies.paper.resolve_scale`): ``tiny`` = dit-tiny, 1500 DiT steps, 30
samples per class at 32 px on ``builtin:digits`` (minutes on a CPU; on ``builtin:fashion`` the fashion
tiny scale); ``small`` / ``base`` are GPU budgets. Every generation figure is keyed and labelled with its
budget (``gfid@tiny``), and the JSON records the budget in full.

The score's DiT trains on latents normalised by the tokenizer's own latent statistics where it has them
(a TC-AE's measured per-channel statistics; a diffusers autoencoder's scaling from its config), else by
statistics measured on the cache; the score never writes into the tokenizer.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tcae.util import slug, write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger("tcae.studies.score")

COLUMNS = [  # (Markdown header, metric key); generation keys get "@budget"
    ("PSNR", "psnr"), ("SSIM", "ssim"), ("LPIPS", "lpips"), ("rFID", "rfid"), ("A1 tokens", "probe_acc_tokens"),
    ("A2 latents", "probe_acc_latents"), ("struct. loss", "structural_loss"),
    ("FD-judge", "fd_judge"), ("class agreement", "class_agreement"), ("FD-features", "fd_features"),
    ("gFID", "gfid"), ("IS", "is"),
]
GENERATION = ("fd_judge", "class_agreement", "fd_features", "gfid", "is")


def budget_name(budget: str, dit_steps: int | None = None, image_size: int | None = None) -> str:
    """'tiny', or 'tiny[dit_steps=20]' when the budget was changed (a different budget, named so)."""
    changes = [f"{k}={v}" for k, v in (("dit_steps", dit_steps), ("image_size", image_size)) if v is not None]
    return budget + (f"[{','.join(changes)}]" if changes else "")


def score_models(models: list[str], data: str | None = None, budget: str = "tiny", out: str | Path | None = None,
                 names: list[str] | None = None, image_size: int | None = None, dit_steps: int | None = None,
                 progress: bool = True, feature_network: str | nn.Module | None = None,
                 feature_weights: str | None = None, inception_weights: str | None = None) -> dict[str, Any]:
    """Score each tokenizer spec in `models` (module docstring); resumable per model (its result.json).

    data: labelled (class-balanced samples from a class-conditional DiT) or unlabelled (an unconditional DiT);
    feature_network / feature_weights: a network for an FD of the samples besides gFID and a judge (a name
    of :func:`tcae.evaluation.build_feature_network` or an nn.Module); inception_weights: the InceptionV3
    file for gFID / IS (default: torch hub's cache, used when present).
    Returns ``{"budget": {...}, "data", "results": [{"model", "name", "metrics", "labels", "cell"}],
    "markdown": str, "out": str}`` and writes ``out/score.json`` and ``out/score.md``.
    """
    from tcae.data.spec import dataset_num_classes, split_spec
    from tcae.evaluation import build_feature_network, judge_for_data
    from tcae.evaluation.features import inception_weights_path
    from tcae.studies.cells import eval_dir_name, inception_available, score_tokenizer
    from tcae.studies.paper import resolve_scale
    from tcae.tokenizers import load_tokenizer

    scale, data = resolve_scale(budget, data)
    num_classes = dataset_num_classes(split_spec(data, "train"))
    conditional = num_classes >= 2  # one class (or none): an unconditional DiT, its samples unlabelled
    changes = {k: v for k, v in (("dit_steps", dit_steps), ("image_size", image_size)) if v is not None}
    if dit_steps is not None and scale.dit_limited_step > dit_steps:  # a shorter DiT never reaches that budget
        changes["dit_limited_step"] = 0
    scale = dataclasses.replace(scale, num_classes=num_classes if conditional else 1, **changes)
    label = budget_name(budget, dit_steps, image_size)
    names = names or [slug(Path(m.removeprefix("diffusers:").rstrip("/")).name) or "model" for m in models]
    if len(names) != len(models) or len(set(names)) != len(names):
        raise ValueError(f"need one unique name per --model, got {names}")
    for m in models:  # every tokenizer loads and takes the image size before anything trains
        load_tokenizer(m).check_image_size(scale.image_size)
    if inception_weights is not None:
        inception_weights_path(inception_weights)  # a wrong path is named before anything trains
    features = build_feature_network(feature_network, feature_weights) if feature_network is not None else None
    inception, judge_name = inception_weights is not None or inception_available(), judge_for_data(data)
    if judge_name is None and not inception and features is None:
        raise _no_generation_metric(data)
    judge = build_feature_network(judge_name) if judge_name else None
    train_spec, eval_spec = split_spec(data, "train"), split_spec(data, scale.eval_split)

    out = Path(out or f"out/score-{slug(label)}")
    samples = scale.per_class * scale.num_classes
    budget_info = {"name": label, "scale": budget, "dit": scale.dit_config, "dit_steps": scale.dit_steps,
                   "image_size": scale.image_size, "num_classes": num_classes, "per_class": scale.per_class,
                   "conditional": conditional, "samples": samples,
                   "sample_kind": "class-balanced" if conditional else "unconditional",
                   "sampler": f"euler, {scale.sample_steps} steps, no CFG",
                   "eval_split": eval_spec, "eval_note": _eval_note(data, train_spec, eval_spec),
                   "judge": judge_name, "fd_name": f"FD-{judge.data}" if judge is not None else None,
                   "feature_network": features.name if features is not None else None,
                   "feature_label": features.metric_label("g") if features is not None else None,
                   "gfid_reference": f"{eval_spec} (ADM center crop)" if inception else None}
    results, reference_cache = [], {}
    for model, name in zip(models, names):
        cell_dir = out / name
        done = cell_dir / "result.json"
        settings = {"model": model, "data": data, "budget": budget_info}
        if done.is_file():
            previous = json.loads(done.read_text())
            if previous.get("settings") != settings:
                raise ValueError(f"{cell_dir} holds a score with other settings; use another --out")
            cell = previous["cell"]
        else:
            log.info("scoring %s (%s) on %s, budget %s", name, model, data, label)
            networks = "+".join(n for n in (judge_name, budget_info["feature_network"]) if n) or None
            eval_dir = cell_dir / eval_dir_name(scale, scale.eval_split, networks)
            cell = score_tokenizer(cell_dir, eval_dir, model, scale, data, judge, seed=0, split=scale.eval_split,
                                   reference_cache=reference_cache, progress=progress, features=features,
                                   inception_weights=inception_weights)
            write_json_atomic(done, {"settings": settings, "cell": cell})
        metrics, labels = _figures(cell, label, budget_info, data)
        results.append({"model": model, "name": name, "metrics": metrics, "labels": labels, "cell": cell})
    markdown = score_markdown(results, label, budget_info, data)
    payload = {"budget": budget_info, "data": data, "results": results, "markdown": markdown, "out": str(out)}
    write_json_atomic(out / "score.json", payload)
    write_text_atomic(out / "score.md", markdown + "\n")
    return payload


def _no_generation_metric(data: str) -> Exception:
    """The error when no network can judge samples of `data`: the Inception file and its download, the other
    options. A MissingWeightsError (exit 2 in the CLI)."""
    from tcae.evaluation.features import MissingWeightsError, inception_weights_path

    try:
        inception_weights_path(None)
        missing = ""
    except MissingWeightsError as err:
        missing = f" gFID: {err}"
    return MissingWeightsError(
        f"no generation metric for {data}: it needs a feature network, and none is available.{missing} Or pass "
        "--feature-network NAME for a Frechet distance in another network's features (dinov2, torchvision:resnet50, "
        "...; --feature-weights PATH for its file). Only built-in data (builtin:digits, builtin:fashion) has a "
        "weights-free judge.")


def _eval_note(data: str, train_spec: str, eval_spec: str) -> str:
    """"" for a held-out split; for a folder without splits, that the evaluation images are the training images."""
    if eval_spec != train_spec:
        return ""
    return (f"{eval_spec} has no train/ and val/ sub-folders: the tokenizer is evaluated, and the samples compared, "
            "on the same images the DiT trains on (no held-out split)")


def _figures(cell: dict, label: str, budget: dict, data: str) -> tuple[dict, dict]:
    """Flat metrics of one cell: reconstruction and probes as they are, generation keyed `name@budget`."""
    rec = cell.get("reconstruction", {}).get("metrics", {})
    diag = cell.get("diagnostics", {})
    gen = cell.get("generation", {})
    metrics: dict[str, Any] = {k: rec[k] for k in ("psnr", "ssim", "lpips", "rfid") if k in rec}
    metrics.update({k: diag[k] for k in ("probe_acc_tokens", "probe_acc_latents", "structural_loss") if k in diag})
    samples = (f"{budget['samples']} samples ({budget['per_class']} per class x {budget['num_classes']})"
               if budget.get("conditional", True) else f"{budget['samples']} unconditional samples")
    run = f"budget {label}: {budget['dit']} {budget['dit_steps']} steps, {samples}, {budget['sampler']}"
    split = budget["eval_split"]
    labels = {k: f"{k} of the reconstructions of {split}" for k in ("psnr", "ssim", "lpips", "rfid") if k in metrics}
    labels.update({k: f"{k}: linear probe fitted on the train split of {data}, scored on {split}"
                   for k in ("probe_acc_tokens", "probe_acc_latents", "structural_loss") if k in metrics})
    about = {"fd_judge": f"{budget['fd_name']}: Frechet distance in the {budget['judge']} network's "
                         f"features (not FID) vs {split}",
             "class_agreement": f"share of samples the {budget['judge']} network assigns to their class",
             "fd_features": gen.get("fd_features_label", f"{budget.get('feature_label')} vs {split}"),
             "gfid": f"gFID (InceptionV3) vs {budget['gfid_reference']}", "is": "Inception Score"}
    for k in GENERATION:
        if k in gen:
            metrics[f"{k}@{label}"] = gen[k]
            labels[f"{k}@{label}"] = f"{about[k]}; {run}"
    metrics["gflops_enc_dec"] = cell.get("cost", {}).get("total_gflops")
    labels["gflops_enc_dec"] = f"encode + decode GFLOPs of one {budget['image_size']} px image"
    return metrics, labels


def score_markdown(results: list[dict], label: str, budget: dict, data: str) -> str:
    """A Markdown table, one row per tokenizer; generation columns carry the budget; a note says what it is."""
    header = {"fd_judge": budget.get("fd_name") or "FD-judge",
              "fd_features": f"FD-{budget.get('feature_network')}"}
    cols = [(h if k not in GENERATION else f"{header.get(k, h)}@{label}", k if k not in GENERATION else f"{k}@{label}")
            for h, k in COLUMNS] + [("GFLOPs enc+dec", "gflops_enc_dec")]
    always = {"psnr", "ssim", "lpips", "rfid", f"gfid@{label}"}  # n/a says a metric could not be computed
    cols = [(h, k) for h, k in cols if k in always or any(k in r["metrics"] for r in results)]
    lines = ["| tokenizer | " + " | ".join(h for h, _ in cols) + " |", "|---|" + "---|" * len(cols)]
    for r in results:
        vals = [r["metrics"].get(k) for _, k in cols]
        lines.append(f"| {r['name']} | " + " | ".join("n/a" if v is None else f"{v:.4g}" for v in vals) + " |")
    conditional = budget.get("conditional", True)
    samples = (f"{budget['samples']} class-balanced samples ({budget['per_class']} per class)" if conditional
               else f"{budget['samples']} unconditional samples (no classes: an unconditional DiT)")
    networks = [f"gFID vs {budget['gfid_reference']}"] if budget["gfid_reference"] else []
    if budget.get("feature_network"):
        networks.append(f"FD-{budget['feature_network']}: {budget['feature_label']} vs {budget['eval_split']}")
    lines += ["", f"Data {data}; reconstruction and probe scores on {budget['eval_split']}"
              + (f" ({budget['eval_note']})" if budget.get("eval_note") else "") + f". Budget {label}: "
              f"{budget['dit']} trained {budget['dit_steps']} steps on each tokenizer's cached train latents, "
              f"{samples}, {budget['sampler']}." + "".join(f" {n}." for n in networks)
              + " n/a: the metric's pretrained weights are missing, the data has no labels (probes), or the "
                "tokenizer has no encoder tokens (A1)."]
    return "\n".join(lines)
