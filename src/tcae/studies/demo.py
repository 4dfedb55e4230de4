"""`tcae demo`: the whole pipeline on built-in data, on a CPU, in about ten minutes.

Train a tiny TC-AE (staged + iBOT) on scikit-learn's digits (embedded: nothing to install) or, with
`--data builtin:fashion`, on Fashion-MNIST; evaluate and diagnose it, cache its latents, train a tiny
class-conditional DiT on them, sample a class-by-class grid, judge the samples with the data set's
judge (`tcae.evaluation.judges`), and write `report.md` with every figure and the commands behind it.

With `--data FOLDER` (your images) the same pipeline runs at 32 px: a class-conditional DiT and a row per
class when the folder has a sub-folder per class, else an unconditional DiT. There is no weights-free judge
of a folder's images: the report gives the reconstruction metrics, the samples and the losses, and an FD of
the samples against the folder only with a feature network (`feature_network`, or `inception_weights`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import save_image

from tcae.data import parse_spec
from tcae.studies.stages import (
    Timer,
    batch_fitting,
    dit_stage,
    evaluate_stage,
    fit_batch,
    judge_samples,
    latents_stage,
    sample_stage,
    tokenizer_cost,
    train_tokenizer_stage,
)
from tcae.util import write_json_atomic, write_text_atomic

IMAGE_SIZE = 32
# data set -> (tokenizer config, what the report calls the data)
DEMO_DATA = {"digits": ("digits", "scikit-learn's digits, 32x32"),
             "fashion": ("fashion", "Fashion-MNIST, 28x28 padded to 32x32")}


def plot_losses(run_dir: Path, keys: list[str], path: Path, title: str) -> None:
    """Loss curves from a run's scalars.jsonl (the last value logged per step wins after a resume)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: dict[int, dict] = {}
    for line in (run_dir / "scalars.jsonl").read_text().splitlines():
        r = json.loads(line)
        rows[r["step"]] = r
    steps = sorted(rows)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for k in keys:
        if k in rows[steps[-1]]:
            ax.plot(steps, [rows[s].get(k, np.nan) for s in steps], label=k)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def uint8_grid(images: np.ndarray, nrow: int, path: Path) -> None:
    t = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    save_image(t, str(path), nrow=nrow, padding=1)


