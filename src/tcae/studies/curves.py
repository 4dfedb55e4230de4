"""`tcae repro curves`: how many steps each training phase needs, from learning curves on the val split.

For the baseline (single-stage, no SSL) and TC-AE (staged, SSL), phase 1 is trained to each budget of the
scale's `curve_steps`, every budget its own run (the LR schedule anneals over a run's own length, so a
checkpoint half-way through a longer run is not a shorter run); then phase 2 (decoder fine-tuning, encoder
frozen, no SSL) from the chosen phase-1 run to each of `curve_decoder_steps`. Each run's exported EMA
model is scored on the evaluation split (PSNR, SSIM). The choice, per phase: the smallest budget s whose
doubling changes val PSNR by less than `TOLERANCE_DB` for both models; where no budget does, the largest
(for phase 1: the largest the grid's compute affords, the scale's `curve_budget_steps`), and the report says
the plateau was not reached, with the curve. Seed 0 (choosing, not reporting).

Runs live under the cells directory (`curve-<model>-p1-<steps>[-p2-<steps>]/`), resumable, one process
at a time per run (another worker's run is skipped, then waited for), like the experiments' cells.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tcae.data.spec import split_spec
from tcae.studies.paper import Scale, resolve_scale
from tcae.studies.stages import train_tokenizer_stage
from tcae.util import LockBusy, atomic_path, file_lock, slug, write_json_atomic, write_text_atomic

log = logging.getLogger("tcae.studies")

TOLERANCE_DB = 0.3  # doubling a phase's steps must change val PSNR by less than this, for both models
MODELS = {"baseline (single-stage, no SSL)": ["model.staged=false", "ssl=false", "loss.alpha=1"],
          "TC-AE (staged, SSL)": []}  # as stc-ssl's cells (tcae.studies.paper.experiment_cells)


def choose_steps(curves: dict[str, dict[int, float]], tolerance: float = TOLERANCE_DB, cap: int = 0
                 ) -> tuple[int, bool]:
    """(the smallest budget s, common to every curve {steps: PSNR}, whose doubling 2s changes PSNR by less
    than `tolerance` dB on every curve; whether it reached that plateau). Without such an s: the largest.
    `cap` (0: none): the most steps the experiments can afford; budgets above it are measured (they show
    what more steps would give) but never chosen."""
    steps = sorted(set.intersection(*(set(c) for c in curves.values())))
    affordable = [s for s in steps if not cap or s <= cap]
    if not affordable:
        raise ValueError(f"no measured budget is within the cap of {cap} steps (measured: {steps})")
    for s in affordable:
        if 2 * s in steps and all(abs(c[2 * s] - c[s]) < tolerance for c in curves.values()):
            return s, True
    return affordable[-1], False


def _score(model_dir: Path, eval_spec: str, image_size: int) -> dict:
    """PSNR/SSIM of one run's exported model on the evaluation split, written beside the model once."""
    from tcae.evaluation import evaluate
    from tcae.tokenizers import load_tokenizer

    path = model_dir.parent / f"curve-eval-{slug(eval_spec)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    rec = evaluate(load_tokenizer(model_dir), eval_spec, image_size=image_size, metrics=("psnr", "ssim"),
                   progress=False)
    out = {"psnr": rec["metrics"]["psnr"], "ssim": rec["metrics"]["ssim"], "num_images": rec["num_images"],
           "data": rec["data"]}
    write_json_atomic(path, out)
    return out


def _run(cells_dir: Path, name: str, config: str, overrides: list[str], eval_spec: str, image_size: int,
         wait: bool) -> dict:
    """Train (or resume, or read back) one run and score it; LockBusy when another process holds it and
    not `wait`."""
    run_root = cells_dir / name
    with file_lock(run_root / ".lock", wait=wait):
        model = train_tokenizer_stage(run_root, config, ["name=run", "progress=false", *overrides])
        return _score(model, eval_spec, image_size)


def _phase(jobs: list[tuple[str, int, str, str, list[str]]], cells_dir: Path, eval_spec: str, image_size: int
           ) -> dict[str, dict[int, dict]]:
    """Every (model, steps, run name, config, overrides) job, the longest first; a job another worker holds is
    left for a second, waiting pass."""
    out: dict[str, dict[int, dict]] = {}
    todo = sorted(jobs, key=lambda j: -j[1])
    for wait in (False, True):
        busy = []
        for model, steps, name, config, overrides in todo:
            try:
                out.setdefault(model, {})[steps] = _run(cells_dir, name, config, overrides, eval_spec, image_size,
                                                        wait)
                log.info("curves: %s, %d steps: PSNR %.3f", name, steps, out[model][steps]["psnr"])
            except LockBusy:
                busy.append((model, steps, name, config, overrides))
        todo = busy
    return out


