"""The report of a `tcae repro` experiment: seeds aggregated, the paper beside the measurement, verdicts.

Spread and verdict rule (stated in every report): per cell and metric, the mean and the sample
standard deviation over seeds (ddof=1) and the min..max; a comparison of cell X with cell Y counts
as a difference only when |mean_X - mean_Y| exceeds the larger of the two cells' standard
deviations, else it is "no difference". With one seed there is no spread and no verdict.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from tcae.studies.paper import PAPER, PAPER_NOTES, SCALES, Scale, experiment_cells
from tcae.util import atomic_path, write_text_atomic

# key -> (column label, path into a result, higher is better)
METRICS = {
    "psnr": ("PSNR", ("reconstruction", "metrics", "psnr"), True),
    "ssim": ("SSIM", ("reconstruction", "metrics", "ssim"), True),
    # after phase 1 alone (cells with a phase 2): what decoder fine-tuning starts from
    "psnr_p1": ("PSNR after phase 1", ("reconstruction_phase1", "metrics", "psnr"), True),
    "rfid": ("rFID", ("reconstruction", "metrics", "rfid"), False),
    "a1": ("A1 tokens", ("diagnostics", "probe_acc_tokens"), True),
    "a2": ("A2 latents", ("diagnostics", "probe_acc_latents"), True),
    "struct": ("struct. loss", ("diagnostics", "structural_loss"), False),
    "agree": ("class agreement", ("generation", "class_agreement"), True),
    "fd": ("FD-judge", ("generation", "fd_judge"), False),
    # the decoder's share of FD: reconstructions vs real; the DiT's: samples vs reconstructions
    "rfd": ("rFD-judge", ("generation", "rfd_judge"), False),
    "gap": ("FD vs rec.", ("generation", "fd_judge_vs_rec"), False),
    # at the first regular EMA snapshot (step settings.convergence_every; see metric())
    "gap1": ("FD vs rec. @ 1st snapshot", (), False),
    # the DiT's share rescaled by the decoder's feature scale (results since the evaluation stores tr Σ_rec):
    # a blurrier decoder's reconstructions span less of the judge's feature space, so the same DiT error reads as
    # a smaller FD vs rec.; dividing by tr Σ_rec (x1000) does not change when the features are scaled. Class
    # agreement at the 2nd snapshot is divided by the judge's accuracy on the reconstructions (its ceiling).
    # FD at the DiT-limited budget (settings.dit_limited_step, chosen on val: the baseline's FD there is at least
    # 3x its rFD, so the DiT, not the decoder, decides it, as in the paper)
    "fd_lim": ("FD @ DiT-limited budget", (), False),
    "gap1_rel": ("FD vs rec. @ 1st snapshot / tr Σ_rec (x1000)", (), False),
    "agree2_rel": ("class agr. @ 2nd snapshot / rec. acc.", (), True),
    "gfid": ("gFID", ("generation", "gfid"), False),
    "is": ("IS", ("generation", "is"), True),
    "gflops": ("GFLOPs enc+dec", ("cost", "total_gflops"), False),
}


def metric(result: dict, key: str) -> float | None:
    """The value of METRICS[key] in one (cell, seed) result, or None where it has none."""
    if key in RESCALED:
        return _rescaled(result, key)
    if key == "fd_lim":
        step = (result.get("settings") or {}).get("dit_limited_step")
        point = [p for p in result.get("convergence") or [] if step and p.get("step") == step]
        return float(point[0]["fd_judge"]) if point else None
    if key == "gap1":  # the point at the first regular snapshot (step convergence_every), not whatever came first
        point = _point(result, 1)
        return None if point is None or point.get("fd_judge_vs_rec") is None else float(point["fd_judge_vs_rec"])
    r = result
    for p in METRICS[key][1]:  # dict keys, or an index into a list (a convergence point)
        if isinstance(p, int) and isinstance(r, list) and -len(r) <= p < len(r):
            r = r[p]
        elif isinstance(r, dict) and p in r:
            r = r[p]
        else:
            return None
    return None if r is None or (isinstance(r, float) and math.isnan(r)) else float(r)


RESCALED = ("gap1_rel", "agree2_rel")
# metrics only newer results have: their claims are left out of a report without them (older reports unchanged)
OPTIONAL = (*RESCALED, "fd_lim", "psnr_p1")


def _point(result: dict, k: int) -> dict | None:
    """The convergence point at the k-th regular snapshot (step k * convergence_every), or None."""
    every = (result.get("settings") or {}).get("convergence_every")
    return next((p for p in result.get("convergence") or [] if every and p.get("step") == k * every), None)


def _rescaled(result: dict, key: str) -> float | None:
    gen = result.get("generation") or {}
    if key == "gap1_rel":
        gap1, trace = metric(result, "gap1"), gen.get("rec_feature_trace")
        return None if gap1 is None or not trace else 1000 * gap1 / trace
    second = _point(result, 2)
    acc = gen.get("rec_class_agreement")
    return None if second is None or not acc else second["class_agreement"] / acc


def summarize(values: list[float | None]) -> dict | None:
    """{"n", "mean", "std" (ddof=1; nan for one value), "min", "max"} of the non-missing values, or None."""
    v = np.array([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return None
    return {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else float("nan"),
            "min": float(v.min()), "max": float(v.max())}


def _fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def _fmt_summary(s: dict | None) -> str:
    if s is None:
        return "n/a"
    if s["n"] == 1:
        return _fmt(s["mean"])
    return f"{_fmt(s['mean'])} ± {_fmt(s['std'], 2)} [{_fmt(s['min'])}, {_fmt(s['max'])}]"


def compare(x: dict | None, y: dict | None, higher_better: bool) -> tuple[str, float | None, float | None]:
    """(verdict, difference mean_X - mean_Y, spread) of cell summaries x and y on one metric.

    verdict: "better" / "worse" (X than Y, in the metric's good direction), "no difference"
    (|difference| <= spread = the larger seed std), or "n/a" (missing, or one seed: no spread)."""
    if x is None or y is None:
        return "n/a", None, None
    diff = x["mean"] - y["mean"]
    if math.isnan(x["std"]) or math.isnan(y["std"]):  # one seed on either side (max() would drop a NaN)
        return "n/a (one seed: no spread)", diff, None
    spread = max(x["std"], y["std"])
    if abs(diff) <= spread:
        return "no difference", diff, spread
    return ("better" if (diff > 0) == higher_better else "worse"), diff, spread


def claims(name: str, scale: Scale) -> list[tuple[str, str, str, str, str, str]]:
    """(paper claim, statement, cell X, cell Y, metric key, expected outcome of X vs Y) per experiment;
    expected: "better", "worse" or "not better"."""
    if name == "stc-ssl":
        ss0, st0, ss1, st1 = "single-stage, no SSL", "staged, no SSL", "single-stage, SSL", "staged, SSL"
        return [
            ("2", "STC improves generation (no SSL)", st0, ss0, "fd", "better"),
            ("2", "STC improves generation (with SSL)", st1, ss1, "fd", "better"),
            ("3", "SSL improves generation (single-stage)", ss1, ss0, "fd", "better"),
            ("3", "SSL improves generation (staged)", st1, st0, "fd", "better"),
            ("3", "SSL improves the latents' linear probe (single-stage)", ss1, ss0, "a2", "better"),
            ("3", "SSL improves the latents' linear probe (staged)", st1, st0, "a2", "better"),
            ("probe", "STC keeps more class structure in the latents (A2, no SSL)", st0, ss0, "a2", "better"),
            ("probe", "STC lowers the structural loss 1 - A2/A1 (no SSL)", st0, ss0, "struct", "better"),
            ("TC-AE", "TC-AE (STC + SSL) generates better than the baseline", st1, ss0, "fd", "better"),
            ("TC-AE", "TC-AE's samples are recognised more often than the baseline's", st1, ss0, "agree", "better"),
            # at the DiT-limited budget (chosen on val), where generation measures the latents, as in the paper
            ("2 (DiT-limited)", "STC improves generation (no SSL)", st0, ss0, "fd_lim", "better"),
            ("3 (DiT-limited)", "SSL improves generation (staged)", st1, st0, "fd_lim", "better"),
            ("TC-AE (DiT-limited)", "TC-AE generates better than the baseline", st1, ss0, "fd_lim", "better"),
            # the DiT's share of FD (samples vs the tokenizer's own reconstructions) early in DiT training:
            # how easy the latents are to model, apart from the decoder's quality
            ("2 (DiT)", "STC: early samples closer to the tokenizer's reconstructions (no SSL)", st0, ss0, "gap1",
             "better"),
            ("3 (DiT)", "SSL: early samples closer to the reconstructions (single-stage)", ss1, ss0, "gap1", "better"),
            ("3 (DiT)", "SSL: early samples closer to the reconstructions (staged)", st1, st0, "gap1", "better"),
            ("TC-AE (DiT)", "TC-AE: early samples closer to the reconstructions than the baseline's", st1, ss0,
             "gap1", "better"),
        ]
    if name == "ssl-method":
        return [("3", "iBOT generates better than DINO", "iBOT", "DINO", "fd", "better"),
                ("3", "DINO generates better than no SSL", "DINO", "none", "fd", "better"),
                ("3", "iBOT generates better than no SSL", "iBOT", "none", "fd", "better"),
                ("3", "iBOT's latents probe better than no SSL's", "iBOT", "none", "a2", "better"),
                ("3 (DiT)", "iBOT: early samples closer to the reconstructions than DINO's", "iBOT", "DINO", "gap1",
                 "better"),
                ("3 (DiT)", "DINO: early samples closer to the reconstructions than no SSL's", "DINO", "none", "gap1",
                 "better")]
    if name == "dcae":  # claim 6: the same latent shape, the same objective, budgets and DiT protocol
        tc, dc = "TC-AE", "DC-AE"
        return [("6", "TC-AE reconstructs better than DC-AE (PSNR)", tc, dc, "psnr", "better"),
                ("6", "TC-AE reconstructs better than DC-AE (SSIM)", tc, dc, "ssim", "better"),
                ("6", "TC-AE's decoder is closer to real images than DC-AE's (rFD)", tc, dc, "rfd", "better"),
                ("6", "TC-AE generates better than DC-AE", tc, dc, "fd", "better"),
                ("6 (DiT-limited)", "TC-AE generates better than DC-AE", tc, dc, "fd_lim", "better"),
                ("6 (DiT)", "TC-AE: early samples closer to the reconstructions than DC-AE's", tc, dc, "gap1",
                 "better"),
                ("6 (cost)", "TC-AE costs fewer FLOPs than DC-AE", tc, dc, "gflops", "better")]
    if name == "stc-causes":
        ss0, st0, fm = "single-stage, no SSL", "staged, no SSL", "staged, no SSL, FLOP-matched"
        return [("-", "FLOP-matched staged reconstructs better than the staged (PSNR)", fm, st0, "psnr", "better"),
                ("-", "FLOP-matched staged: its decoder is closer to real images than the staged's (rFD)", fm, st0,
                 "rfd", "better"),
                ("-", "FLOP-matched staged generates better than the staged", fm, st0, "fd", "better"),
                ("2 (FLOP-matched)", "STC improves reconstruction at equal FLOPs (PSNR)", fm, ss0, "psnr", "better"),
                ("2 (FLOP-matched)", "STC improves generation at equal FLOPs", fm, ss0, "fd", "better"),
                ("2 (FLOP-matched, DiT-limited)", "STC improves generation at equal FLOPs", fm, ss0, "fd_lim",
                 "better"),
                ("2 (FLOP-matched, DiT)", "STC at equal FLOPs: early samples closer to the reconstructions", fm,
                 ss0, "gap1", "better")]
    cells = list(experiment_cells(name, scale))
    if name == "ssl-causes":
        base, *ssl = cells
        short = {c: c[len("staged, SSL, "):] for c in ssl}
        out = [(f"3 ({short[c]})", f"SSL improves generation (staged, {short[c]})", c, base, "fd", "better")
               for c in ssl]
        out += [("3 (DiT)", f"SSL: early samples closer to the reconstructions ({short[c]})", c, base, "gap1",
                 "better") for c in ssl]
        # one change at a time: alpha at the same view, the view at the same alpha
        for c in ssl:
            for d in ssl:
                a_c, a_d = c.split(", ")[2], d.split(", ")[2]
                full_c, full_d = c.endswith("full-image recon"), d.endswith("full-image recon")
                if (full_c == full_d and a_c != a_d and a_d == "alpha=1") or (a_c == a_d and full_c and not full_d):
                    out += [("-", f"{short[c]} vs {short[d]}: {what}", c, d, key, "better")
                            for key, what in (("psnr", "reconstruction"), ("rfd", "decoder FD"),
                                              ("fd", "generation"))]
        return out
    if name == "channels":
        small, big = cells
        return [("4", f"{big} reconstructs better than {small}", big, small, "psnr", "better"),
                ("4", f"{big} generates worse than {small}", big, small, "fd", "worse"),
                ("4 (DiT)", f"{big}: early samples further from the reconstructions than {small}'s", big, small,
                 "gap1", "worse")]
    if name == "token-scaling":
        # every neighbouring pair of p, and the smallest against the largest: a report whose extreme cell was
        # not run (the Fashion evidence cuts p=2 for its cost) still tests the claims on the p it has
        out = []
        for mode in ("single-stage", "staged"):
            ps = sorted(int(c[2:c.index(",")]) for c in cells if c.endswith(mode))
            cell = {p: f"p={p}, {mode}" for p in ps}
            pairs = list(zip(ps, ps[1:])) + ([(ps[0], ps[-1])] if len(ps) > 2 else [])
            expected = "better" if mode == "staged" else "not better"
            for a, b in pairs:
                out.append(("1", f"p={a} reconstructs better than p={b} ({mode})", cell[a], cell[b], "psnr", "better"))
                text = (f"with STC, p={a} generates better than p={b}" if mode == "staged" else
                        f"without STC, p={a} does not generate better than p={b}")
                out.append(("2", text, cell[a], cell[b], "fd", expected))
                out.append(("2 (DiT)", f"{text}: early samples vs the reconstructions", cell[a], cell[b], "gap1",
                            expected))
        return out
    return []


def _outcome(verdict: str, expected: str) -> str:
    if verdict.startswith("n/a"):
        return verdict
    if expected == "not better":
        return "reproduced" if verdict != "better" else "not reproduced"
    if verdict == "no difference":
        return "no difference"
    return "reproduced" if verdict == expected else "not reproduced (opposite)"


# ---------------------------------------------------------------------------- convergence
def steps_to_reach(curve: list[tuple[int, float]], target: float) -> tuple[float | None, bool]:
    """(DiT steps at which the FD curve [(step, fd)] first reaches <= target, linearly interpolated
    between checkpoints; None when never), and whether that is only an upper bound (the first
    point is already below the target)."""
    prev = None
    for step, fd in curve:
        if fd <= target:
            if prev is None:
                return float(step), True
            s0, f0 = prev
            return s0 + (f0 - target) / (f0 - fd) * (step - s0), False
        prev = (step, fd)
    return None, False


def _curve(result: dict, key: str = "fd_judge") -> list[tuple[int, float]]:
    points = result.get("convergence", [])
    if not all(key in p for p in points):
        return []
    return [(int(p["step"]), float(p[key])) for p in points]


def _mean_curve(results: list[dict]) -> list[tuple[int, float]]:
    curves = [dict(_curve(r)) for r in results]
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    return [(s, float(np.mean([c[s] for c in curves]))) for s in steps]


def speedup(fast: list[dict], base: list[dict], at_step: int | None = None) -> dict:
    """Ratio of the baseline's steps to the steps `fast` needs to reach the baseline's final FD (or its FD at
    snapshot `at_step`), per seed (seed i against seed i) and on the seed-mean curves."""
    def one(fc, bc):
        bc = [p for p in bc if at_step is None or p[0] <= at_step]
        if not fc or not bc or (at_step is not None and bc[-1][0] != at_step):
            return None
        final_step, target = bc[-1]
        steps, bound = steps_to_reach(fc, target)
        return {"target_fd": target, "baseline_steps": final_step, "steps": steps, "upper_bound": bound,
                "ratio": final_step / steps if steps else None}
    per_seed = [one(_curve(f), _curve(b)) for f, b in zip(fast, base)]
    return {"per_seed": per_seed, "mean_curve": one(_mean_curve(fast), _mean_curve(base))}


def _fmt_speedup(s: dict | None) -> str:
    if s is None:
        return "n/a"
    if s["steps"] is None:
        return f"not reached (baseline final FD {s['target_fd']:.3g})"
    ratio = f"{s['ratio']:.2f}x" if not s["upper_bound"] else f">= {s['ratio']:.2f}x"
    return f"{ratio} ({s['steps']:.0f} vs {s['baseline_steps']} steps)"


CONVERGENCE_PAIRS = {"stc-ssl": [("staged, SSL", "single-stage, no SSL", "TC-AE (STC + SSL)", "up to 4.7x"),
                                 ("staged, no SSL", "single-stage, no SSL", "STC alone", "2.7x")]}


# ---------------------------------------------------------------------------- figures
def _plots(out: Path, results: dict[str, list[dict]], fd_name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = list(results)
    panels = [("psnr", "reconstruction PSNR (dB)"), ("fd", f"{fd_name} (lower is better)"),
              (("a1", "a2"), "linear probe A1 tokens / A2 latents"), ("agree", "class agreement of samples")]
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    x = np.arange(len(cells))
    for ax, (keys, title) in zip(axes, panels):
        keys = keys if isinstance(keys, tuple) else (keys,)
        width = 0.8 / len(keys)
        for j, key in enumerate(keys):
            pos = x + (j - (len(keys) - 1) / 2) * width
            sums = [summarize([metric(r, key) for r in results[c]]) for c in cells]
            means = [s["mean"] if s else 0 for s in sums]
            errs = [s["std"] if s and s["n"] > 1 else 0 for s in sums]
            ax.bar(pos, means, width, yerr=errs, capsize=3, label=METRICS[key][0], alpha=0.75)
            for p, c in zip(pos, cells):  # every seed as a dot
                vals = [v for v in (metric(r, key) for r in results[c]) if v is not None]
                ax.plot([p] * len(vals), vals, "k.", ms=4)
        if len(keys) > 1:
            ax.legend(fontsize=7)
        ax.set_xticks(x, cells, rotation=30, ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
    fig.suptitle("bars: mean over seeds, error bars: std, dots: seeds", fontsize=8)
    fig.tight_layout()
    _save_fig(fig, out / "plots.png")
    plt.close(fig)


def _convergence_plot(out: Path, results: dict[str, list[dict]], fd_name: str, highlight: list[str]) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("fd_judge", f"{fd_name} vs the real split (EMA DiT, lower is better)"),
              ("fd_judge_vs_rec", f"{fd_name} vs the split's reconstructions: the DiT's share")]
    panels = [(k, t) for k, t in panels if any(_curve(r, k) for rs in results.values() for r in rs)]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for cell, rs in results.items():
            per_seed = [dict(_curve(r, key)) for r in rs if _curve(r, key)]
            if not per_seed:
                continue
            steps = sorted(set.intersection(*(set(c) for c in per_seed)))
            vals = np.array([[c[s] for s in steps] for c in per_seed])
            bold = not highlight or cell in highlight
            line, = ax.plot(steps, vals.mean(0), marker="o", lw=2.2 if bold else 1, alpha=1 if bold else 0.5,
                            label=cell)
            ax.fill_between(steps, vals.min(0), vals.max(0), color=line.get_color(), alpha=0.15 if bold else 0.07)
        ax.set_xlabel("DiT training steps")
        ax.set_ylabel(title, fontsize=8)
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.suptitle("generation during DiT training: mean over seeds, band min..max", fontsize=9)
    fig.tight_layout()
    _save_fig(fig, out / "convergence.png")
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------- the report
def write_report(out: Path, name: str, scale_name: str, scale: Scale, data: str, split: str,
                 results_by_seed: dict[str, dict[int, dict]], judge, seeds: int, floor: dict | None = None,
                 missing: list[str] | None = None, left_out: list[str] | None = None,
                 judge_info: dict | None = None, other_judge: list[str] | None = None,
                 judge_weights: str | Path | None = None) -> Path:
    """report.md, plots and summary.json of one experiment. `missing`: (cell, seed) runs not finished yet
    (an interim report says so at the top; its verdicts use the seeds that are there). `left_out`: cells
    of the experiment this report leaves out by choice (`--only`), named at the top and in its command.
    `judge_info`: the judge that measured the results' judge-based values (default `judge`'s);
    `other_judge`: (cell, seed) runs measured by another judge, whose judge-based values were left out.
    `judge_weights`: the judge file given to the command (`--judge-weights`), in its command line."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = {c: [r[s] for s in sorted(r)] for c, r in results_by_seed.items()}
    fd_name = f"FD-{judge.data}" if judge is not None else "FD-judge"
    keys = [k for k in METRICS if any(metric(r, k) is not None for rs in results.values() for r in rs)]
    label = {k: (fd_name if k == "fd" else "r" + fd_name if k == "rfd" else METRICS[k][0]) for k in METRICS}
    if scale.convergence_every:
        label["gap1"] = f"FD vs rec. @ step {scale.convergence_every}"
        label["gap1_rel"] = f"FD vs rec. @ step {scale.convergence_every} / tr Σ_rec (x1000)"
        label["agree2_rel"] = f"class agr. @ step {2 * scale.convergence_every} / rec. acc."
    sums = {c: {k: summarize([metric(r, k) for r in rs]) for k in keys} for c, rs in results.items()}

    _plots(out, results, fd_name)
    pairs = CONVERGENCE_PAIRS.get(name, [])
    has_conv = _convergence_plot(out, results, fd_name, [c for p in pairs for c in p[:2]])
    conv = _speedup_table(results, pairs) if has_conv else []
    share = _dit_share_table(results)
    limited = _dit_limited_table(name, results, fd_name)
    costs, unique_wall = _cost_table(results, sums)
    text = "\n".join([
        f"# tcae repro {name} (scale {scale_name}, data {data}, {seeds} seed{'s' if seeds > 1 else ''}, "
        f"evaluated on {split})", "",
        f"Command: `{_command(out, name, scale_name, scale, data, split, seeds, left_out, judge_weights)}`", "",
        *([f"Cells of `{name}` left out of this report (`--only`): {_quoted(left_out)}. Verdicts that need "
           "them are not made.", ""] if left_out else []),
        *([f"**Interim report: {len(missing)} (cell, seed) run(s) not finished yet** ({'; '.join(missing)}). "
           "Cells and verdicts below use the seeds that are there; a verdict needs at least 2 seeds.", ""]
          if missing else []),
        *([f"**Measured by another judge: {'; '.join(other_judge)}.** Their {fd_name}, class agreement and "
           "convergence values are left out (judges trained on two machines differ, by more than the seed "
           "spread); their reconstruction, probe and cost values are in.", ""] if other_judge else []),
        _settings_text(scale, split, seeds), "",
        *_curves_section(out, data),
        *(["## The scale against the paper's regime", "", scale.mapping, ""] if scale.mapping else []),
        "## Paper (ImageNet 256x256)", "", "| cell | reported |", "|---|---|",
        *[f"| {cell} | " + ", ".join(f"{k} {v}" for k, v in vals.items()) + " |"
          for cell, vals in PAPER.get(name, {}).items()], "",
        *[f"- {n}" for n in PAPER_NOTES.get(name, [])], "",
        "## Measured (mean ± std over seeds [min, max])", "", *_measured_table(sums, results, keys, label), "",
        _judge_text(judge_info or (judge.describe() if judge is not None else None), fd_name, scale, split,
                    floor), "",
        "PSNR/SSIM: reconstructions of the evaluation split; A1/A2: linear-probe accuracy on pooled encoder tokens "
        "/ flattened latents (fitted on the train split, scored on the evaluation split), structural loss 1 - A2/A1. "
        "rFID/gFID/IS need the Inception weights and are left out without them.", "",
        "![plots](plots.png)", "",
        "## Verdicts", "",
        "A difference counts only when |mean_X - mean_Y| exceeds the spread, the larger of the two cells' seed "
        "standard deviations (ddof=1); otherwise it is 'no difference'. 'X vs Y' is in the metric's good "
        "direction (lower FD and structural loss, higher PSNR, probe accuracy and class agreement are better).", "",
        *_verdict_table(name, scale, results, keys, label), "",
        *(["## Convergence: FD during DiT training", "",
           "Steps a model needs to reach the baseline's final FD, linearly interpolated between EMA snapshots "
           "(ratio = baseline steps / those steps; '>=' when the first snapshot is already below).", "",
           *conv, ""] if conv else []),
        *(["![convergence](convergence.png)", ""] if has_conv else []),
        *(["## Where the DiT limits generation", "", *limited, ""] if limited else []),
        *([f"## The DiT apart from the decoder: {fd_name} of the samples vs the split's reconstructions", "",
           "Samples are decoded by the tokenizer's own decoder, so a DiT that modelled the latents perfectly would "
           f"still score about the reconstructions' {fd_name} (the rFD column). The FD of the samples against the "
           "reconstructions of the same split measures the DiT alone: how far it is from the tokenizer's own "
           "latent distribution (FDs do not add up: two comparisons, not a split of one number). "
           "Mean ± std over seeds at each EMA snapshot (the last is the final model).", "", *share, ""]
          if share else []),
        "## Per-seed values", "", *_per_seed_table(results, keys, label), "",
        "## Cost and wall time (per seed, mean)", "", *costs, "",
        f"Wall time of this experiment's {len(unique_wall)} distinct (cell, seed) runs: "
        f"{sum(unique_wall.values()) / 3600:.2f} h "
        "(runs shared with other experiments are computed once; times are those of the sessions that ran them).", "",
    ])
    write_text_atomic(out / "report.md", text)
    write_text_atomic(out / "summary.json", json.dumps({"experiment": name, "scale": scale_name, "data": data,
                                                        "split": split, "seeds": seeds, "summaries": sums},
                                                       indent=2, default=float))
    return out / "report.md"