def run_demo(out: Path, tokenizer_steps: int = 500, dit_steps: int = 2000, per_class: int = 10,
             cfg_scale: float = 2.0, sample_steps: int = 50, progress: bool = True,
             data: str = "builtin:digits", feature_network: str | None = None, feature_weights: str | None = None,
             inception_weights: str | None = None) -> Path:
    """The demo on `data` (builtin:digits, builtin:fashion[@DIR] or an image folder; no split): report.md in `out`.

    A folder's samples get an FD against the folder only with `feature_network` (+ `feature_weights`) or
    `inception_weights` (gFID); the built-ins are judged by their judge."""
    from tcae.data.spec import dataset_num_classes, split_spec
    from tcae.evaluation import build_feature_network, judge_for_data
    from tcae.evaluation.npz import save_samples_npz

    parsed = parse_spec(data)
    if parsed.kind not in (*DEMO_DATA, "folder") or parsed.split is not None:
        raise ValueError(f"tcae demo --data takes builtin:digits, builtin:fashion[@DIR] or an image folder (no "
                         f"split), got {data!r}")
    config = DEMO_DATA.get(parsed.kind, ("digits",))[0]  # a folder: tcae-tiny at 32 px, as on the digits
    train, val = split_spec(data, "train"), split_spec(data, "val")
    num_classes = dataset_num_classes(train)
    conditional = num_classes >= 2
    # a built-in is judged by its judge; a folder only by a network the user has the weights of
    judge_name = judge_for_data(data)
    network = (build_feature_network(judge_name) if judge_name
               else build_feature_network("inception", inception_weights) if inception_weights
               else build_feature_network(feature_network, feature_weights) if feature_network else None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timer, t0 = Timer(), time.perf_counter()
    runs = out / "runs"
    with timer("tokenizer training"):
        quiet = [] if progress else ["progress=false"]
        tok = train_tokenizer_stage(runs, config, ["name=tokenizer", f"steps={tokenizer_steps}", f"data={train}",
                                                   *_small_folder_batch(train, parsed.kind, config), *quiet])
    with timer("evaluation + diagnostics"):
        ev = evaluate_stage(tok, val, IMAGE_SIZE, out, train_spec=train, progress=progress)
    with timer("latent caching"):
        lat = latents_stage(tok, train, IMAGE_SIZE, out / "latents")
    with timer("DiT training"):
        overrides = ["name=dit", f"steps={dit_steps}", *quiet]
        dit = dit_stage(runs, lat, overrides + fit_batch(lat, "dit-tiny", overrides))
    classes = list(range(num_classes)) if conditional else [0]
    count = per_class if conditional else per_class * 10  # unconditional: as many samples as 10 classes' rows
    cfg_scale = cfg_scale if conditional else 1.0  # no classes: nothing to guide towards
    with timer("sampling"):
        images, labels = sample_stage(dit, tok, classes, count, cfg_scale, sample_steps)
    save_samples_npz(images, out / "samples.npz", labels)
    uint8_grid(images, per_class, out / "samples.png")
    gen: dict = {}
    if network is not None:
        with timer("judging"):
            if judge_name:
                gen = judge_samples(images, labels, network, val, IMAGE_SIZE)
            else:
                from tcae.evaluation.gen_eval import evaluate_samples

                res = evaluate_samples(images, val, image_size=IMAGE_SIZE, feature_network=network, progress=False)
                key = network.metric_key("g")
                gen = {"fd": res["metrics"][key], "fd_label": res["labels"][key], "num_samples": res["num_samples"]}
    plot_losses(runs / "tokenizer", ["loss", "l1", "ibot_cls", "ibot_mim"], out / "loss_tokenizer.png",
                "tokenizer (phase 1)")
    plot_losses(runs / "dit", ["loss"], out / "loss_dit.png", "DiT (flow matching)")
    results = {"timings_s": timer.seconds, "wall_s": round(time.perf_counter() - t0, 1), **ev,
               "generation": gen, "tokenizer_cost": tokenizer_cost(tok, IMAGE_SIZE),
               "settings": {"data": data, "tokenizer_config": config, "tokenizer_steps": tokenizer_steps,
                            "dit_steps": dit_steps, "cfg": cfg_scale, "sample_steps": sample_steps,
                            "per_class": per_class, "num_classes": num_classes, "class_names": _class_names(lat),
                            "num_images": _num_images(lat), "samples": len(images)}}
    write_json_atomic(out / "results.json", results)
    write_report(out, results)
    return out / "report.md"


def _small_folder_batch(train: str, kind: str, config: str) -> list[str]:
    """The tokenizer's batch fitted to a folder of fewer images than its config's batch
    (:func:`tcae.studies.stages.batch_fitting`)."""
    if kind != "folder":
        return []
    from tcae.config import TRAIN_ALIASES, TrainConfig, load_config
    from tcae.data.spec import build_dataset

    n = len(build_dataset(train, IMAGE_SIZE, train=False, transform=lambda image: image))
    return batch_fitting(n, load_config(TrainConfig, config, [], TRAIN_ALIASES).data.batch_size)


def _class_names(latents: Path) -> list[str]:
    from tcae.diffusion.latents import read_latent_meta

    return [str(n) for n in read_latent_meta(latents).get("class_names") or []]


def _num_images(latents: Path) -> int:
    from tcae.diffusion.latents import read_latent_meta

    return int(read_latent_meta(latents)["num_samples"])


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_report(out: Path, r: dict) -> None:
    rec, diag = r["reconstruction"], r["diagnostics"]
    metric_rows = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in rec.get("metrics", rec).items()
                            if isinstance(v, (int, float)))
    diag_rows = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in diag.items() if isinstance(v, (int, float)))
    st = r["settings"]
    kind = parse_spec(st["data"]).kind
    timings = ", ".join(f"{k} {v} s" for k, v in r["timings_s"].items())
    command = "tcae demo --out out/demo" + ("" if st["data"] == "builtin:digits" else f" --data {st['data']}")
    if kind in DEMO_DATA:
        about, val = f"built-in data ({DEMO_DATA[kind][1]})", f"{st['data']}:val"
    else:
        names = st.get("class_names") or []
        classes = f", {len(names)} classes: {', '.join(names)}" if len(names) >= 2 else ", no classes"
        about, val = f"your folder `{st['data']}` ({st['num_images']} images at 32 px{classes})", st["data"]
    text = f"""# tcae demo report

The whole pipeline on {about}, on this machine's CPU.
Wall time: **{r['wall_s']} s** ({timings}).

Reproduce: `{command}`{" (or `make demo`)" if st["data"] == "builtin:digits" else ""}.

## Tokenizer: tcae-tiny (config `{st['tokenizer_config']}`), staged token compression + iBOT, \
{st['tokenizer_steps']} steps

Reconstructions of `{val}` (originals, reconstructions, and the latents: their first 3 principal
components as RGB):

![reconstructions](reconstructions.png)

| reconstruction metric | value |
|---|---|
{metric_rows}

Latent diagnostics (A1: linear probe on pooled encoder tokens, A2: on latents, structural loss 1 - A2/A1;
the probes need labelled data):

| diagnostic | value |
|---|---|
{diag_rows}

Encode+decode cost at 32 px: {r['tokenizer_cost']['total_gflops']:.4f} GFLOPs.

![tokenizer loss](loss_tokenizer.png)

## Latent diffusion: dit-tiny, flow matching, {st['dit_steps']} steps

{_samples_text(r, kind)}

![DiT loss](loss_dit.png)

All figures: `results.json`.
"""
    write_text_atomic(out / "report.md", text)


