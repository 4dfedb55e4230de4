"""`tcae repro EXPERIMENT`: re-run the paper's ablations as a grid of tokenizers + small DiTs, with seeds.

Each (cell, seed) trains a tokenizer (the cell's overrides, `seed=S`), evaluates and diagnoses it on
the evaluation split, caches its training latents, trains a DiT (`seed=S`), samples class-balanced
sets from the DiT's EMA at several training checkpoints and at the end, and judges them: against the
evaluation split (FD-<data>) and, to tell the decoder's share from the DiT's, the judge's FD of the split's
reconstructions (rFD-<data>) and of the samples against those reconstructions. Identical
(resolved config, seed) runs are shared between cells and experiments: they live once under the cells
directory (default `<out>/../cells/<key>/`, the key a hash of the resolved tokenizer and DiT configs),
each step resumable (training resumes from checkpoints; latents, convergence points and results are
written as they finish). An experiment's folder holds `<cell>/seed-<S>/result.json` and the report
(`tcae.repro_report`): per-seed values, mean ± std and min..max, the paper's table, plots and a
verdict per claim computed from the seeds' spread.

Scales (`--scale`): `tiny` runs on a CPU: on `builtin:digits` (default; no compression: 64 real pixel
values, 128 latent numbers) or on `builtin:fashion`, where the tiny scale mirrors the paper's regime
(see `FASHION_MAPPING`); `small` and `base` are for GPUs on a real data set (`--data`). Samples are
judged by the data set's judge (`tcae.evaluation.judges`: FD-<data> and class agreement) and by
gFID/IS against the evaluation split when the Inception weights are present; with neither, no samples
are drawn. Settings are to be chosen with `--eval-split val`; reports use the test split where the
data has one (Fashion-MNIST), else val.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tcae.pipeline import (
    Timer,
    dit_from_snapshot,
    dit_snapshots,
    dit_stage,
    evaluate_stage,
    judge_samples,
    latents_stage,
    reconstruct_split,
    sample_stage,
    split_spec,
    tokenizer_cost,
    train_tokenizer_stage,
    write_json,
)

if TYPE_CHECKING:
    from tcae.evaluation.features import FeatureNetwork

log = logging.getLogger("tcae.repro")


@dataclass
class Scale:
    """Everything a scale fixes: configs, steps, sample counts, the evaluation split.

    `convergence_every`: DiT steps between the checkpoints sampled for the convergence curve (0: none);
    `extra` / `dit_extra`: overrides of every cell's tokenizer / DiT; `mapping`: markdown table of how
    the scale maps onto the paper's regime (for the report)."""

    tokenizer_config: str
    dit_config: str
    data: str
    image_size: int
    num_classes: int
    tokenizer_steps: int
    dit_steps: int
    per_class: int
    base_channels: int
    extra: list[str] = field(default_factory=list)
    dit_extra: list[str] = field(default_factory=list)
    eval_split: str = "val"
    sample_steps: int = 50
    convergence_every: int = 0
    mapping: str = ""


FASHION_MAPPING = """\
| | paper (ImageNet 256x256) | tiny (Fashion-MNIST) |
|---|---|---|
| image | 256x256x3: 196,608 real values | 32x32 (28x28x1 padded): 784 real values |
| patch size p, fine tokens | 8, 32x32 | 4, 8x8 |
| staged: 2x2 merge -> coarse tokens | 16x16 | 4x4 |
| latent (f) | 8x8x128 = 8,192 numbers (f=32) | 2x2x8 = 32 numbers (f=16) |
| f_tok->lat staged / single-stage | 4 / 16 | 4 / 16 |
| latent numbers per real pixel value | 8,192 / 196,608 = 1/24 | 32 / 784 = 1/24.5 |
| token-scaling p (p/f) | 4, 8, 16 (1/8, 1/4, 1/2) | 2, 4, 8 (1/8, 1/4, 1/2) |
| channels experiment | c=128 vs 256 | c=8 vs 16 |
| DiT | LightningDiT on 8x8 latents | dit-tiny (4 blocks, width 128) on 2x2 latents |
"""