def _measured_table(sums: dict, results: dict[str, list[dict]], keys: list[str], label: dict) -> list[str]:
    rows = ["| cell | seeds | " + " | ".join(label[k] for k in keys) + " |", "|" + "---|" * (len(keys) + 2)]
    return rows + [f"| {c} | {len(rs)} | " + " | ".join(_fmt_summary(sums[c][k]) for k in keys) + " |"
                   for c, rs in results.items()]


def _per_seed_table(results: dict[str, list[dict]], keys: list[str], label: dict) -> list[str]:
    rows = ["| cell | seed | " + " | ".join(label[k] for k in keys) + " | run |", "|" + "---|" * (len(keys) + 3)]
    return rows + [f"| {c} | {r.get('seed', 0)} | " + " | ".join(_fmt(metric(r, k)) for k in keys)
                   + f" | `{r.get('key', '')}` |" for c, rs in results.items() for r in rs]


def _verdict_table(name: str, scale: Scale, results: dict[str, list[dict]], keys: list[str], label: dict
                   ) -> list[str]:
    """One row per claim whose two cells are there; the DiT-share claims get a rescaled twin where the
    results have the rescaled readings."""
    rows = ["| claim | statement | X | Y | metric | X - Y | spread | X vs Y | outcome |", "|" + "---|" * 9]
    todo = []
    for claim in claims(name, scale):
        if claim[4] in OPTIONAL and claim[4] not in keys:
            continue
        todo.append(claim)
        if claim[4] == "gap1":
            todo += [(*claim[:4], k, claim[5]) for k in RESCALED if k in keys]
    for claim, text, x, y, key, expected in todo:
        if x not in results or y not in results:
            continue
        sx, sy = (summarize([metric(r, key) for r in results[c]]) for c in (x, y))
        verdict, diff, spread = compare(sx, sy, METRICS[key][2])
        rows.append(f"| {claim} | {text} | {x} | {y} | {label[key]} | {_fmt(diff, 3)} | {_fmt(spread, 3)} | "
                    f"{verdict} | {_outcome(verdict, expected)} |")
    return rows