def _samples_text(r: dict, kind: str) -> str:
    """The samples grid and what judges them: the built-in's judge, a feature network's FD, or nothing."""
    st, gen = r["settings"], r["generation"]
    names = st.get("class_names") or [str(c) for c in range(st.get("num_classes", 10))]
    if st.get("num_classes", 10) >= 2:
        grid = (f"Class-conditional samples, one row per class ({', '.join(names)}; CFG {st['cfg']}, "
                f"{st['sample_steps']} Euler steps):")
    else:
        grid = (f"{st['samples']} unconditional samples (the folder has no class sub-folders; "
                f"{st['sample_steps']} Euler steps, no CFG):")
    lines = [grid, "", "![samples](samples.png)", ""]
    if kind in DEMO_DATA:
        judge, totals = gen["judge"], gen["per_class_total"]
        per_class = " | ".join(f"{c}: {n}/{totals[c]}" for c, n in gen["class_agreement_per_class"].items())
        lines.append(f"The {kind} judge (`{judge['network']}`: {judge['arch']}, {judge['accuracy']:.1%} accuracy on\n"
                     f"`{judge['accuracy_split']}`) assigns **{gen['class_agreement']:.1%}** of the samples to the "
                     f"class they\nwere generated for: {per_class}.\n{gen['fd_name']} (Fréchet distance in that "
                     f"judge's penultimate features, {gen['num_samples']} samples vs\n`{gen['reference']}`; not "
                     f"FID): {gen['fd_judge']:.3g}.")
    elif "fd" in gen:
        lines.append(f"{gen['fd_label']}: **{gen['fd']:.4g}**.")
    else:
        lines.append("No judge: only the built-in data sets have a weights-free one. For a Fréchet distance of the "
                     "samples\nagainst the folder, rerun with `--inception-weights PATH` (gFID) or "
                     "`--feature-network NAME --feature-weights PATH`.")
    return "\n".join(lines)