SCALES = {
    "tiny": Scale("digits", "dit-tiny", "builtin:digits", 32, 10, tokenizer_steps=400, dit_steps=1500,
                  per_class=30, base_channels=32),
    "small": Scale("s", "dit-s", "", 256, 1000, tokenizer_steps=100_000, dit_steps=100_000, per_class=10,
                   base_channels=128),
    "base": Scale("b", "dit-b", "", 256, 1000, tokenizer_steps=500_000, dit_steps=400_000, per_class=50,
                  base_channels=128),
}
# (scale, data kind) -> the scale on that data, where it differs from SCALES[scale]
DATA_SCALES = {
    ("tiny", "fashion"): Scale("fashion", "dit-tiny", "builtin:fashion", 32, 10, tokenizer_steps=700,
                               dit_steps=1600, per_class=100, base_channels=8, dit_extra=["ema_decay=0.995"],
                               eval_split="test", convergence_every=320, mapping=FASHION_MAPPING),
}


def resolve_scale(scale_name: str, data: str | None) -> tuple[Scale, str]:
    """(the scale for this data, the data spec): `DATA_SCALES[(scale, kind)]` where there is one."""
    from tcae.data import parse_spec

    if scale_name not in SCALES:
        raise ValueError(f"unknown scale {scale_name!r}; choose from {', '.join(SCALES)}")
    scale = SCALES[scale_name]
    data = data or scale.data
    if not data:
        raise ValueError(f"--scale {scale_name} needs --data (an ImageNet folder or shards)")
    scale = DATA_SCALES.get((scale_name, parse_spec(data).kind), scale)
    return scale, data


# The paper's numbers (ImageNet 256x256) that each experiment is compared against.
PAPER = {
    "stc-ssl": {
        "single-stage, no SSL": {"rFID": 1.33, "gFID": 44.72, "IS": 33.62},
        "staged, no SSL": {"rFID": 0.75, "gFID": 32.92, "IS": 43.58},
        "single-stage, SSL": {"rFID": 0.90, "gFID": 25.36, "IS": 52.38},
        "staged, SSL": {"rFID": 0.90, "gFID": 16.39, "IS": 71.33},
    },
    "ssl-method": {"iBOT": {"gFID": 17.22, "IS": 69.00}, "DINO": {"gFID": 20.38, "IS": 62.12},
                   "none": {}},
    "channels": {"c": {"claim": "c=256 reconstructs better than c=128 but generates worse"}},
    "token-scaling": {"p": {"claim": "smaller p reconstructs better; generation improves only with STC"}},
    # not one of the paper's tables: why SSL does not help at the tiny scale (issue 12, item 6)
    "ssl-causes": {"alpha, recon view": {"claim": "none: the paper gives neither alpha (L = alpha * L_rec + L_iBOT) "
                                                  "nor which view the reconstruction sees"}},
}
PAPER_NOTES = {
    "stc-ssl": ["Linear probe at p=8, A1 (tokens) / A2 (latents): without STC 62.9 / 5.33, with STC 39.1 / 12.1; "
                "structural loss 1 - A2/A1: 0.92 -> 0.69.",
                "Diffusion converges up to 4.7x faster with TC-AE (STC + SSL), 2.7x with STC alone."],
    "ssl-method": ["At p=16: iBOT gFID 17.22 / IS 69.00, DINO 20.38 / 62.12, DINOv2 (external) 28.22 / 49.19."],
    "channels": ["Going from 128 to 256 latent channels improves reconstruction but hurts generation."],
    "token-scaling": ["More tokens (smaller p) reconstruct better at a fixed latent budget; without STC that does "
                      "not carry over to generation, with STC it does."],
    "ssl-causes": ["Not a paper experiment: two choices the paper leaves to us, tested as causes of SSL not "
                   "helping at the tiny scale. (1) alpha in L = alpha * L_rec + L_iBOT: our L_rec is L1 alone (no "
                   "LPIPS, no GAN at the tiny scale), about 0.1 against an iBOT loss of about 8, so at alpha=1 "
                   "iBOT's gradients dominate the encoder. (2) The reconstruction input: with SSL it is global "
                   "crop 0, a random resized crop (area 0.6-1, flipped, resampled), while without SSL the "
                   "tokenizer trains on the exact images evaluation reconstructs; `ssl.recon_view=full` gives "
                   "the SSL run those same images."],
}
# alpha values of the ssl-causes cells (the staged TC-AE, SSL on); alpha=30 was also run on val
# (docs/repro-fashion/ssl-causes-val/staged-SSL-alpha-30): no better than 10, so not carried to test
SSL_ALPHAS = (1, 10)