def _cost_table(results: dict[str, list[dict]], sums: dict) -> tuple[list[str], dict]:
    """(the cost rows per cell, wall seconds per distinct (cell, seed) run). Phase 2 ("decoder") gets its own
    column where a result has one."""
    stages = ["tokenizer", "decoder", "latents", "dit"]
    if not any("decoder" in r.get("timings_s", {}) for rs in results.values() for r in rs):
        stages.remove("decoder")
    names = {"tokenizer": "tokenizer s", "decoder": "phase 2 s", "latents": "latents s", "dit": "DiT s"}
    header = " | ".join(names[s] for s in stages)
    rows = [f"| cell | GFLOPs enc+dec (1 image) | {header} | evaluation s | total s |",
            "|---|---|" + "---|" * len(stages) + "---|---|"]
    unique_wall = {}
    for c, rs in results.items():
        t = [r.get("timings_s", {}) for r in rs]
        mean = {k: float(np.mean([x.get(k, 0.0) for x in t])) for k in stages}
        ev = float(np.mean([sum(v for k, v in x.items() if k not in stages) for x in t]))
        for r in rs:
            unique_wall[r.get("key", id(r))] = sum(r.get("timings_s", {}).values())
        gflops = sums[c].get("gflops")
        rows.append(f"| {c} | {_fmt(gflops['mean'] if gflops else None)} | "
                    + " | ".join(f"{mean[k]:.0f}" for k in stages) + f" | {ev:.0f} | {sum(mean.values()) + ev:.0f} |")
    return rows, unique_wall


