"""Is "FD vs rec." comparable across tokenizers? A check on the DiT-share numbers of the reports.

"FD vs rec." compares a cell's samples with that cell's own reconstructions. A blurrier decoder puts its
reconstructions in a smaller region of the judge's feature space, so the same DiT error may read as a
smaller FD. This script measures, for every finished test-split run of the grid, from the run's saved
reconstructions of the test split (``out/repro-fashion-cells/KEY/eval-test-*/reconstructions.npz``):

- ``rec. acc.``: the judge's accuracy on the reconstructions (the ceiling of the samples' class agreement),
- ``tr Σ_rec``: the trace of the reconstructions' feature covariance (the scale FD vs rec. is measured in),

and the DiT-share numbers rescaled by them: FD vs rec. @ 320 / tr Σ_rec (unitless), and class agreement
at the 640-step snapshot and at the end / rec. acc. Usage, from the repository root:

    OMP_NUM_THREADS=1 .venv/bin/python docs/repro-fashion/feature_scale.py > docs/repro-fashion/feature-scale.md
"""

from __future__ import annotations

import glob
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from tcae.data.fashion import FashionMNISTDataset
from tcae.evaluation.judges import build_judge
from tcae.studies.cells import eval_dir_name, resolve_scale
from tcae.studies.report import compare, summarize

ROOT = Path(__file__).resolve().parent
EXPERIMENTS = ("stc-ssl", "ssl-method", "channels", "token-scaling", "ssl-causes")
# (experiment, X, Y): the comparisons of the reports' DiT-share verdicts, X against Y
PAIRS = (
    ("stc-ssl", "staged, no SSL", "single-stage, no SSL"),
    ("stc-ssl", "single-stage, SSL", "single-stage, no SSL"),
    ("stc-ssl", "staged, SSL", "staged, no SSL"),
    ("stc-ssl", "staged, SSL", "single-stage, no SSL"),
    ("ssl-method", "iBOT", "DINO"),
    ("ssl-method", "DINO", "none"),
    ("channels", "c=16", "c=8"),
    ("token-scaling", "p=2, single-stage", "p=8, single-stage"),
    ("token-scaling", "p=2, staged", "p=8, staged"),
    ("ssl-causes", "staged, SSL, alpha=1, full-image recon", "staged, no SSL"),
    ("ssl-causes", "staged, SSL, alpha=10", "staged, no SSL"),
    ("ssl-causes", "staged, SSL, alpha=10, full-image recon", "staged, no SSL"),
)
# metric -> (column, True when higher is better)
VERDICT_METRICS = {"fd_rel": ("FD vs rec. @ 320 / tr Σ_rec (x1000)", False),
                   "ca_rel": ("class agr. @ 640 / rec. acc.", True)}


def judge_stats(judge: torch.nn.Module, images: torch.Tensor, labels: np.ndarray) -> tuple[float, float]:
    """(accuracy, trace of the feature covariance) of uint8 images (N, H, W, C)."""
    feats, preds = [], []
    for i in range(0, len(images), 1000):
        x = images[i:i + 1000].permute(0, 3, 1, 2).float() / 127.5 - 1
        out = judge(x)
        feats.append(out["features"])
        preds.append(out["logits"].argmax(1))
    f = torch.cat(feats).double().numpy()
    return float((torch.cat(preds).numpy() == labels).mean()), float(np.trace(np.cov(f, rowvar=False)))


def mean_std(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.3g} ± {v.std(ddof=1):.2g}" if len(v) > 1 else f"{v.mean():.3g}"


def runs() -> dict[str, dict[str, list[dict]]]:
    """experiment -> cell label -> the finished test-split result.json of each seed."""
    out: dict[str, dict[str, list[dict]]] = {}
    for exp in EXPERIMENTS:
        cells: dict[str, list[dict]] = defaultdict(list)
        for path in sorted(glob.glob(str(ROOT / exp / "*" / "seed-*" / "result.json"))):
            result = json.loads(Path(path).read_text())
            cells[result["cell"]].append(result)
        out[exp] = dict(cells)
    return out


def main() -> None:
    judge = build_judge("fashion").eval()
    scale, _ = resolve_scale("tiny", "builtin:fashion")
    eval_dir = eval_dir_name(scale, "test", judge.name)  # the folder the reports' numbers came from
    test = FashionMNISTDataset("test", scale.image_size)  # padded exactly as the models saw it
    real = torch.stack([test.padded_uint8(i) for i in range(len(test))])[..., None]
    real_acc, real_trace = judge_stats(judge, real, test.labels[test.indices])
    cache: dict[tuple[str, int], tuple[float, float]] = {}
    table: dict[tuple[str, str], dict[str, list[float]]] = {}
    print("# Is FD vs rec. comparable across tokenizers? (`feature_scale.py`)\n")
    print(__doc__.split("\n", 1)[1].split("Usage")[0].strip() + "\n")
    print(f"Real test split: judge accuracy {real_acc:.4f}, tr Σ {real_trace:.1f}. Test split, mean ± std over "
          "seeds (ddof=1).\n")
    for exp, cells in runs().items():
        print(f"## {exp}\n")
        print("| cell | seeds | rec. acc. | tr Σ_rec | FD vs rec. @ 320 | / tr Σ_rec (x1000) | class agr. @ 640 "
              "| / rec. acc. | final class agr. | / rec. acc. |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for cell, results in cells.items():
            cols = defaultdict(list)
            for r in results:
                key = (r["key"], r["seed"])
                if key not in cache:
                    npz = np.load(ROOT.parents[1] / r["cell_dir"] / eval_dir / "reconstructions.npz")
                    cache[key] = judge_stats(judge, torch.from_numpy(npz["arr_0"]), npz["arr_1"])
                acc, trace = cache[key]
                snap = {s["step"]: s for s in r["convergence"]}
                cols["acc"].append(acc)
                cols["trace"].append(trace)
                cols["fd"].append(snap[320]["fd_judge_vs_rec"])
                cols["fd_rel"].append(1000 * snap[320]["fd_judge_vs_rec"] / trace)
                cols["ca"].append(snap[640]["class_agreement"])
                cols["ca_rel"].append(snap[640]["class_agreement"] / acc)
                cols["final"].append(r["generation"]["class_agreement"])
                cols["final_rel"].append(r["generation"]["class_agreement"] / acc)
            table[exp, cell] = cols
            print(f"| {cell} | {len(results)} | " + " | ".join(mean_std(cols[k]) for k in
                  ("acc", "trace", "fd", "fd_rel", "ca", "ca_rel", "final", "final_rel")) + " |")
        print()
    print("## Verdicts on the rescaled DiT share\n")
    print("The reports' rule (`tcae.studies.report.compare`): a difference within the larger seed std (ddof=1) is "
          "no difference; X vs Y in the metric's good direction (lower rescaled FD, higher rescaled class "
          "agreement).\n")
    print("| experiment | X | Y | metric | X - Y | spread | X vs Y |")
    print("|---|---|---|---|---|---|---|")
    for exp, x, y in PAIRS:
        if (exp, x) not in table or (exp, y) not in table:
            continue
        for key, (name, higher_better) in VERDICT_METRICS.items():
            outcome, diff, spread = compare(summarize(table[exp, x][key]), summarize(table[exp, y][key]),
                                            higher_better)
            spread_text = "n/a" if spread is None else f"{spread:.2g}"
            print(f"| {exp} | {x} | {y} | {name} | {diff:.3g} | {spread_text} | {outcome} |")
    print()


if __name__ == "__main__":
    main()