def experiment_cells(name: str, scale: Scale) -> dict[str, list[str]]:
    """Cell name -> tokenizer overrides."""
    c = scale.base_channels
    if name == "stc-ssl":
        return {"single-stage, no SSL": ["model.staged=false", "ssl=false"], "staged, no SSL": ["ssl=false"],
                "single-stage, SSL": ["model.staged=false"], "staged, SSL": []}
    if name == "ssl-method":
        # DINO: [CLS] self-distillation on global + local crops only: no masked views, no patch (MIM) loss
        return {"iBOT": [], "DINO": ["ssl.patch_weight=0", "ssl.mask_sample_prob=0"], "none": ["ssl=false"]}
    if name == "ssl-causes":
        return {"staged, no SSL": ["ssl=false"],
                **{f"staged, SSL, alpha={a}": [] if a == 1 else [f"loss.alpha={a}"] for a in SSL_ALPHAS},
                "staged, SSL, alpha=1, full-image recon": ["ssl.recon_view=full"],
                "staged, SSL, alpha=10, full-image recon": ["ssl.recon_view=full", "loss.alpha=10"]}
    if name == "channels":
        return {f"c={c}": [f"model.latent_channels={c}"], f"c={2 * c}": [f"model.latent_channels={2 * c}"]}
    if name == "token-scaling":
        sizes = (2, 4, 8) if scale.image_size <= 64 else (4, 8, 16)
        return {f"p={p}, {'staged' if st else 'single-stage'}": [f"model.patch_size={p}",
                                                                 f"model.staged={str(st).lower()}"]
                for st in (False, True) for p in sizes}
    raise ValueError(f"unknown experiment {name!r}; choose from {', '.join(PAPER)}")


def _slug(cell: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in cell).strip("-").replace("--", "-")


# ---------------------------------------------------------------------------- one (cell, seed)
def tokenizer_overrides(overrides: list[str], scale: Scale, data: str, seed: int) -> list[str]:
    return ["name=tokenizer", f"steps={scale.tokenizer_steps}", f"data={split_spec(data, 'train')}",
            f"seed={seed}", "progress=false", *scale.extra, *overrides]


def dit_overrides(scale: Scale, seed: int) -> list[str]:
    conv = [f"checkpoint_every={scale.convergence_every}", "keep_last=0"] if scale.convergence_every else []
    return ["name=dit", f"steps={scale.dit_steps}", f"seed={seed}", "progress=false", *conv, *scale.dit_extra]


# Tokenizer settings added after runs were keyed: left out of the key while at their default (the
# behaviour those runs had), so finished and resumable runs keep their keys.
KEY_NEUTRAL_DEFAULTS = (("ssl", "recon_view", "crop"),)


