"""`tcae repro EXPERIMENT`: re-run the paper's ablations as a grid of tokenizers + small DiTs.

Each cell trains a tokenizer (one set of overrides), evaluates and diagnoses it, caches its latents,
trains a DiT, samples and judges the samples; its `result.json` makes the grid resumable per cell.
The report puts the paper's table beside the measured one.

Scales: `tiny` runs on a CPU on `builtin:digits` (32 px); `small` and `base` are for GPUs on a real
data set (`--data`). Samples are judged by gFID/IS (against the val split) when the Inception
network's weights are present, and on digits also by a digit classifier (`tcae.pipeline.DigitsJudge`);
with neither, no samples are drawn.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from tcae.pipeline import (
    DigitsJudge,
    Timer,
    dit_stage,
    evaluate_stage,
    latents_stage,
    sample_stage,
    split_spec,
    tokenizer_cost,
    train_tokenizer_stage,
    write_json,
)

log = logging.getLogger("tcae.repro")


@dataclass
class Scale:
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


SCALES = {
    "tiny": Scale("digits", "dit-tiny", "builtin:digits", 32, 10, tokenizer_steps=400, dit_steps=1500,
                  per_class=30, base_channels=32),
    "small": Scale("s", "dit-s", "", 256, 1000, tokenizer_steps=100_000, dit_steps=100_000, per_class=10,
                   base_channels=128),
    "base": Scale("b", "dit-b", "", 256, 1000, tokenizer_steps=500_000, dit_steps=400_000, per_class=50,
                  base_channels=128),
}

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
}


def experiment_cells(name: str, scale: Scale) -> dict[str, list[str]]:
    """Cell name -> tokenizer overrides."""
    c = scale.base_channels
    if name == "stc-ssl":
        return {"single-stage, no SSL": ["model.staged=false", "ssl=false"], "staged, no SSL": ["ssl=false"],
                "single-stage, SSL": ["model.staged=false"], "staged, SSL": []}
    if name == "ssl-method":
        return {"iBOT": [], "DINO": ["ssl.patch_weight=0"], "none": ["ssl=false"]}
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


def run_cell(cell_dir: Path, overrides: list[str], scale: Scale, data: str, judge: DigitsJudge | None,
             progress: bool = True) -> dict:
    done = cell_dir / "result.json"
    if done.is_file():
        import json

        return json.loads(done.read_text())
    timer = Timer()
    with timer("tokenizer"):
        tok = train_tokenizer_stage(cell_dir / "runs", scale.tokenizer_config,
                                    ["name=tokenizer", f"steps={scale.tokenizer_steps}",
                                     f"data={split_spec(data, 'train')}", "progress=false", *scale.extra,
                                     *overrides])
    result = {"overrides": overrides, **score_tokenizer(cell_dir, tok, scale, data, judge, timer, progress)}
    write_json(done, result)
    return result


def score_tokenizer(cell_dir: Path, tok: Path | str, scale: Scale, data: str, judge: DigitsJudge | None,
                    timer: Timer, progress: bool = True, write_stats: bool = True) -> dict:
    """A cell after its tokenizer, for any tokenizer spec `tok` (also `tcae score`'s): evaluate and
    diagnose it (on the val / train split), cache its train latents, train the scale's DiT for its steps,
    draw `per_class` samples of every class (no CFG, 50 Euler steps) and judge them. `write_stats`:
    store the measured latent statistics in the tokenizer (a tcae model the cell owns)."""
    runs = cell_dir / "runs"
    val, train = split_spec(data, "val"), split_spec(data, "train")
    with timer("evaluate"):
        ev = evaluate_stage(tok, val, scale.image_size, cell_dir, train_spec=train, progress=progress,
                            write_stats=write_stats)
    with timer("latents"):
        lat = latents_stage(tok, train, scale.image_size, cell_dir / "latents")
    with timer("dit"):
        dit = dit_stage(runs, lat, ["name=dit", f"steps={scale.dit_steps}", "progress=false"],
                        config=scale.dit_config)
    gen = {}
    inception = _inception_available()
    if judge is not None or inception:
        with timer("sample"):
            images, labels = sample_stage(dit, tok, list(range(scale.num_classes)), scale.per_class, 1.0, 50)
        if judge is not None:
            gen.update(judge.judge(images, labels))
        if inception:
            with timer("gen-eval"):
                gen.update(_gen_metrics(images, labels, cell_dir / "samples.npz", val, scale.image_size))
    return {**ev, "generation": gen, "timings_s": timer.seconds, "cost": tokenizer_cost(tok, scale.image_size)}


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


def run_experiment(name: str, scale_name: str = "tiny", out: Path | None = None, data: str | None = None,
                   progress: bool = True) -> Path:
    if name not in PAPER:
        raise ValueError(f"unknown experiment {name!r} (known: {', '.join(PAPER)})")
    if scale_name not in SCALES:
        raise ValueError(f"unknown scale {scale_name!r} (known: {', '.join(SCALES)})")
    scale = SCALES[scale_name]
    data = data or scale.data
    if not data:
        raise ValueError(f"--scale {scale_name} needs --data (an ImageNet folder or shards)")
    out = Path(out or f"out/repro/{name}-{scale_name}")
    cells = experiment_cells(name, scale)
    judge = DigitsJudge.fit() if data.startswith("builtin:digits") else None
    results = {}
    for cell, overrides in cells.items():
        log.info("cell %s: %s", cell, overrides)
        results[cell] = run_cell(out / _slug(cell), overrides, scale, data, judge, progress=progress)
    report = write_report(out, name, scale_name, data, results)
    return report


def _metric(r: dict, *path: str):
    for p in path:
        if not isinstance(r, dict) or p not in r:
            return None
        r = r[p]
    return r


COLUMNS = [
    ("PSNR", ("reconstruction", "metrics", "psnr")),
    ("SSIM", ("reconstruction", "metrics", "ssim")),
    ("rFID", ("reconstruction", "metrics", "rfid")),
    ("A1 tokens", ("diagnostics", "probe_acc_tokens")),
    ("A2 latents", ("diagnostics", "probe_acc_latents")),
    ("struct. loss", ("diagnostics", "structural_loss")),
    ("recognised", ("generation", "recognised_share")),
    ("FD-digits", ("generation", "fd_digits")),
    ("gFID", ("generation", "gfid")),
    ("IS", ("generation", "is")),
    ("GFLOPs enc+dec", ("cost", "total_gflops")),
]


def write_report(out: Path, name: str, scale: str, data: str, results: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = list(results)
    head = "| cell | " + " | ".join(c for c, _ in COLUMNS) + " | train s |"
    rows = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for cell in cells:
        r = results[cell]
        vals = [_metric(r, *p) for _, p in COLUMNS]
        secs = sum(r.get("timings_s", {}).values())
        rows.append(f"| {cell} | " + " | ".join("n/a" if v is None else f"{v:.4g}" for v in vals)
                    + f" | {secs:.0f} |")
    paper = PAPER.get(name, {})
    prow = []
    for cell, vals in paper.items():
        prow.append(f"| {cell} | " + ", ".join(f"{k} {v}" for k, v in vals.items()) + " |")
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.5))
    for ax, (label, path) in zip(axes, [COLUMNS[0], COLUMNS[4], COLUMNS[6], COLUMNS[7]]):
        vals = [_metric(results[c], *path) for c in cells]
        ax.bar(range(len(cells)), [v if v is not None else 0 for v in vals])
        ax.set_xticks(range(len(cells)), cells, rotation=30, ha="right", fontsize=7)
        ax.set_title(label)
    fig.tight_layout()
    fig.savefig(out / "plots.png", dpi=110)
    plt.close(fig)
    text = "\n".join([
        f"# tcae repro {name} (scale {scale}, data {data})", "",
        f"Command: `tcae repro {name} --scale {scale}" + ("" if data.startswith("builtin:") else f" --data {data}")
        + f" --out {out}`", "",
        "## Paper (ImageNet 256x256)", "", "| cell | reported |", "|---|---|", *prow, "",
        "## Measured", "", *rows, "",
        "PSNR/SSIM on the val split; A1/A2 linear-probe accuracy on pooled encoder tokens / latents; "
        "'recognised' is the share of class-conditional samples (no CFG) that a digit classifier assigns to "
        "their class; FD-digits is a Fréchet distance in that classifier's features (not FID). "
        "rFID/gFID/IS (gFID/IS: class-conditional samples, no CFG, vs the val split) need the Inception "
        "weights and are n/a without them.", "",
        "![plots](plots.png)", "",
    ])
    report = out / "report.md"
    report.write_text(text)
    return report