def _speedup_table(results: dict[str, list[dict]], pairs: list[tuple[str, str, str, str]]) -> list[str]:
    if not pairs:
        return []
    rows = ["| comparison | paper | per seed | on the seed-mean curves |", "|---|---|---|---|"]
    for fast, base, what, paper in pairs:
        if fast in results and base in results:
            sp = speedup(results[fast], results[base])
            rows.append(f"| {what} ({fast}) vs {base} | {paper} | "
                        f"{'; '.join(_fmt_speedup(s) for s in sp['per_seed'])} | {_fmt_speedup(sp['mean_curve'])} |")
            limit = (results[base][0].get("settings") or {}).get("dit_limited_step")
            if limit:
                sp = speedup(results[fast], results[base], at_step=limit)
                rows.append(f"| {what} ({fast}) vs {base}, to the baseline's FD at the DiT-limited budget ({limit} "
                            f"steps) | {paper} | {'; '.join(_fmt_speedup(s) for s in sp['per_seed'])} | "
                            f"{_fmt_speedup(sp['mean_curve'])} |")
    return rows


def _dit_share_table(results: dict[str, list[dict]]) -> list[str]:
    """FD of the samples vs the reconstructions at every snapshot, mean ± std over seeds."""
    steps = sorted({p["step"] for rs in results.values() for r in rs for p in r.get("convergence", [])
                    if "fd_judge_vs_rec" in p})
    if not steps:
        return []
    rows = ["| cell | " + " | ".join(f"step {st}" for st in steps) + " |", "|" + "---|" * (len(steps) + 1)]
    for c, rs in results.items():
        row = [_fmt_summary(summarize([p["fd_judge_vs_rec"] for r in rs for p in r.get("convergence", [])
                                       if p["step"] == st and "fd_judge_vs_rec" in p])) for st in steps]
        rows.append(f"| {c} | " + " | ".join(row) + " |")
    return rows


