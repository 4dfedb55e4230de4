"""Reporting evaluation results: JSON files, console tables, and a side-by-side comparison
(one Markdown table and a matplotlib bar plot) of several models on the same data."""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

_PACKAGES = ("tcae", "torch", "torchvision", "torchmetrics", "torch-fidelity", "lpips", "timm", "scipy",
             "scikit-learn", "numpy")


def environment_versions() -> dict[str, str | None]:
    """Versions of python and of the packages the numbers depend on (None when not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)  # JSON has no inf/nan; PSNR of identical images is inf
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
        return _jsonable(x.item())
    return x


def results_to_json(results: dict[str, Any] | Sequence[dict[str, Any]], path: str | os.PathLike | None = None,
                    **extra: Any) -> str:
    """Serialise one result dict (from ``evaluate``/``diagnose``) or a list of them (as
    ``{"results": [...]}``), plus ``extra`` top-level keys, to JSON text; write it to ``path`` if given.
    Non-finite floats become strings ("inf", "nan")."""
    payload: dict[str, Any] = dict(results) if isinstance(results, dict) else {"results": list(results)}
    payload.update(extra)
    text = json.dumps(_jsonable(payload), indent=2)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")
    return text


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"
    return str(v)


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of one evaluation result: one line per metric, then the image count."""
    rows = [(result.get("labels", {}).get(k, k), _fmt(v)) for k, v in result["metrics"].items()]
    rows.append(("images", str(result.get("num_images", "?"))))
    w = max(len(r[0]) for r in rows)
    title = f"{result.get('model', {}).get('name') or 'model'} on {result.get('data', '?')}"
    return "\n".join([title, "-" * max(len(title), w + 12)] + [f"{k:<{w}}  {v}" for k, v in rows])


def _shape_cells(result: dict[str, Any]) -> list[str]:
    """The model's compression f and latent channels (from its config), "-" where unknown."""
    config = result.get("model", {}).get("config") or {}
    return [str(config.get("compression", "-")), str(config.get("latent_channels", "-"))]


def comparison_markdown(results: Sequence[dict[str, Any]], names: Sequence[str]) -> str:
    """One Markdown table: a row per model with its compression f and latent channels, a column per metric
    (union over results, first-seen order)."""
    if len(results) != len(names):
        raise ValueError(f"{len(results)} results but {len(names)} names")
    keys: list[str] = []
    labels: dict[str, str] = {}
    for r in results:
        for k in r["metrics"]:
            if k not in keys:
                keys.append(k)
                labels[k] = r.get("labels", {}).get(k, k)
    head = ["model", "f", "channels"] + [labels[k] for k in keys] + ["images"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in zip(names, results):
        cells = [name, *_shape_cells(r)] + [_fmt(r["metrics"][k]) if k in r["metrics"] else "-" for k in keys]
        lines.append("| " + " | ".join(cells + [str(r.get("num_images", "?"))]) + " |")
    data = {r.get("data") for r in results}
    if len(data) == 1:
        lines.append(f"\nData: `{data.pop()}`.")
    return "\n".join(lines) + "\n"


def compare(results: Sequence[dict[str, Any]], names: Sequence[str], out_md: str | os.PathLike | None = None,
            out_png: str | os.PathLike | None = None) -> str:
    """Side-by-side comparison of several evaluation results on the same data.

    Writes the Markdown table (:func:`comparison_markdown`) to ``out_md`` and a bar plot (one panel
    per metric, one bar per model; matplotlib, Agg backend) to ``out_png``. Returns the Markdown.
    """
    md = comparison_markdown(results, names)
    if out_md is not None:
        Path(out_md).parent.mkdir(parents=True, exist_ok=True)
        Path(out_md).write_text(md)
    if out_png is not None:
        _bar_plot(results, names, out_png)
    return md


def _bar_plot(results: Sequence[dict[str, Any]], names: Sequence[str], path: str | os.PathLike) -> None:
    import matplotlib

    matplotlib.use("Agg")  # headless: no display needed
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys(k for r in results for k in r["metrics"]))
    fig, axes = plt.subplots(1, len(keys), figsize=(max(3.0, 2.2 + 0.5 * len(names)) * len(keys), 3.6),
                             squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, k in zip(axes[0], keys):
        vals = [float(r["metrics"].get(k, float("nan"))) for r in results]
        shown = [v if math.isfinite(v) else 0.0 for v in vals]
        bars = ax.bar(range(len(names)), shown, color=[colors[i % len(colors)] for i in range(len(names))])
        for b, v in zip(bars, vals):
            ax.annotate(_fmt(v), (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                        fontsize=8)
        label = next((r.get("labels", {}).get(k) for r in results if k in r.get("labels", {})), k)
        better = "higher" if k in ("psnr", "ssim") else "lower"
        ax.set_title(f"{label}\n({better} is better)", fontsize=9)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
