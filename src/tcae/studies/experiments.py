"""`tcae repro EXPERIMENT`: every cell of an experiment with seeds 0..N-1, then its report.

An experiment's folder holds `<cell>/seed-<S>/result.json` (a copy of the (cell, seed) result, which lives
with its run under the cells directory, :mod:`tcae.studies.cells`) and the report
(:mod:`tcae.studies.report`). Several processes may work through the same experiments at once.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from tcae.data import parse_spec
from tcae.studies.cells import (
    FINAL_SAMPLES,
    cell_key,
    eval_dir_name,
    judge_label,
    lacks_dit_limited,
    limited_samples_name,
    run_cell,
)
from tcae.studies.paper import Scale, experiment_cells, resolve_scale
from tcae.studies.report import write_report
from tcae.studies.stages import judge_samples, split_spec
from tcae.util import LockBusy, slug, to_uint8_hwc, write_json_atomic

log = logging.getLogger("tcae.studies")


def run_experiment(name: str, scale_name: str = "tiny", out: Path | None = None, data: str | None = None,
                   seeds: int = 1, split: str | None = None, cells_dir: Path | None = None,
                   report_only: bool = False, only: list[str] | None = None, wait: bool = True,
                   judge_weights: str | Path | None = None) -> Path:
    """Every cell of experiment `name` with seeds 0..seeds-1 (seed-major: all cells of seed 0 first),
    then the report. Returns the report's path. `report_only`: train nothing, report the (cell, seed)
    results already in `out` (an interim report while the grid spans sessions; it lists what is missing).
    `only`: compute just these cells (the others are reported if finished, else listed as missing); with
    `report_only`, report just these cells (the others are named as left out, e.g. cells cut for their cost).

    Several processes may run the same (or overlapping) experiments at once as workers: a (cell, seed)
    another process holds is skipped and taken up again (waited for) after the others; with `wait=False` it
    is left to its holder and listed as missing (a worker over several experiments makes a first pass
    without waiting, so it never idles on one cell while other experiments have work). `judge_weights`: the
    data's judge from this file (else the one cached, or trained, on this machine).

    A report's judge-based numbers (FD, class agreement, convergence) come from one judge: results measured
    by another (a judge trained on another machine) keep their reconstruction and probe values, and the
    report names them (see :func:`one_judge`)."""
    from tcae.evaluation import build_feature_network, judge_for_data

    scale, data = resolve_scale(scale_name, data)
    split = split or scale.eval_split
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    kind = parse_spec(data).kind if data.startswith("builtin:") else "data"
    default_out = f"out/repro/{name}-{scale_name}" + ("" if kind in ("digits", "data") else f"-{kind}")
    out = Path(out or default_out + ("" if split == scale.eval_split else f"-{split}"))
    cells_dir = Path(cells_dir or out.parent / "cells")
    cells = experiment_cells(name, scale)
    unknown = sorted(set(only or []) - set(cells))
    if unknown:
        raise ValueError(f"--only {', '.join(unknown)}: not a cell of {name} (its cells: {'; '.join(cells)})")
    left_out = [c for c in cells if c not in only] if report_only and only else []
    cells = {c: o for c, o in cells.items() if c not in left_out}
    judge_name = judge_for_data(data)
    if judge_weights is not None and not judge_name:
        raise ValueError(f"--judge-weights: the data {data!r} has no judge")
    judge = build_feature_network(judge_name, judge_weights) if judge_name else None
    reference_cache: dict = {}
    results: dict[str, dict[int, dict]] = {cell: {} for cell in cells}
    todo = [(seed, cell) for seed in range(seeds) for cell in cells]
    missing: list[str] = []
    stale: dict[tuple[int, str], dict] = {}  # finished before the DiT-limited budget was set: refreshed below
    for attempt in ("skip busy cells", "wait for busy cells") if wait else ("skip busy cells",):
        busy = []
        for seed, cell in todo:
            target = out / slug(cell, keep="") / f"seed-{seed}"
            if (target / "result.json").is_file():
                result = json.loads((target / "result.json").read_text())
                now = cell_key(cells[cell], scale, data, seed) if not report_only else result.get("key")
                if result.get("key") != now:  # a report mixes seeds of one configuration only
                    raise ValueError(f"{target / 'result.json'} is a result of another configuration of cell "
                                     f"{cell!r} (run {result.get('key')}, now {now}): use another --out, or "
                                     "--report-only to report the results there")
                if report_only or not lacks_dit_limited(result, scale):
                    results[cell][seed] = result
                    continue
                stale[(seed, cell)] = result  # cheap to refresh (nothing trains): done even outside --only
            if report_only or (only and cell not in only and (seed, cell) not in stale):
                missing.append(f"{cell}, seed {seed}")
                continue
            overrides = cells[cell]
            key = cell_key(overrides, scale, data, seed)
            log.info("cell %s, seed %d: %s (run %s)", cell, seed, overrides, key)
            try:
                result = run_cell(cells_dir / key, overrides, scale, data, judge, seed, split, reference_cache,
                                  wait=attempt == "wait for busy cells")
            except LockBusy:  # another worker is on it: take the next cell, come back at the end
                log.info("cell %s, seed %d is being computed by another process; later", cell, seed)
                busy.append((seed, cell))
                continue
            result = {**result, "cell": cell, "overrides": overrides, "key": key}
            _copy_figures(Path(result["cell_dir"]), scale, split, judge, target,
                          samples=name in SAMPLES_KEPT and seed == 0)
            write_json_atomic(target / "result.json", result)
            results[cell][seed] = result
        todo = busy
    for seed, cell in todo:  # still held by another process: an older result is reported as it is
        if (seed, cell) in stale:
            results[cell][seed] = stale[(seed, cell)]
        elif not wait:
            missing.append(f"{cell}, seed {seed} (another process holds it)")
    if report_only and not any(results.values()):
        raise FileNotFoundError(f"--report-only: no finished (cell, seed) result under {out}")
    results = {cell: r for cell, r in results.items() if r}
    judge_info, other_judge = one_judge(results, judge)
    floor = _real_floor(out, judge, scale, data, split, reference_cache, judge_info) if judge is not None else None
    return write_report(out, name, scale_name, scale, data, split, results, judge, seeds, floor, missing, left_out,
                        judge_info, other_judge, judge_weights)


# what a result holds that its judge measured (the rest: reconstruction, probes, cost, gFID/IS, are judge-free)
JUDGED_KEYS = ("fd_judge", "class_agreement", "class_agreement_per_class", "per_class_total", "rfd_judge",
               "rec_class_agreement", "feature_trace", "rec_feature_trace", "fd_judge_vs_rec", "judge", "fd_name",
               "reference")


def one_judge(results: dict[str, dict[int, dict]], judge) -> tuple[dict | None, list[str]]:
    """Keep the judge-based values of the results one judge measured; strip them from the others (in place).

    Judges are trained on the machine that first needs one and differ between machines (FD-fashion by 5-11%
    on the same samples, more than the seed spread), so values of two judges are never pooled. The report's
    judge is the one that measured most results (ties: this process's `judge`). Returns its info and the
    (cell, seed) runs whose judge-based values were left out."""
    from tcae.evaluation.judges import judge_identity

    def info(r: dict) -> dict | None:
        return (r.get("generation") or {}).get("judge")

    counts: dict[str, int] = {}
    for runs in results.values():
        for r in runs.values():
            if (ident := judge_identity(info(r))) is not None:
                counts[ident] = counts.get(ident, 0) + 1
    if not counts:
        return (judge.describe() if judge is not None else None), []
    live = judge_identity(judge.describe()) if judge is not None else None
    chosen = max(counts, key=lambda i: (counts[i], i == live))
    chosen_info, left = None, []
    for cell, runs in results.items():
        for seed, r in sorted(runs.items()):
            ident = judge_identity(info(r))
            if ident == chosen:
                chosen_info = chosen_info or info(r)
            elif ident is not None:
                gen = {k: v for k, v in r["generation"].items() if k not in JUDGED_KEYS}
                runs[seed] = {**r, "generation": gen, "convergence": []}
                left.append(f"{cell}, seed {seed}")
    return chosen_info, left


def _real_floor(out: Path, judge, scale: Scale, data: str, split: str, reference_cache: dict,
                judge_info: dict | None = None) -> dict | None:
    """The judge's verdict on as many real images as the samples (class-balanced, from the val split when
    evaluating on test, else from train) against the evaluation split: the best FD at this sample count.
    Measured by the report's judge (`judge_info`, default `judge`'s): None where that is not `judge` and
    floor.json holds no floor of it."""
    from tcae.data import build_dataset
    from tcae.evaluation.judges import judge_identity

    wanted = judge_identity(judge_info or judge.describe())
    path = out / "floor.json"
    if path.is_file():
        floor = json.loads(path.read_text())
        if floor.get("judge") == wanted:
            return floor
    if wanted != judge_identity(judge.describe()):
        return None
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
    images = np.concatenate([to_uint8_hwc(torch.stack(v)).numpy() for v in picked.values() if v])
    res = judge_samples(images, labels, judge, split_spec(data, split), scale.image_size, reference_cache)
    floor = {"source": source, "num_samples": int(len(labels)), "fd_judge": res["fd_judge"],
             "class_agreement": res["class_agreement"], "judge": wanted}
    write_json_atomic(path, floor)
    return floor


# experiments whose seed-0 samples are committed beside their results (ADM-layout .npz), so anyone can judge
# them with their own network: the final samples and those at the DiT-limited budget
SAMPLES_KEPT = ("stc-ssl",)


def _copy_figures(cell_dir: Path, scale: Scale, split: str, judge, target: Path, samples: bool = False) -> None:
    eval_dir = cell_dir / eval_dir_name(scale, split, judge_label(judge))
    target.mkdir(parents=True, exist_ok=True)
    names = ["reconstructions.png", "samples.png"]
    if samples:
        names += [FINAL_SAMPLES, limited_samples_name(scale.dit_limited_step)]
    for name in names:
        if (eval_dir / name).is_file():
            shutil.copyfile(eval_dir / name, target / name)