def _quoted(cells: list[str]) -> str:
    """Cell names in quotes (ssl-method has a cell named "none")."""
    return "; ".join(f'"{c}"' for c in cells)


def _command(out: Path, name: str, scale_name: str, scale: Scale, data: str, split: str, seeds: int,
             left_out: list[str] | None = None, judge_weights: str | Path | None = None) -> str:
    data_arg = "" if data == SCALES[scale_name].data else f" --data {data}"
    kept = [c for c in experiment_cells(name, scale) if c not in (left_out or [])]
    only = f' --only "{";".join(kept)}"' if left_out else ""
    judge = f" --judge-weights {judge_weights}" if judge_weights is not None else ""
    return (f"tcae repro {name} --scale {scale_name}{data_arg}" + (f" --seeds {seeds}" if seeds > 1 else "")
            + ("" if split == scale.eval_split else f" --eval-split {split}") + only + judge + f" --out {out}")


def _judge_text(d: dict | None, fd_name: str, scale: Scale, split: str, floor: dict | None) -> str:
    """What the report says of its judge (`d`: the judge info its results recorded)."""
    from tcae.evaluation.judges import judge_identity

    if not d:
        return ""
    sha = d.get("weights_sha256")
    ident = f"weights sha256 {sha[:16]}" if sha else f"identity {judge_identity(d)} (before weight fingerprints)"
    text = (f"Judge: `{d['network']}` ({d.get('arch', '')}, {ident}), accuracy {d['accuracy']:.4f} on "
            f"`{d['accuracy_split']}`. {fd_name} is the Fréchet distance between "
            f"{scale.per_class * scale.num_classes} class-balanced samples (no CFG, "
            f"{scale.sample_steps} Euler steps) and the `{split}` split in the judge's penultimate "
            "features: not FID. Class agreement: the share of samples the judge assigns to the class "
            "they were generated for (chance 0.1).")
    if floor:
        text += (f" Floor: {fd_name} of {floor['num_samples']} real `{floor['source']}` images against "
                 f"the `{split}` split is {floor['fd_judge']:.3g} (class agreement "
                 f"{floor['class_agreement']:.3f}).")
    return text