def cell_key(overrides: list[str], scale: Scale, data: str, seed: int) -> str:
    """A hash of everything that decides what a (cell, seed) trains: the resolved tokenizer and DiT
    configs (run names and folders aside), the image size and the data. Equal keys = the same run."""
    from omegaconf import OmegaConf

    from tcae.config import DEFAULT_MODEL, TRAIN_ALIASES, TrainConfig, load_config, model_overrides
    from tcae.models.presets import preset_config
    from tcae.training.dit import DIT_ALIASES, DiTTrainConfig

    cfg = load_config(TrainConfig, scale.tokenizer_config, tokenizer_overrides(overrides, scale, data, seed),
                      TRAIN_ALIASES)
    tok = OmegaConf.to_container(cfg)
    # the model as the trainer builds it (preset + overrides): `model.staged=true` on a staged preset is no change
    model = model_overrides(cfg.model)
    model.setdefault("image_size", cfg.data.image_size)
    tok["model"] = preset_config(cfg.model.name or DEFAULT_MODEL, **model).to_dict()
    dit = OmegaConf.to_container(load_config(DiTTrainConfig, scale.dit_config, dit_overrides(scale, seed),
                                             DIT_ALIASES))
    for cfg in (tok, dit):
        for k in ("name", "run_dir", "progress", "resume"):
            cfg.pop(k, None)
    dit["data"].pop("latents", None)
    for section, name, default in KEY_NEUTRAL_DEFAULTS:  # settings added later: at their default, no new key
        if tok.get(section, {}).get(name) == default:
            tok[section].pop(name)
    blob = json.dumps({"tokenizer": tok, "dit": dit, "image_size": scale.image_size}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def eval_dir_name(scale: Scale, split: str, judge_name: str | None) -> str:
    """The evaluation folder inside a cell: one per (split, sample settings, judge)."""
    blob = json.dumps([scale.per_class, scale.sample_steps, scale.convergence_every, judge_name], sort_keys=True)
    return f"eval-{split}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


class CellBusy(RuntimeError):
    """Another process holds the cell (raised only when not waiting for it)."""


@contextlib.contextmanager
def _locked(cell_dir: Path, wait: bool = True):
    """One process at a time per cell folder: with `wait`, block until the holder is done, else raise
    CellBusy at once."""
    cell_dir.mkdir(parents=True, exist_ok=True)
    with open(cell_dir / ".lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise CellBusy(str(cell_dir)) from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_cell(cell_dir: Path, overrides: list[str], scale: Scale, data: str, judge=None, seed: int = 0,
             split: str | None = None, reference_cache: dict | None = None, wait: bool = True) -> dict:
    """Train (or resume) one (cell, seed) in `cell_dir` and evaluate it on `split` (default the scale's).

    judge: a :class:`tcae.evaluation.Judge` (or None). Returns the result, also written to
    `cell_dir/eval-<split>-<settings>/result.json`; a finished result is read back, nothing recomputed.
    A cell another process is working on is waited for, or with `wait=False` raises CellBusy.
    """
    split = split or scale.eval_split
    eval_dir = cell_dir / eval_dir_name(scale, split, judge.name if judge is not None else None)
    done = eval_dir / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    with _locked(cell_dir, wait):
        if done.is_file():  # finished by another process while this one waited
            return json.loads(done.read_text())
        return _run_cell(cell_dir, eval_dir, overrides, scale, data, judge, seed, split, reference_cache)


@contextlib.contextmanager
def _timed(path: Path, name: str):
    """Add the wall time of the block to `name` in the JSON file `path` (kept across resumes: a
    stage resumed after a kill adds the time of the session that finished it)."""
    timer = Timer()
    with timer(name):
        yield
    old = json.loads(path.read_text()) if path.is_file() else {}
    old[name] = round(old.get(name, 0.0) + timer.seconds[name], 1)
    write_json(path, old)


def _run_cell(cell_dir: Path, eval_dir: Path, overrides: list[str], scale: Scale, data: str, judge, seed: int,
              split: str, reference_cache: dict | None) -> dict:
    with _timed(cell_dir / "train_timings.json", "tokenizer"):
        tok = train_tokenizer_stage(cell_dir / "runs", scale.tokenizer_config,
                                    tokenizer_overrides(overrides, scale, data, seed))
    result = {"overrides": overrides,
              **score_tokenizer(cell_dir, eval_dir, tok, scale, data, judge, seed, split, reference_cache)}
    write_json(eval_dir / "result.json", result)
    return result


def score_tokenizer(cell_dir: Path, eval_dir: Path, tok: Path | str, scale: Scale, data: str, judge=None,
                    seed: int = 0, split: str | None = None, reference_cache: dict | None = None,
                    progress: bool = True) -> dict:
    """A (cell, seed) after its tokenizer, for any tokenizer spec `tok` (a tcae model or
    ``diffusers:PATH_OR_HUB_ID``; also `tcae score`'s): cache its train latents, train the scale's DiT,
    evaluate and diagnose the tokenizer on `split` (nothing written into it), sample class-balanced sets
    (and the convergence snapshots) and judge them. Returns the result without the cell's overrides."""
    split = split or scale.eval_split
    runs = cell_dir / "runs"
    train, eval_spec = split_spec(data, "train"), split_spec(data, split)
    train_times, eval_times = cell_dir / "train_timings.json", eval_dir / "timings.json"
    with _timed(train_times, "latents"):
        lat = latents_stage(tok, train, scale.image_size, cell_dir / "latents")
    with _timed(train_times, "dit"):
        dit = dit_stage(runs, lat, dit_overrides(scale, seed), config=scale.dit_config)
        snapshots = dit_snapshots(runs / "dit", scale.convergence_every) if scale.convergence_every else []
    with _timed(eval_times, "evaluate"):
        ev = evaluate_stage(tok, eval_spec, scale.image_size, eval_dir, train_spec=train, diag_spec=eval_spec,
                            progress=progress)
    gen, convergence = {}, []
    inception = _inception_available()
    if judge is not None or inception:
        if judge is not None and snapshots:
            with _timed(eval_times, "convergence"):
                convergence = _convergence(eval_dir, snapshots, dit, tok, scale, judge, eval_spec, seed,
                                           reference_cache)
        with _timed(eval_times, "sample"):
            images, labels = sample_stage(dit, tok, list(range(scale.num_classes)), scale.per_class, 1.0,
                                          scale.sample_steps, seed=seed)
        _save_grid(images, labels, eval_dir / "samples.png")
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
        if inception:
            with _timed(eval_times, "gen-eval"):
                gen.update(_gen_metrics(images, labels, eval_dir / "samples.npz", eval_spec, scale.image_size))
    timings = {**json.loads(train_times.read_text()), **json.loads(eval_times.read_text())}
    return {"seed": seed, "split": split, "data": data, "eval_spec": eval_spec, **ev,
            "generation": gen, "convergence": convergence, "timings_s": timings,
            "cost": tokenizer_cost(tok, scale.image_size), "cell_dir": str(cell_dir),
            "settings": {"tokenizer_steps": scale.tokenizer_steps, "dit_steps": scale.dit_steps,
                         "per_class": scale.per_class, "sample_steps": scale.sample_steps,
                         "convergence_every": scale.convergence_every}}


def decoder_gap(tok: Path | str, images: np.ndarray, labels: np.ndarray, judge: FeatureNetwork, eval_spec: str,
                image_size: int, eval_dir: Path, reference_cache: dict | None = None) -> dict[str, float]:
    """Tell the decoder's part of a judge's FD of samples from the DiT's: samples are decoded by the
    tokenizer's decoder, so even a perfect model of the latents scores about the FD of the reconstructions.

    Returns {"rfd_judge": FD of the eval split's reconstructions vs the split, "rec_class_agreement":
    the judge's accuracy on those reconstructions, "fd_judge_vs_rec": FD of the samples vs the
    reconstructions (how far the DiT is from the tokenizer's own latent distribution)}. FDs do not add
    up (only their square roots obey a triangle inequality): these are two comparisons, not a sum. The
    reconstructions are kept in `eval_dir/reconstructions.npz` (ADM layout, labels in arr_1)."""
    rec_path = _reconstructions(eval_dir, tok, eval_spec, image_size)
    with np.load(rec_path) as f:
        rec, rec_labels = f["arr_0"], f["arr_1"]
    vs_real = judge_samples(rec, rec_labels, judge, eval_spec, image_size, reference_cache, allow_unbalanced=True)
    vs_rec = judge_samples(images, labels, judge, str(rec_path), image_size, reference_cache)
    return {"rfd_judge": vs_real["fd_judge"], "rec_class_agreement": vs_real["class_agreement"],
            "fd_judge_vs_rec": vs_rec["fd_judge"]}


def _reconstructions(eval_dir: Path, tok: Path | str, eval_spec: str, image_size: int) -> Path:
    """`eval_dir/reconstructions.npz`: the eval split's reconstructions (ADM layout, labels in arr_1),
    made once: the reference of the samples' FD vs reconstructions."""
    from tcae.diffusion import save_samples_npz

    rec_path = eval_dir / "reconstructions.npz"
    if not rec_path.is_file():
        rec, rec_labels = reconstruct_split(tok, eval_spec, image_size)
        save_samples_npz(rec, rec_path, rec_labels)  # atomic
    return rec_path


def needs_decoder_gap(result: dict) -> bool:
    """Whether a judged result lacks the decoder-gap numbers (at the end or at a convergence point)."""
    gen = result.get("generation") or {}
    return "fd_judge" in gen and ("fd_judge_vs_rec" not in gen or any(
        "fd_judge_vs_rec" not in p for p in result.get("convergence", [])))


def _check_same(what: str, again: float, recorded: float) -> None:
    if abs(again - recorded) > 1e-3 * max(1.0, recorded):
        raise RuntimeError(f"{what} drawn again give FD {again:.4f}, the result says {recorded:.4f}: not the "
                           "same samples (another device or torch build?), so no decoder gap is added")


def add_decoder_gap(result: dict, scale: Scale, judge: FeatureNetwork, cell_dir: Path,
                    reference_cache: dict | None = None) -> bool:
    """Add :func:`decoder_gap`'s numbers to a (cell, seed) result finished before they existed, from its
    run in `cell_dir`: the final and the snapshot samples are drawn again (same DiT, seed and sampler),
    each must give its recorded FD, and they are then judged against the reconstructions. The cell's own
    `eval-*/result.json` is updated too. False (result unchanged) when the run is not here.
    Raises RuntimeError when re-drawn samples do not reproduce a recorded FD."""
    gen = dict(result.get("generation") or {})
    tok, dit = cell_dir / "runs" / "tokenizer" / "model", cell_dir / "runs" / "dit" / "model"
    if not needs_decoder_gap(result) or not (tok.is_dir() and dit.is_dir()):
        return False
    eval_dir = cell_dir / eval_dir_name(scale, result["split"], judge.name)
    images, labels = sample_stage(dit, tok, list(range(scale.num_classes)), scale.per_class, 1.0,
                                  scale.sample_steps, seed=result["seed"])
    again = judge_samples(images, labels, judge, result["eval_spec"], scale.image_size, reference_cache)
    _check_same(f"{cell_dir}: the final samples", again["fd_judge"], gen["fd_judge"])
    gen.update(decoder_gap(tok, images, labels, judge, result["eval_spec"], scale.image_size, eval_dir,
                           reference_cache))
    points = {p["step"]: dict(p) for p in result.get("convergence", [])}
    if points:
        snaps = dit_snapshots(cell_dir / "runs" / "dit", scale.convergence_every)
        for p in _convergence(eval_dir, snaps, dit, tok, scale, judge, result["eval_spec"], result["seed"],
                              reference_cache):
            _check_same(f"{cell_dir}: the samples of the DiT snapshot at step {p['step']}", p["fd_judge"],
                        points[p["step"]]["fd_judge"])
            points[p["step"]]["fd_judge_vs_rec"] = p["fd_judge_vs_rec"]
        points[max(points)]["fd_judge_vs_rec"] = gen["fd_judge_vs_rec"]  # the final model
    result["generation"], result["convergence"] = gen, sorted(points.values(), key=lambda p: p["step"])
    own = eval_dir / "result.json"
    if own.is_file():  # what run_cell returns to every experiment sharing the run
        cell_result = json.loads(own.read_text())
        cell_result.update(generation=result["generation"], convergence=result["convergence"])
        write_json(own, cell_result)
    return True


def _upgrade_decoder_gap(result: dict, scale: Scale, judge: FeatureNetwork, cell_dir: Path,
                         reference_cache: dict | None) -> bool:
    """add_decoder_gap under the cell's lock; a cell another worker holds, or samples that do not
    reproduce their FD, leave the result as it is (logged)."""
    if not needs_decoder_gap(result) or not (cell_dir / "runs").is_dir():
        return False
    try:
        with _locked(cell_dir, wait=False):
            return add_decoder_gap(result, scale, judge, cell_dir, reference_cache)
    except CellBusy:
        log.info("%s is busy: its decoder gap is added another time", cell_dir)
    except RuntimeError as err:
        log.warning("%s", err)
    return False


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
        step = int(snap.name.split("-")[1].split(".")[0])
        if step in points and "fd_judge_vs_rec" in points[step]:
            continue
        images, labels = sample_stage(dit_dir, tok, list(range(scale.num_classes)), scale.per_class, 1.0,
                                      scale.sample_steps, seed=seed, dit=dit_from_snapshot(snap))
        res = judge_samples(images, labels, judge, eval_spec, scale.image_size, reference_cache)
        vs_rec = judge_samples(images, labels, judge, str(rec), scale.image_size, reference_cache)
        points[step] = {"step": step, "fd_judge": res["fd_judge"], "class_agreement": res["class_agreement"],
                        "fd_judge_vs_rec": vs_rec["fd_judge"]}
        write_json(path, sorted(points.values(), key=lambda p: p["step"]))  # type: ignore[arg-type]
    return sorted(points.values(), key=lambda p: p["step"])


def _save_grid(images, labels, path: Path, per_row: int = 10) -> None:
    """One row per class: the first `per_row` samples of each."""
    import torch
    from torchvision.utils import save_image

    rows = [images[labels == c][:per_row] for c in np.unique(labels)]
    t = torch.from_numpy(np.concatenate(rows)).permute(0, 3, 1, 2).float() / 255.0
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(t, str(path), nrow=per_row, padding=1)


def _inception_available() -> bool:
    from tcae.evaluation import weights_available

    return weights_available("rfid")


def _gen_metrics(images, labels, path: Path, reference: str, image_size: int) -> dict:
    """gFID and IS of the samples (saved to `path`, ADM layout) against the `reference` data spec."""
    from tcae.diffusion import save_samples_npz
    from tcae.diffusion.gen_eval import evaluate_samples

    save_samples_npz(images, path, labels)
    metrics = evaluate_samples(path, reference, image_size=image_size, progress=False)["metrics"]
    return {k: metrics[k] for k in ("gfid", "is") if k in metrics}


# ---------------------------------------------------------------------------- an experiment
def run_experiment(name: str, scale_name: str = "tiny", out: Path | None = None, data: str | None = None,
                   seeds: int = 1, split: str | None = None, cells_dir: Path | None = None,
                   report_only: bool = False, only: list[str] | None = None, wait: bool = True) -> Path:
    """Every cell of experiment `name` with seeds 0..seeds-1 (seed-major: all cells of seed 0 first),
    then the report. Returns the report's path. `report_only`: train nothing, report the (cell, seed)
    results already in `out` (an interim report while the grid spans sessions; it lists what is missing).
    `only`: compute just these cells (the others are reported if finished, else listed as missing).

    Several processes may run the same (or overlapping) experiments at once as workers: a (cell, seed)
    another process holds is skipped and taken up again (waited for) after the others; with `wait=False` it
    is left to its holder and listed as missing (a worker over several experiments makes a first pass
    without waiting, so it never idles on one cell while other experiments have work)."""
    from tcae.evaluation import build_feature_network, judge_for_data
    from tcae.repro_report import write_report

    scale, data = resolve_scale(scale_name, data)
    split = split or scale.eval_split
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    kind = data.split(":")[1].split("@")[0] if data.startswith("builtin:") else "data"
    default_out = f"out/repro/{name}-{scale_name}" + ("" if kind in ("digits", "data") else f"-{kind}")
    out = Path(out or default_out + ("" if split == scale.eval_split else f"-{split}"))
    cells_dir = Path(cells_dir or out.parent / "cells")
    cells = experiment_cells(name, scale)
    unknown = sorted(set(only or []) - set(cells))
    if unknown:
        raise ValueError(f"--only {', '.join(unknown)}: not a cell of {name} (its cells: {'; '.join(cells)})")
    judge_name = judge_for_data(data)
    judge = build_feature_network(judge_name) if judge_name else None
    reference_cache: dict = {}
    results: dict[str, dict[int, dict]] = {cell: {} for cell in cells}
    todo = [(seed, cell) for seed in range(seeds) for cell in cells]
    missing: list[str] = []
    for attempt in ("skip busy cells", "wait for busy cells") if wait else ("skip busy cells",):
        busy = []
        for seed, cell in todo:
            target = out / _slug(cell) / f"seed-{seed}"
            if (target / "result.json").is_file():
                result = json.loads((target / "result.json").read_text())
                run_dir = cells_dir / result["key"] if "key" in result else Path(result.get("cell_dir", ""))
                if judge is not None and _upgrade_decoder_gap(result, scale, judge, run_dir, reference_cache):
                    log.info("cell %s, seed %d: decoder gap added", cell, seed)
                    write_json(target / "result.json", result)
                results[cell][seed] = result
                continue
            if report_only or (only and cell not in only):
                missing.append(f"{cell}, seed {seed}")
                continue
            overrides = cells[cell]
            key = cell_key(overrides, scale, data, seed)
            log.info("cell %s, seed %d: %s (run %s)", cell, seed, overrides, key)
            try:
                result = run_cell(cells_dir / key, overrides, scale, data, judge, seed, split, reference_cache,
                                  wait=attempt == "wait for busy cells")
            except CellBusy:  # another worker is on it: take the next cell, come back at the end
                log.info("cell %s, seed %d is being computed by another process; later", cell, seed)
                busy.append((seed, cell))
                continue
            result = {**result, "cell": cell, "overrides": overrides, "key": key}
            if judge is not None and _upgrade_decoder_gap(result, scale, judge, cells_dir / key, reference_cache):
                log.info("cell %s, seed %d: decoder gap added", cell, seed)
            _copy_figures(Path(result["cell_dir"]), scale, split, judge, target)
            write_json(target / "result.json", result)
            results[cell][seed] = result
        todo = busy
    if not wait:
        missing += [f"{cell}, seed {seed} (another process holds it)" for seed, cell in todo]
    if report_only and not any(results.values()):
        raise FileNotFoundError(f"--report-only: no finished (cell, seed) result under {out}")
    floor = _real_floor(out, judge, scale, data, split, reference_cache) if judge is not None else None
    results = {cell: r for cell, r in results.items() if r}
    return write_report(out, name, scale_name, scale, data, split, results, judge, seeds, floor, missing)


def _real_floor(out: Path, judge, scale: Scale, data: str, split: str, reference_cache: dict) -> dict | None:
    """The judge's verdict on as many real images as the samples (class-balanced, from the val split when
    evaluating on test, else from train) against the evaluation split: the best FD at this sample count."""

    from tcae.data import build_dataset

    path = out / "floor.json"
    if path.is_file():
        return json.loads(path.read_text())
    source = split_spec(data, "val" if split == "test" else "train")
    ds = build_dataset(source, scale.image_size, train=False)
    picked: dict[int, list] = {c: [] for c in range(scale.num_classes)}
    for i in range(len(ds)):
        item = ds[i]
        if len(picked.get(item["label"], [0] * scale.per_class)) < scale.per_class:
            picked[item["label"]].append(item["image"])
        if all(len(v) == scale.per_class for v in picked.values()):
            break
    labels = np.concatenate([[c] * len(v) for c, v in picked.items()]).astype(np.int64)
    images = np.concatenate([np.stack([(x.permute(1, 2, 0).numpy() + 1) * 127.5 for x in v]) for v in picked.values()
                             if v]).round().clip(0, 255).astype(np.uint8)
    res = judge_samples(images, labels, judge, split_spec(data, split), scale.image_size, reference_cache)
    floor = {"source": source, "num_samples": int(len(labels)), "fd_judge": res["fd_judge"],
             "class_agreement": res["class_agreement"]}
    write_json(path, floor)
    return floor


def _copy_figures(cell_dir: Path, scale: Scale, split: str, judge, target: Path) -> None:
    eval_dir = cell_dir / eval_dir_name(scale, split, judge.name if judge is not None else None)
    target.mkdir(parents=True, exist_ok=True)
    for name in ("reconstructions.png", "samples.png"):
        if (eval_dir / name).is_file():
            shutil.copyfile(eval_dir / name, target / name)
