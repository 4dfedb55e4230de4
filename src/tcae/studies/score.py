"""`tcae score`: a generation-proxy score for any tokenizer, on the repro harness's cell runner.

For each tokenizer (a tcae model or ``diffusers:PATH_OR_HUB_ID``): reconstruction metrics and latent
diagnostics on the evaluation split (PSNR, SSIM, LPIPS and rFID where their weights are present; A1,
A2, structural loss), its train latents cached, a DiT of the budget's size trained for the budget's
steps, ``per_class`` samples of every class drawn (no CFG) and judged: gFID / IS against the evaluation
split (ADM crop) where the Inception weights are present, and on built-in data by its judge
(``tcae.evaluation.judges``: FD-<data> in the judge's features, never called FID, and class agreement).
One code path with ``tcae repro``: :func:`tcae.studies.cells.score_tokenizer`.

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
from typing import Any

from tcae.util import slug

log = logging.getLogger("tcae.studies.score")

COLUMNS = [  # (Markdown header, metric key); generation keys get "@budget"
    ("PSNR", "psnr"), ("SSIM", "ssim"), ("LPIPS", "lpips"), ("rFID", "rfid"), ("A1 tokens", "probe_acc_tokens"),
    ("A2 latents", "probe_acc_latents"), ("struct. loss", "structural_loss"),
    ("FD-judge", "fd_judge"), ("class agreement", "class_agreement"), ("gFID", "gfid"), ("IS", "is"),
]
GENERATION = ("fd_judge", "class_agreement", "gfid", "is")


def budget_name(budget: str, dit_steps: int | None = None, image_size: int | None = None) -> str:
    """'tiny', or 'tiny[dit_steps=20]' when the budget was changed (a different budget, named so)."""
    changes = [f"{k}={v}" for k, v in (("dit_steps", dit_steps), ("image_size", image_size)) if v is not None]
    return budget + (f"[{','.join(changes)}]" if changes else "")


def score_models(models: list[str], data: str | None = None, budget: str = "tiny", out: str | Path | None = None,
                 names: list[str] | None = None, image_size: int | None = None, dit_steps: int | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Score each tokenizer spec in `models` (module docstring); resumable per model (its result.json).

    Returns ``{"budget": {...}, "data", "results": [{"model", "name", "metrics", "labels", "cell"}],
    "markdown": str, "out": str}`` and writes ``out/score.json`` and ``out/score.md``.
    """
    from tcae.data.spec import dataset_num_classes, split_spec
    from tcae.evaluation import build_feature_network, judge_for_data
    from tcae.studies.cells import eval_dir_name, inception_available, score_tokenizer
    from tcae.studies.paper import resolve_scale
    from tcae.studies.stages import write_json
    from tcae.tokenizers import load_tokenizer

    scale, data = resolve_scale(budget, data)
    num_classes = dataset_num_classes(split_spec(data, "train"))
    if num_classes < 2:
        raise ValueError(f"{data} has no classes: the score samples every class equally (a class per sub-folder)")
    changes = {k: v for k, v in (("dit_steps", dit_steps), ("image_size", image_size)) if v is not None}
    scale = dataclasses.replace(scale, num_classes=num_classes, **changes)
    label = budget_name(budget, dit_steps, image_size)
    names = names or [slug(Path(m.removeprefix("diffusers:").rstrip("/")).name) or "model" for m in models]
    if len(names) != len(models) or len(set(names)) != len(names):
        raise ValueError(f"need one unique name per --model, got {names}")
    for m in models:  # every tokenizer loads and takes the image size before anything trains
        load_tokenizer(m).check_image_size(scale.image_size)
    inception, judge_name = inception_available(), judge_for_data(data)
    if judge_name is None and not inception:
        raise ValueError(f"no generation metric for {data}: gFID needs the InceptionV3 weights "
                         "(weights-inception-2015-12-05-6726825d.pth in $TORCH_HOME/hub/checkpoints/); only "
                         "built-in data (builtin:digits, builtin:fashion) has a weights-free judge")
    judge = build_feature_network(judge_name) if judge_name else None
    eval_spec = split_spec(data, scale.eval_split)

    out = Path(out or f"out/score-{slug(label)}")
    budget_info = {"name": label, "scale": budget, "dit": scale.dit_config, "dit_steps": scale.dit_steps,
                   "image_size": scale.image_size, "num_classes": num_classes, "per_class": scale.per_class,
                   "samples": scale.per_class * num_classes, "sampler": f"euler, {scale.sample_steps} steps, no CFG",
                   "eval_split": eval_spec, "judge": judge_name,
                   "fd_name": f"FD-{judge.data}" if judge is not None else None,
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
            eval_dir = cell_dir / eval_dir_name(scale, scale.eval_split, judge_name)
            cell = score_tokenizer(cell_dir, eval_dir, model, scale, data, judge, seed=0, split=scale.eval_split,
                                   reference_cache=reference_cache, progress=progress)
            write_json(done, {"settings": settings, "cell": cell})
        metrics, labels = _figures(cell, label, budget_info, data)
        results.append({"model": model, "name": name, "metrics": metrics, "labels": labels, "cell": cell})
    markdown = score_markdown(results, label, budget_info, data)
    payload = {"budget": budget_info, "data": data, "results": results, "markdown": markdown, "out": str(out)}
    write_json(out / "score.json", payload)
    (out / "score.md").write_text(markdown + "\n")
    return payload


def _figures(cell: dict, label: str, budget: dict, data: str) -> tuple[dict, dict]:
    """Flat metrics of one cell: reconstruction and probes as they are, generation keyed `name@budget`."""
    rec = cell.get("reconstruction", {}).get("metrics", {})
    diag = cell.get("diagnostics", {})
    gen = cell.get("generation", {})
    metrics: dict[str, Any] = {k: rec[k] for k in ("psnr", "ssim", "lpips", "rfid") if k in rec}
    metrics.update({k: diag[k] for k in ("probe_acc_tokens", "probe_acc_latents", "structural_loss") if k in diag})
    samples = f"{budget['samples']} samples ({budget['per_class']} per class x {budget['num_classes']})"
    run = f"budget {label}: {budget['dit']} {budget['dit_steps']} steps, {samples}, {budget['sampler']}"
    split = budget["eval_split"]
    labels = {k: f"{k} of the reconstructions of {split}" for k in ("psnr", "ssim", "lpips", "rfid") if k in metrics}
    labels.update({k: f"{k}: linear probe fitted on the train split of {data}, scored on {split}"
                   for k in ("probe_acc_tokens", "probe_acc_latents", "structural_loss") if k in metrics})
    about = {"fd_judge": f"{budget['fd_name']}: Frechet distance in the {budget['judge']} network's "
                         f"features (not FID) vs {split}",
             "class_agreement": f"share of samples the {budget['judge']} network assigns to their class",
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
    header = {"fd_judge": budget.get("fd_name") or "FD-judge"}
    cols = [(h if k not in GENERATION else f"{header.get(k, h)}@{label}", k if k not in GENERATION else f"{k}@{label}")
            for h, k in COLUMNS] + [("GFLOPs enc+dec", "gflops_enc_dec")]
    always = {"psnr", "ssim", "lpips", "rfid", f"gfid@{label}"}  # n/a says a metric could not be computed
    cols = [(h, k) for h, k in cols if k in always or any(k in r["metrics"] for r in results)]
    lines = ["| tokenizer | " + " | ".join(h for h, _ in cols) + " |", "|---|" + "---|" * len(cols)]
    for r in results:
        vals = [r["metrics"].get(k) for _, k in cols]
        lines.append(f"| {r['name']} | " + " | ".join("n/a" if v is None else f"{v:.4g}" for v in vals) + " |")
    lines += ["", f"Data {data}; reconstruction and probe scores on {budget['eval_split']}. Budget {label}: "
              f"{budget['dit']} trained {budget['dit_steps']} steps on each tokenizer's cached train latents, "
              f"{budget['samples']} class-balanced samples ({budget['per_class']} per class), "
              f"{budget['sampler']}." + (f" gFID vs {budget['gfid_reference']}." if budget["gfid_reference"] else "")
              + " n/a: the metric's pretrained weights are missing, or the tokenizer has no encoder tokens (A1)."]
    return "\n".join(lines)