def _settings_text(s: Scale, split: str, seeds: int) -> str:
    snaps = f", EMA snapshots every {s.convergence_every} steps" if s.convergence_every else ""
    if s.convergence_every and s.convergence_steps:
        snaps += f" and at {', '.join(str(k) for k in s.convergence_steps)}"
    phase2 = (f", then phase 2 (decoder fine-tuning, encoder frozen) `{s.decoder_config}` ({s.decoder_steps} steps)"
              if s.decoder_steps else "")
    limited = (f" The DiT-limited budget is {s.dit_limited_step} DiT steps (chosen on val: the baseline's FD there is "
               "at least 3x its rFD)." if s.dit_limited_step else "")
    return (f"Tokenizer config `{s.tokenizer_config}` ({s.tokenizer_steps} steps{phase2}), DiT config `{s.dit_config}` "
            f"({s.dit_steps} steps{snaps}{', ' + ' '.join(s.dit_extra) if s.dit_extra else ''}); seeds "
            f"0..{seeds - 1} (tokenizer, DiT and sampling seed); every metric on the `{split}` split.{limited}")


def _curves_section(out: Path, data: str) -> list[str]:
    """How many steps each phase trains, from `tcae repro curves` beside this experiment (OUT/../curves) on
    the same data: its tables and plot. Nothing where there is none."""
    from tcae.studies.curves import curve_table

    path = out.parent / "curves" / "curves.json"
    if not path.is_file():
        return []
    curves = json.loads(path.read_text())
    if curves.get("data") != data:
        return []
    chosen = curves["chosen"]

    def by_steps(phase: dict) -> dict:
        return {model: {int(s): r for s, r in points.items()} for model, points in phase.items()}

    def plateau(ok: bool, steps: int, phase: dict, cap: int | None = None) -> str:
        if ok:
            return ""
        largest = max((int(s) for points in phase.values() for s in points), default=steps)
        # below the largest measured budget without a plateau is the cap (older curves.json files do not name it)
        capped = steps < largest and (cap is None or steps == cap)
        return (f" (the most the experiments' compute affords: no plateau reached; up to {largest} steps were "
                "measured)" if capped else " (the largest budget: no plateau reached)")
    return ["## How many steps: learning curves of both phases", "",
            f"From `tcae repro curves` on `{curves['split']}`, seed 0 (`../curves/report.md`): one run per budget; "
            f"chosen is the smallest budget whose doubling changes val PSNR by less than {curves['tolerance_db']} "
            f"dB for both models. Phase 1: **{chosen['phase1_steps']} steps**"
            f"{plateau(chosen['phase1_plateau'], chosen['phase1_steps'], curves['phase1'], chosen.get('phase1_cap'))}; "
            f"phase 2: **{chosen['phase2_steps']} steps**"
            f"{plateau(chosen['phase2_plateau'], chosen['phase2_steps'], curves['phase2'])}.", "",
            "![curves](../curves/curves.png)", "", "Phase 1 (joint training):", "",
            *curve_table(by_steps(curves["phase1"])), "",
            f"Phase 2 (decoder fine-tuning) from phase 1 at {chosen['phase1_steps']} steps:", "",
            *curve_table(by_steps(curves["phase2"])), ""]