def run_curves(scale_name: str = "tiny", data: str | None = None, out: Path | None = None,
               cells_dir: Path | None = None, split: str = "val") -> Path:
    """Both phases' learning curves (module docstring) and their report `out/report.md`; returns its path."""
    scale, data = resolve_scale(scale_name, data)
    if not scale.curve_steps or not scale.decoder_config or not scale.curve_decoder_steps:
        raise ValueError(f"scale {scale_name!r} on {data} has no learning-curve budgets (curve_steps, "
                         "decoder_config, curve_decoder_steps)")
    out = Path(out or f"out/repro/curves-{scale_name}")
    cells_dir = Path(cells_dir or out.parent / "cells")
    train, eval_spec = split_spec(data, "train"), split_spec(data, split)
    common = [f"data={train}", "seed=0", *scale.extra]
    jobs1 = [(m, s, f"curve-{slug(m, keep='')}-p1-{s}", scale.tokenizer_config, [f"steps={s}", *common, *ov])
             for m, ov in MODELS.items() for s in scale.curve_steps]
    phase1 = _phase(jobs1, cells_dir, eval_spec, scale.image_size)
    chosen1, plateau1 = choose_steps({m: {s: r["psnr"] for s, r in c.items()} for m, c in phase1.items()},
                                     cap=scale.curve_budget_steps)
    jobs2 = [(m, s, f"curve-{slug(m, keep='')}-p1-{chosen1}-p2-{s}", scale.decoder_config,
              [f"steps={s}", f"data={train}", f"image_size={scale.image_size}", "seed=0",
               f"init={cells_dir / f'curve-{slug(m, keep=str())}-p1-{chosen1}' / 'run'}"])
             for m in MODELS for s in scale.curve_decoder_steps]
    phase2 = _phase(jobs2, cells_dir, eval_spec, scale.image_size)
    chosen2, plateau2 = choose_steps({m: {s: r["psnr"] for s, r in c.items()} for m, c in phase2.items()})
    summary = {"scale": scale_name, "data": data, "split": split, "tolerance_db": TOLERANCE_DB,
               "phase1": phase1, "phase2": phase2, "chosen": {"phase1_steps": chosen1, "phase1_plateau": plateau1,
                                                              "phase1_cap": scale.curve_budget_steps,
                                                              "phase2_steps": chosen2, "phase2_plateau": plateau2}}
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "curves.json", summary)
    _plot(out / "curves.png", phase1, phase2, chosen1)
    write_text_atomic(out / "report.md", _report(scale, scale_name, data, split, phase1, phase2, chosen1, plateau1,
                                                 chosen2, plateau2))
    return out / "report.md"


def _plot(path: Path, phase1: dict, phase2: dict, chosen1: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, curves, title in ((axes[0], phase1, "phase 1 (joint)"),
                              (axes[1], phase2, f"phase 2 (decoder) from phase 1 at {chosen1} steps")):
        for model, points in curves.items():
            steps = sorted(points)
            ax.plot(steps, [points[s]["psnr"] for s in steps], marker="o", label=model)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("steps (one run per budget)")
        ax.set_ylabel("val PSNR (dB)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def curve_table(curves: dict[str, dict[int, dict]]) -> list[str]:
    """Markdown rows: val PSNR (SSIM) per model and budget, and what each doubling changed."""
    steps = sorted({s for c in curves.values() for s in c})
    rows = ["| model | " + " | ".join(f"{s} steps" for s in steps) + " |", "|---|" + "---|" * len(steps)]
    for model, points in curves.items():
        rows.append(f"| {model} | " + " | ".join(
            f"{points[s]['psnr']:.2f} dB (SSIM {points[s]['ssim']:.3f})" if s in points else "n/a" for s in steps)
            + " |")
        gains = [f"{s}->{2 * s}: {points[2 * s]['psnr'] - points[s]['psnr']:+.2f} dB" for s in steps
                 if s in points and 2 * s in points]
        rows.append(f"| doubling | {'; '.join(gains)} |" + " |" * (len(steps) - 1))
    return rows


def _report(scale: Scale, scale_name: str, data: str, split: str, phase1: dict, phase2: dict, chosen1: int,
            plateau1: bool, chosen2: int, plateau2: bool) -> str:
    def verdict(chosen: int, plateau: bool, cap: int = 0) -> str:
        if plateau:
            return f"**{chosen} steps**: doubling it changes val PSNR by less than {TOLERANCE_DB} dB for both models"
        capped = cap and chosen == cap and max(scale.curve_steps) > cap
        why = (f"the most the experiments' compute affords (the scale's cap, {cap} steps: {scale.budget_note})"
               if capped else "the largest budget tried")
        return (f"**{chosen} steps**, {why}: the plateau was not reached (doubling still changes val PSNR by "
                f"{TOLERANCE_DB} dB or more); more steps would still help")
    return "\n".join([
        f"# Learning curves of both phases (scale {scale_name}, data {data}, evaluated on {split}, seed 0)", "",
        f"Command: `tcae repro curves --scale {scale_name} --data {data}`", "",
        f"Phase 1: config `{scale.tokenizer_config}`, one run per budget. Phase 2: config `{scale.decoder_config}` "
        f"(encoder frozen, no SSL) from the chosen phase-1 run. PSNR/SSIM of each run's exported EMA model on "
        f"`{split_spec(data, split)}`. Models: " + "; ".join(f"{m}: `{' '.join(o) or '(config defaults)'}`"
                                                          for m, o in MODELS.items()) + ".", "",
        "![curves](curves.png)", "",
        "## Phase 1 (joint training)", "", *curve_table(phase1), "",
        f"Chosen: {verdict(chosen1, plateau1, scale.curve_budget_steps)}.",
        "",
        f"## Phase 2 (decoder fine-tuning from phase 1 at {chosen1} steps)", "", *curve_table(phase2), "",
        f"Chosen: {verdict(chosen2, plateau2)}.", "",
    ])
