"""One (cell, seed) of a `tcae repro` grid, and `tcae score`'s per-tokenizer run: the same code.

A (cell, seed) trains a tokenizer (the cell's overrides, `seed=S`), evaluates and diagnoses it on the
evaluation split, caches its training latents, trains a DiT (`seed=S`), samples class-balanced sets from
the DiT's EMA at several training checkpoints and at the end, and judges them: against the evaluation
split (FD-<data>) and, to tell the decoder's share from the DiT's, the judge's FD of the split's
reconstructions (rFD-<data>) and of the samples against those reconstructions. Identical (resolved config,
seed) runs are shared between cells and experiments: they live once under the cells directory
(`<cells>/<key>/`, the key a hash of the resolved tokenizer and DiT configs, :func:`cell_key`), each step
resumable (training resumes from checkpoints; latents, convergence points and results are written as they
finish), one process at a time per cell (an advisory lock).

Samples are judged by the data set's judge (`tcae.evaluation.judges`: FD-<data> and class agreement) and
by gFID/IS against the evaluation split when the Inception weights are present; with neither, no samples
are drawn.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tcae.evaluation.npz import save_samples_npz
from tcae.studies.paper import Scale
from tcae.studies.stages import (
    Timer,
    dit_from_snapshot,
    dit_snapshots,
    dit_stage,
    evaluate_stage,
    fit_batch,
    judge_samples,
    latents_stage,
    reconstruct_split,
    sample_stage,
    split_spec,
    tokenizer_cost,
    train_tokenizer_stage,
)
from tcae.util import file_lock, write_json_atomic

if TYPE_CHECKING:
    from tcae.evaluation.features import FeatureNetwork

log = logging.getLogger("tcae.studies")


def tokenizer_overrides(overrides: list[str], scale: Scale, data: str, seed: int) -> list[str]:
    return ["name=tokenizer", f"steps={scale.tokenizer_steps}", f"data={split_spec(data, 'train')}",
            f"seed={seed}", "progress=false", *scale.extra, *overrides]


def decoder_overrides(scale: Scale, data: str, seed: int, init: Path | str) -> list[str]:
    """Phase 2 of a cell: the scale's decoder config from the cell's phase-1 run `init` (its architecture
    comes from there: the cell's model overrides are phase 1's), on the same training data."""
    return ["name=decoder", f"steps={scale.decoder_steps}", f"data={split_spec(data, 'train')}",
            f"image_size={scale.image_size}", f"seed={seed}", "progress=false", f"init={init}"]


def dit_overrides(scale: Scale, seed: int) -> list[str]:
    conv = [f"checkpoint_every={scale.convergence_every}", "keep_last=0"] if scale.convergence_every else []
    if scale.convergence_every and scale.convergence_steps:
        conv.append(f"checkpoint_at=[{','.join(str(s) for s in scale.convergence_steps)}]")
    return ["name=dit", f"steps={scale.dit_steps}", f"seed={seed}", "progress=false", *conv, *scale.dit_extra]


# Settings added after runs were keyed: left out of the key while at their default (the
# behaviour those runs had), so finished and resumable runs keep their keys.
# (the phases whose configs had keys without it, section ("" top level), setting, default)
# ema_warmup's neutral value is false: the runs before it had a fixed decay; true (the default since) is a new key
KEY_NEUTRAL_DEFAULTS = ((("tokenizer",), "ssl", "recon_view", "crop"),
                        (("tokenizer", "decoder", "dit"), "", "ema_warmup", False),
                        (("tokenizer", "decoder"), "", "decoder_part", "all"),
                        (("dit",), "model", "class_names", None),
                        (("tokenizer", "decoder", "dit"), "", "checkpoint_at", []))


def cell_key(overrides: list[str], scale: Scale, data: str, seed: int) -> str:
    """A hash of everything that decides what a (cell, seed) trains: the resolved tokenizer and DiT
    configs (run names and folders aside), the image size and the data. Equal keys = the same run."""
    from omegaconf import OmegaConf

    from tcae.config import (
        DEFAULT_MODEL,
        DIT_ALIASES,
        TRAIN_ALIASES,
        DiTTrainConfig,
        TrainConfig,
        load_config,
        model_overrides,
    )
    from tcae.models.dcae import dcae_preset_config, is_dcae_name
    from tcae.models.presets import preset_config

    cfg = load_config(TrainConfig, scale.tokenizer_config, tokenizer_overrides(overrides, scale, data, seed),
                      TRAIN_ALIASES)
    tok = OmegaConf.to_container(cfg)
    # the model as the trainer builds it (preset + overrides): `model.staged=true` on a staged preset is no change
    model = model_overrides(cfg.model)
    model.setdefault("image_size", cfg.data.image_size)
    tok["model"] = dcae_preset_config(cfg.model.name, **model) if is_dcae_name(cfg.model.name) else \
        preset_config(cfg.model.name or DEFAULT_MODEL, **model).to_dict()
    dit = OmegaConf.to_container(load_config(DiTTrainConfig, scale.dit_config, dit_overrides(scale, seed),
                                             DIT_ALIASES))
    phases = {"tokenizer": tok, "dit": dit}
    if scale.decoder_steps:  # phase 2 joins the key only where a scale has one: phase-1-only keys stay as they were
        phases["decoder"] = OmegaConf.to_container(load_config(
            TrainConfig, scale.decoder_config, decoder_overrides(scale, data, seed, "PHASE-1"), TRAIN_ALIASES))
    for cfg in phases.values():
        for k in ("name", "run_dir", "progress", "resume"):
            cfg.pop(k, None)
    dit["data"].pop("latents", None)
    if not tok["ssl"]["enabled"]:  # without SSL the reconstruction always sees the whole image: no view to key
        tok["ssl"].pop("recon_view", None)
    for which, section, name, default in KEY_NEUTRAL_DEFAULTS:  # added later: at their default, no new key
        for phase in (phases[p] for p in which if p in phases):
            where = phase.get(section, {}) if section else phase
            if name in where and where[name] == default:
                where.pop(name)
    blob = json.dumps({**phases, "image_size": scale.image_size}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def judge_label(judge) -> str | None:
    """What names a judge in an evaluation folder: its name, and its weights' fingerprint where it has one
    (judges trained on two machines differ, so a cell evaluated by another judge is evaluated again)."""
    if judge is None:
        return None
    sha = judge.info.get("weights_sha256")
    return f"{judge.name}@{sha[:16]}" if sha else judge.name


def eval_dir_name(scale: Scale, split: str, judge_name: str | None) -> str:
    """The evaluation folder inside a cell: one per (split, sample settings, judge) (judge_name: judge_label())."""
    settings = [scale.per_class, scale.sample_steps, scale.convergence_every, judge_name]
    if scale.convergence_steps:  # added later: the folders of scales without it keep their names
        settings.append(list(scale.convergence_steps))
    blob = json.dumps(settings, sort_keys=True)
    return f"eval-{split}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


def run_cell(cell_dir: Path, overrides: list[str], scale: Scale, data: str, judge=None, seed: int = 0,
             split: str | None = None, reference_cache: dict | None = None, wait: bool = True) -> dict:
    """Train (or resume) one (cell, seed) in `cell_dir` and evaluate it on `split` (default the scale's).

    judge: a :class:`tcae.evaluation.Judge` (or None). Returns the result, also written to
    `cell_dir/eval-<split>-<settings>/result.json`; a finished result is read back, nothing recomputed.
    A cell another process is working on is waited for, or with `wait=False` raises
    :class:`tcae.util.LockBusy`.
    """
    split = split or scale.eval_split
    eval_dir = cell_dir / eval_dir_name(scale, split, judge_label(judge))
    done = eval_dir / "result.json"
    if done.is_file() and not lacks_dit_limited(json.loads(done.read_text()), scale):
        return json.loads(done.read_text())
    with file_lock(cell_dir / ".lock", wait=wait):
        if done.is_file():  # finished (by another process while this one waited, or before the budget was chosen)
            result = json.loads(done.read_text())
            if lacks_dit_limited(result, scale):
                result = _add_dit_limited(cell_dir, eval_dir, result, scale, judge, seed, reference_cache)
            return result
        return _run_cell(cell_dir, eval_dir, overrides, scale, data, judge, seed, split, reference_cache)


def lacks_dit_limited(result: dict, scale: Scale) -> bool:
    """Whether a finished result predates the scale's DiT-limited budget (chosen on val after cells had started):
    its samples at that snapshot and its setting are added from the kept snapshots, nothing retrained."""
    has = (result.get("settings") or {}).get("dit_limited_step", 0)
    return bool(scale.dit_limited_step) and has != scale.dit_limited_step and bool(result.get("convergence"))


def _add_dit_limited(cell_dir: Path, eval_dir: Path, result: dict, scale: Scale, judge, seed: int,
                     reference_cache: dict | None) -> dict:
    """`result` with the DiT-limited budget: the snapshot's samples saved (drawn as its convergence point was,
    same seed), its point recomputed, the setting recorded."""
    step = scale.dit_limited_step
    if step == scale.dit_steps:  # the final samples are the budget's
        _final_as_limited(eval_dir, step)
    else:
        runs = cell_dir / "runs"
        tok = runs / ("decoder" if scale.decoder_steps else "tokenizer") / "model"
        snaps = [s for s in dit_snapshots(runs / "dit", scale.convergence_every, scale.convergence_steps)
                 if _snapshot_step(s) == step]
        if not snaps:
            raise ValueError(f"dit_limited_step={step} is not a DiT snapshot of {runs / 'dit'} (snapshots every "
                             f"{scale.convergence_every} steps and at {list(scale.convergence_steps)})")
        eval_spec = result.get("eval_spec") or split_spec(result["data"], result["split"])
        with _timed(eval_dir / "timings.json", "convergence"):
            points = {p["step"]: p for p in _convergence(eval_dir, snaps, runs / "dit", tok, scale, judge,
                                                         eval_spec, seed, reference_cache)}
        result["convergence"] = [points.get(p["step"], p) for p in result["convergence"]]
        result.setdefault("timings_s", {})["convergence"] = json.loads((eval_dir / "timings.json").read_text()
                                                                       )["convergence"]
    result.setdefault("settings", {})["dit_limited_step"] = step
    write_json_atomic(eval_dir / "result.json", result)
    return result


def _final_as_limited(eval_dir: Path, step: int) -> None:
    """Where the DiT-limited budget is the last step, its samples are the final ones."""
    if not (eval_dir / FINAL_SAMPLES).is_file():
        raise FileNotFoundError(f"{eval_dir / FINAL_SAMPLES} not found: this result predates saved final samples; "
                                "evaluate the cell again (delete its result.json)")
    shutil.copyfile(eval_dir / FINAL_SAMPLES, eval_dir / limited_samples_name(step))


def _snapshot_step(path: Path) -> int:
    return int(path.name.split("-")[1].split(".")[0])


@contextlib.contextmanager
def _timed(path: Path, name: str):
    """Add the wall time of the block to `name` in the JSON file `path` (kept across resumes: a
    stage resumed after a kill adds the time of the session that finished it)."""
    timer = Timer()
    with timer(name):
        yield
    old = json.loads(path.read_text()) if path.is_file() else {}
    old[name] = round(old.get(name, 0.0) + timer.seconds[name], 1)
    write_json_atomic(path, old)


def _run_cell(cell_dir: Path, eval_dir: Path, overrides: list[str], scale: Scale, data: str, judge, seed: int,
              split: str, reference_cache: dict | None) -> dict:
    with _timed(cell_dir / "train_timings.json", "tokenizer"):
        tok = train_tokenizer_stage(cell_dir / "runs", scale.tokenizer_config,
                                    tokenizer_overrides(overrides, scale, data, seed))
    phase1 = {}
    if scale.decoder_steps:  # the paper's phase 2: what a user would ship is the fine-tuned decoder
        with _timed(cell_dir / "train_timings.json", "decoder"):
            phase1_run, tok = tok.parent, train_tokenizer_stage(
                cell_dir / "runs", scale.decoder_config, decoder_overrides(scale, data, seed, tok.parent))
        phase1 = {"reconstruction_phase1": _phase1_reconstruction(phase1_run / "model", split_spec(data, split),
                                                                  scale.image_size, eval_dir)}
    result = {"overrides": overrides, **phase1,
              **score_tokenizer(cell_dir, eval_dir, tok, scale, data, judge, seed, split, reference_cache)}
    write_json_atomic(eval_dir / "result.json", result)
    return result


def _phase1_reconstruction(model_dir: Path, eval_spec: str, image_size: int, eval_dir: Path) -> dict:
    """PSNR/SSIM of the phase-1 model on the evaluation split (what phase 2 starts from), computed once."""
    from tcae.evaluation import evaluate
    from tcae.tokenizers import load_tokenizer

    path = eval_dir / "phase1_reconstruction.json"
    if path.is_file():
        return json.loads(path.read_text())
    rec = evaluate(load_tokenizer(model_dir), eval_spec, image_size=image_size, metrics=("psnr", "ssim"),
                   progress=False)
    rec = {"metrics": rec["metrics"], "num_images": rec["num_images"], "data": rec["data"]}
    write_json_atomic(path, rec)
    return rec


def score_tokenizer(cell_dir: Path, eval_dir: Path, tok: Path | str, scale: Scale, data: str, judge=None,
                    seed: int = 0, split: str | None = None, reference_cache: dict | None = None,
                    progress: bool = True, features: FeatureNetwork | None = None,
                    inception_weights: str | None = None) -> dict:
    """A (cell, seed) after its tokenizer, for any tokenizer spec `tok` (a tcae model or
    ``diffusers:PATH_OR_HUB_ID``; also `tcae score`'s): cache its train latents, train the scale's DiT,
    evaluate and diagnose the tokenizer on `split` (nothing written into it), sample class-balanced sets
    (and the convergence snapshots) and judge them. `features`: a network whose FD of the samples vs `split`
    is added (``fd_features``); `inception_weights`: the InceptionV3 file (gFID / IS; default: torch hub's
    cache where present). Returns the result without the cell's overrides."""
    split = split or scale.eval_split
    runs = cell_dir / "runs"
    train, eval_spec = split_spec(data, "train"), split_spec(data, split)
    train_times, eval_times = cell_dir / "train_timings.json", eval_dir / "timings.json"
    with _timed(train_times, "latents"):
        lat = latents_stage(tok, train, scale.image_size, cell_dir / "latents")
    with _timed(train_times, "dit"):
        overrides = dit_overrides(scale, seed)
        dit = dit_stage(runs, lat, overrides + fit_batch(lat, scale.dit_config, overrides), config=scale.dit_config)
        snapshots = dit_snapshots(runs / "dit", scale.convergence_every, scale.convergence_steps) \
            if scale.convergence_every else []
    with _timed(eval_times, "evaluate"):
        ev = evaluate_stage(tok, eval_spec, scale.image_size, eval_dir, train_spec=train, diag_spec=eval_spec,
                            progress=progress)
    gen, convergence = {}, []
    inception = inception_weights is not None or inception_available()
    if judge is not None or inception or features is not None:
        if judge is not None and snapshots:
            with _timed(eval_times, "convergence"):
                convergence = _convergence(eval_dir, snapshots, dit, tok, scale, judge, eval_spec, seed,
                                           reference_cache)
        with _timed(eval_times, "sample"):
            images, labels = sample_stage(dit, tok, list(range(scale.num_classes)), scale.per_class, 1.0,
                                          scale.sample_steps, seed=seed)
        _save_grid(images, labels, eval_dir / "samples.png")
        save_samples_npz(images, eval_dir / FINAL_SAMPLES, labels, compress=True)  # for anyone's own judge
        if scale.dit_limited_step == scale.dit_steps:
            _final_as_limited(eval_dir, scale.dit_steps)
        if judge is not None:
            with _timed(eval_times, "judge"):
                gen.update(judge_samples(images, labels, judge, eval_spec, scale.image_size, reference_cache))
            with _timed(eval_times, "decoder-gap"):
                gen.update(decoder_gap(tok, images, labels, judge, eval_spec, scale.image_size, eval_dir,
                                       reference_cache))
            if snapshots:
                convergence.append({"step": scale.dit_steps, "fd_judge": gen["fd_judge"],
                                    "class_agreement": gen["class_agreement"],
                                    "fd_judge_vs_rec": gen["fd_judge_vs_rec"]})
        if features is not None:
            with _timed(eval_times, "feature-fd"):
                gen.update(_feature_fd(images, features, eval_spec, scale.image_size, reference_cache))
        if inception:
            with _timed(eval_times, "gen-eval"):
                gen.update(_gen_metrics(eval_dir / FINAL_SAMPLES, eval_spec, scale.image_size, inception_weights))
    timings = {**json.loads(train_times.read_text()), **json.loads(eval_times.read_text())}
    return {"seed": seed, "split": split, "data": data, "eval_spec": eval_spec, **ev,
            "generation": gen, "convergence": convergence, "timings_s": timings,
            "cost": tokenizer_cost(tok, scale.image_size), "cell_dir": str(cell_dir),
            "settings": {"tokenizer_steps": scale.tokenizer_steps, "dit_steps": scale.dit_steps,
                         "per_class": scale.per_class, "sample_steps": scale.sample_steps,
                         "convergence_every": scale.convergence_every,
                         **({"convergence_steps": list(scale.convergence_steps)} if scale.convergence_steps else {}),
                         **({"decoder_config": scale.decoder_config, "decoder_steps": scale.decoder_steps}
                            if scale.decoder_steps else {}),
                         **({"dit_limited_step": scale.dit_limited_step} if scale.dit_limited_step else {})}}


FINAL_SAMPLES = "samples-final.npz"  # ADM layout: uint8 arr_0 (N, H, W, 3), labels arr_1


def limited_samples_name(step: int) -> str:
    """The file of the samples drawn at the DiT-limited budget (a convergence snapshot)."""
    return f"samples-dit-limited-step-{step}.npz"


def decoder_gap(tok: Path | str, images: np.ndarray, labels: np.ndarray, judge: FeatureNetwork, eval_spec: str,
                image_size: int, eval_dir: Path, reference_cache: dict | None = None) -> dict[str, float]:
    """Tell the decoder's part of a judge's FD of samples from the DiT's: samples are decoded by the
    tokenizer's decoder, so even a perfect model of the latents scores about the FD of the reconstructions.

    Returns {"rfd_judge": FD of the eval split's reconstructions vs the split, "rec_class_agreement":
    the judge's accuracy on those reconstructions, "rec_feature_trace": tr Σ_rec, the trace of their
    judge-feature covariance (the scale FDs against them are measured in: a blurrier decoder's
    reconstructions span less of the feature space), "fd_judge_vs_rec": FD of the samples vs the
    reconstructions (how far the DiT is from the tokenizer's own latent distribution)}. FDs do not add
    up (only their square roots obey a triangle inequality): these are two comparisons, not a sum. The
    reconstructions are kept in `eval_dir/reconstructions.npz` (ADM layout, labels in arr_1)."""
    rec_path = _reconstructions(eval_dir, tok, eval_spec, image_size)
    with np.load(rec_path) as f:
        rec, rec_labels = f["arr_0"], f["arr_1"]
    vs_real = judge_samples(rec, rec_labels, judge, eval_spec, image_size, reference_cache, allow_unbalanced=True)
    vs_rec = judge_samples(images, labels, judge, str(rec_path), image_size, reference_cache)
    return {"rfd_judge": vs_real["fd_judge"], "rec_class_agreement": vs_real["class_agreement"],
            "rec_feature_trace": vs_real["feature_trace"], "fd_judge_vs_rec": vs_rec["fd_judge"]}


def _reconstructions(eval_dir: Path, tok: Path | str, eval_spec: str, image_size: int) -> Path:
    """`eval_dir/reconstructions.npz`: the eval split's reconstructions (ADM layout, labels in arr_1),
    made once: the reference of the samples' FD vs reconstructions."""

    rec_path = eval_dir / "reconstructions.npz"
    if not rec_path.is_file():
        rec, rec_labels = reconstruct_split(tok, eval_spec, image_size)
        save_samples_npz(rec, rec_path, rec_labels)  # atomic
    return rec_path


def _convergence(eval_dir: Path, snapshots: list[Path], dit_dir: Path, tok: Path, scale: Scale, judge,
                 eval_spec: str, seed: int, reference_cache: dict | None) -> list[dict]:
    """FD-<data>, class agreement and the DiT's share (FD of the samples vs the eval split's
    reconstructions) of the EMA DiT snapshots (every `convergence_every` steps before the last; the last
    point is the final evaluation), each point written as it finishes (resumable; a point recorded
    before the FD vs reconstructions existed is computed again)."""
    path = eval_dir / "convergence.json"
    points = {p["step"]: p for p in (json.loads(path.read_text()) if path.is_file() else [])}
    rec = _reconstructions(eval_dir, tok, eval_spec, scale.image_size)
    for snap in snapshots:
        step = _snapshot_step(snap)
        kept = step != scale.dit_limited_step or (eval_dir / limited_samples_name(step)).is_file()
        if step in points and "fd_judge_vs_rec" in points[step] and kept:
            continue
        images, labels = sample_stage(dit_dir, tok, list(range(scale.num_classes)), scale.per_class, 1.0,
                                      scale.sample_steps, seed=seed, dit=dit_from_snapshot(snap))
        if step == scale.dit_limited_step:
            save_samples_npz(images, eval_dir / limited_samples_name(step), labels, compress=True)
        res = judge_samples(images, labels, judge, eval_spec, scale.image_size, reference_cache)
        vs_rec = judge_samples(images, labels, judge, str(rec), scale.image_size, reference_cache)
        points[step] = {"step": step, "fd_judge": res["fd_judge"], "class_agreement": res["class_agreement"],
                        "fd_judge_vs_rec": vs_rec["fd_judge"]}
        write_json_atomic(path, sorted(points.values(), key=lambda p: p["step"]))  # type: ignore[arg-type]
    return sorted(points.values(), key=lambda p: p["step"])


def _save_grid(images, labels, path: Path, per_row: int = 10) -> None:
    """One row per class: the first `per_row` samples of each."""
    import torch
    from torchvision.utils import save_image

    rows = [images[labels == c][:per_row] for c in np.unique(labels)]
    t = torch.from_numpy(np.concatenate(rows)).permute(0, 3, 1, 2).float() / 255.0
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(t, str(path), nrow=per_row, padding=1)


def inception_available() -> bool:
    from tcae.evaluation import weights_available

    return weights_available("rfid")


def _gen_metrics(path: Path, reference: str, image_size: int, inception_weights: str | None = None) -> dict:
    """gFID and IS of the samples in `path` (ADM layout) against the `reference` data spec."""
    from tcae.evaluation.gen_eval import evaluate_samples

    metrics = evaluate_samples(path, reference, image_size=image_size, progress=False,
                               inception_weights=inception_weights)["metrics"]
    return {k: metrics[k] for k in ("gfid", "is") if k in metrics}


def _feature_fd(images: np.ndarray, net: FeatureNetwork, reference: str, image_size: int,
                reference_cache: dict | None) -> dict:
    """{"fd_features": FD of the samples (uint8 (N, H, W, 3)) vs the `reference` spec in `net`'s features,
    "fd_features_label": what it is (network, sample count, reference)}; never called FID unless `net` is
    InceptionV3."""
    from tcae.evaluation.gen_eval import evaluate_samples

    res = evaluate_samples(images, reference, image_size=image_size, feature_network=net, progress=False,
                           reference_cache=reference_cache)
    key = net.metric_key("g")
    return {"fd_features": res["metrics"][key], "fd_features_label": res["labels"][key]}