def _dit_limited_table(name: str, results: dict[str, list[dict]], fd_name: str) -> list[str]:
    """Where the DiT, not the decoder, limits generation: the baseline's FD / rFD at each DiT snapshot
    (mean over seeds); the DiT-limited budget is the last snapshot where it is at least 3 (chosen on val).
    Only for results of the whole recipe (phase 2), whose snapshots this choice is about."""
    pairs = CONVERGENCE_PAIRS.get(name)
    base = pairs[0][1] if pairs else None
    if base not in results or not all((r.get("settings") or {}).get("decoder_steps") for r in results[base]):
        return []
    rfd = summarize([metric(r, "rfd") for r in results[base]])
    curve = _mean_curve(results[base])
    if rfd is None or not curve:
        return []
    ok = [step for step, fd in curve if fd >= 3 * rfd["mean"]]
    rows = [f"Baseline ({base}): r{fd_name} {rfd['mean']:.3g}; its {fd_name} at each DiT snapshot (mean over "
            "seeds) and the ratio:", "", "| DiT step | " + " | ".join(str(s) for s, _ in curve) + " |",
            "|---|" + "---|" * len(curve), f"| {fd_name} | " + " | ".join(f"{fd:.3g}" for _, fd in curve) + " |",
            f"| / r{fd_name} | " + " | ".join(f"{fd / rfd['mean']:.2f}" for _, fd in curve) + " |", ""]
    rows.append(f"DiT-limited budget (the last snapshot with ratio >= 3): {max(ok)} steps." if ok else
                "No snapshot has ratio >= 3: at this DiT budget the decoder limits generation throughout.")
    return rows


def _save_fig(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip("."))
