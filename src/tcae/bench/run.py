"""`run_bench`: TC-AE presets and DC-AE measured side by side in one process, JSON and Markdown out.

Fairness rules (see benchmarks/README.md):
- every model gets the same input batch, device, dtype policy, warm-up and number of repeats;
- bf16 (and fp16) is `torch.autocast` with fp32 weights, as training runs, for every model;
- inference timings are *interleaved*: each timed round runs every model once per phase, so load from
  other processes hits all models alike and the ratios stay meaningful on a shared machine;
- the training step (forward, L1 loss against the input, backward, AdamW step) runs model after model,
  so only one optimizer state is alive at a time.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from tcae.bench.core import (
    autocast_context,
    count_call_flops,
    matmul_peak,
    parse_dtype,
    peak_memory,
    tensor_bytes,
    throughput_stats,
    timed_call,
)
from tcae.bench.dcae import DCAE_COMPRESSION, DCAE_HUB_ID, DCAE_NAME, build_dcae

INFERENCE_PHASES = ("encode", "decode", "encode_decode")
PHASES = (*INFERENCE_PHASES, "train_step")
DEFAULT_MODELS = ("tcae-tiny", "tcae-s", "tcae-b", DCAE_NAME)

DEFINITIONS = {
    "flops": "torch.utils.flop_counter (tcae.models.flops.flop_counter: CPU attention included; grouped-conv "
             "backward counted as 2x its forward, where torch's formula counts the weight gradient groups-fold), "
             "multiply-add = 2 FLOPs, per image = batch count / batch size; matmul/conv/attention only",
    "images_per_s": "batch / wall time of one call after warm-up (CUDA synchronised); median, min, max, "
                    "q1, q3 over the repeats",
    "achieved_flops_per_s": "FLOPs per image x median images/s",
    "peak_fraction": "achieved FLOP/s / measured matmul peak (matmul_peak) of the same device and dtype",
    "peak_memory_bytes": "extra memory one call needs beyond what was allocated before it (weights and "
                         "optimizer state excluded). CUDA: max_memory_allocated - memory_allocated before. "
                         "CPU: growth of the process's peak resident set (VmHWM reset via "
                         "/proc/self/clear_refs after malloc_trim): tensors plus library workspaces",
    "dtype": "fp32: plain fp32; bf16/fp16: torch.autocast with fp32 weights (as in training)",
    "train_step": "model forward under autocast, L1 loss against the input, backward, AdamW step",
    "vs_baseline": "ratio to the baseline model in the same dtype: flops = this/baseline FLOPs, "
                   "images_per_s = this/baseline median images/s",
}


@dataclass
class Candidate:
    """One model under test: encode(x) -> latent, decode(z) -> image, optional train_step(x)."""

    name: str
    encode: Callable[[torch.Tensor], torch.Tensor]
    decode: Callable[[torch.Tensor], torch.Tensor]
    train_step: Callable[[torch.Tensor], object] | None = None
    params: int | None = None
    info: dict = field(default_factory=dict)
    flops: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------- measurement
def _fn(phase: str, cand: Candidate, x: torch.Tensor, z: torch.Tensor) -> Callable[[], object]:
    if phase == "encode":
        return lambda: cand.encode(x)
    if phase == "decode":
        return lambda: cand.decode(z)
    if phase == "encode_decode":
        return lambda: cand.decode(cand.encode(x))
    if phase == "train_step":
        return lambda: cand.train_step(x)
    raise ValueError(phase)


def _warm(phase: str, cand: Candidate, fn: Callable[[], object], warmup: int, device, memory: bool,
          batch: int, out: dict) -> None:
    """Untimed calls: one that counts FLOPs (if not known yet), then `warmup` plain ones, the last measuring memory
    (never the counting call: FlopCounterMode's own allocations would show up as the model's)."""
    if phase not in cand.flops and phase != "encode_decode":
        cand.flops[phase] = count_call_flops(fn) // batch
    for i in range(max(1, warmup)):
        measure = memory and i == max(1, warmup) - 1
        with peak_memory(device) if measure else contextlib.nullcontext({}) as mem:
            fn()
        if measure:
            out.setdefault("peak_memory_bytes", {})[phase] = mem["peak_bytes"]


def _measure(cands: Sequence[Candidate], images: torch.Tensor, device, dtype: str, repeats: int, warmup: int,
             train: bool, memory: bool) -> dict[str, dict]:
    """Interleaved inference timing of all candidates, then each candidate's training step."""
    batch = images.shape[0]
    results: dict[str, dict] = {c.name: {} for c in cands}
    times: dict[tuple[str, str], list[float]] = {}
    with torch.no_grad(), autocast_context(device, dtype):
        latents = {c.name: c.encode(images) for c in cands}
        fns = {(c.name, p): _fn(p, c, images, latents[c.name]) for c in cands for p in INFERENCE_PHASES}
        for phase in INFERENCE_PHASES:
            for c in cands:
                _warm(phase, c, fns[c.name, phase], warmup, device, memory, batch, results[c.name])
        for _ in range(repeats):
            for phase in INFERENCE_PHASES:
                for c in cands:
                    times.setdefault((c.name, phase), []).append(timed_call(fns[c.name, phase], device))
    del latents, fns
    if train:
        for c in cands:
            if c.train_step is None:
                continue
            fn = _fn("train_step", c, images, images)
            _warm("train_step", c, fn, warmup, device, memory, batch, results[c.name])
            times[c.name, "train_step"] = [timed_call(fn, device) for _ in range(repeats)]
            closer = c.info.pop("_close_train", None)
            if closer is not None:
                closer()
    for c in cands:
        res = results[c.name]
        flops = dict(c.flops)
        if "encode" in flops and "decode" in flops:
            flops["encode_decode"] = flops["encode"] + flops["decode"]
        res["flops_per_image"] = {p: flops[p] for p in PHASES if p in flops}
        res["images_per_s"] = {p: throughput_stats(times[c.name, p], batch) for p in PHASES
                               if (c.name, p) in times}
    return results


def _add_rates(res: dict, peak: float | None) -> dict:
    res["achieved_flops_per_s"] = {
        p: res["flops_per_image"][p] * ips["median"] for p, ips in res["images_per_s"].items()
        if p in res["flops_per_image"]
    }
    if peak:
        res["peak_fraction"] = {p: v / peak for p, v in res["achieved_flops_per_s"].items()}
    return res


def benchmark_model(name: str, encode_fn: Callable, decode_fn: Callable, train_step_fn: Callable | None = None, *,
                    images: torch.Tensor, dtype: str = "fp32", repeats: int = 5, warmup: int = 1,
                    peak_flops: float | None = None, params: int | None = None, memory: bool = True) -> dict:
    """Measure one model: per-image FLOPs, images/s (encode, decode, encode+decode, training step),
    peak memory, achieved FLOP/s and its fraction of `peak_flops` (e.g. `matmul_peak(...)["flops_per_s"]`).

    encode_fn / decode_fn run under no_grad and `dtype`'s autocast; train_step_fn(images) runs as is
    (it does its own autocast, backward and optimizer step). One untimed call counts FLOPs, then at
    least one warm-up call; the last warm-up call measures memory.
    """
    cand = Candidate(name, encode_fn, decode_fn, train_step_fn, params)
    res = _measure([cand], images, images.device, dtype, repeats, warmup, train_step_fn is not None, memory)[name]
    res = {"model": name, "dtype": dtype, "params": params, **res}
    return _add_rates(res, peak_flops)


# ---------------------------------------------------------------------------- models
def _make_train_step(module: torch.nn.Module, forward: Callable, device, dtype: str) -> tuple[Callable, Callable]:
    state: dict = {}

    def step(x: torch.Tensor) -> float:
        if "opt" not in state:
            module.train()
            state["opt"] = torch.optim.AdamW(module.parameters(), lr=1e-5)
        opt = state["opt"]
        with autocast_context(device, dtype):
            loss = F.l1_loss(forward(x).float(), x.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    def close() -> None:
        state.clear()
        module.zero_grad(set_to_none=True)
        module.eval()

    return step, close


def build_candidate(name: str, device, dtype: str, image_size: int, *, train: bool = True,
                    compile: bool = False, channels_last: bool = False, seed: int = 0) -> Candidate:
    """A Candidate for a TC-AE preset name or 'dc-ae-f32c32' (random weights, eval mode)."""
    from tcae.models import create_model, list_models

    torch.manual_seed(seed)
    if name == DCAE_NAME:
        if image_size % DCAE_COMPRESSION:
            raise ValueError(f"{DCAE_NAME} needs an image size divisible by {DCAE_COMPRESSION}, got {image_size}")
        module = build_dcae()
        enc, dec = (lambda x: module.encode(x).latent), (lambda z: module.decode(z).sample)
        fwd = lambda x: module(x).sample  # noqa: E731
        info = {"kind": "dc-ae", "config": f"{DCAE_HUB_ID} (published config, random weights)"}
    elif name in list_models():
        module = create_model(name)
        f = module.config.compression
        if image_size % f:
            raise ValueError(f"{name} needs an image size divisible by its compression {f}, got {image_size}")
        enc, dec, fwd = module.encode, module.decode, (lambda x: module(x).sample)
        info = {"kind": "tc-ae", "config": module.config.to_dict()}
    else:
        raise ValueError(f"unknown model {name!r}; choose TC-AE presets ({', '.join(list_models())}) "
                         f"or {DCAE_NAME!r}")
    module = module.to(device).eval()
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
        def nhwc(fn):  # inputs in channels-last too, for every phase including the training step
            return lambda t: fn(t.contiguous(memory_format=torch.channels_last))

        enc, dec, fwd = nhwc(enc), nhwc(dec), nhwc(fwd)
    if compile:
        enc, dec, fwd = torch.compile(enc), torch.compile(dec), torch.compile(fwd)
    cand = Candidate(name, enc, dec, params=sum(p.numel() for p in module.parameters()), info=info)
    cand.info["weight_bytes"] = tensor_bytes(module)
    if train:
        cand.train_step, cand.info["_close_train"] = _make_train_step(module, fwd, device, dtype)
    cand.info["_module"] = module
    return cand


# ---------------------------------------------------------------------------- the run
def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_bench(models: Sequence[str] = DEFAULT_MODELS, image_size: int = 256, batch_size: int = 2,
              dtypes: Sequence[str] = ("fp32", "bf16"), device: str = "cpu", repeats: int = 5, warmup: int = 1,
              train_step: bool = True, memory: bool = True, compile: bool = False, channels_last: bool = False,
              baseline: str | None = DCAE_NAME, matmul_size: int | None = None, seed: int = 0,
              log: Callable[[str], None] | None = None) -> dict:
    """Benchmark `models` side by side; returns the JSON-ready dict (see `to_markdown`).

    Per dtype: measures the matmul peak, builds every model fresh, times them interleaved, runs each
    training step, then adds achieved FLOP/s, the fraction of the peak and ratios to `baseline`
    (if it is among `models`).
    """
    log = log or (lambda msg: None)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but CUDA is not available")
    for d in dtypes:
        parse_dtype(d)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    images = (torch.rand(batch_size, 3, image_size, image_size, generator=gen) * 2 - 1).to(dev)
    out: dict = {
        "meta": {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": str(dev), "device_name": _device_name(dev),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "image_size": image_size, "batch_size": batch_size, "dtypes": list(dtypes),
            "repeats": repeats, "warmup": warmup, "train_step": train_step, "compile": compile,
            "channels_last": channels_last, "baseline": baseline if baseline in models else None,
            "definitions": DEFINITIONS,
        },
        "matmul_peak": {},
        "results": [],
    }
    flops_cache: dict[str, dict[str, int]] = {}
    for dtype in dtypes:
        log(f"[{dtype}] matmul peak ...")
        peak = matmul_peak(dev, dtype, size=matmul_size)
        out["matmul_peak"][dtype] = peak
        log(f"[{dtype}] matmul peak {peak['flops_per_s'] / 1e9:.0f} GFLOP/s; building {', '.join(models)}")
        cands = [build_candidate(m, dev, dtype, image_size, train=train_step, compile=compile,
                                 channels_last=channels_last, seed=seed) for m in models]
        for c in cands:
            c.flops.update(flops_cache.get(c.name, {}))
        log(f"[{dtype}] timing (warm-up {warmup}, repeats {repeats}) ...")
        measured = _measure(cands, images, dev, dtype, repeats, warmup, train_step, memory)
        for c in cands:
            flops_cache[c.name] = dict(c.flops)
            info = {k: v for k, v in c.info.items() if not k.startswith("_")}
            res = {"model": c.name, "dtype": dtype, "params": c.params, **info, **measured[c.name]}
            out["results"].append(_add_rates(res, peak["flops_per_s"]))
            ips = res["images_per_s"]
            log(f"[{dtype}] {c.name}: " + ", ".join(f"{p} {ips[p]['median']:.3g} img/s" for p in ips))
        del cands
        # a second peak measurement after the models ran; keep the better one (the physical limit)
        again = matmul_peak(dev, dtype, size=matmul_size)
        if again["flops_per_s"] > peak["flops_per_s"]:
            out["matmul_peak"][dtype] = again
            for res in out["results"]:
                if res["dtype"] == dtype:
                    _add_rates(res, again["flops_per_s"])
    _add_ratios(out)
    return out


def _add_ratios(out: dict) -> None:
    base_name = out["meta"]["baseline"]
    if not base_name:
        return
    for dtype in out["meta"]["dtypes"]:
        base = next(r for r in out["results"] if r["model"] == base_name and r["dtype"] == dtype)
        for res in out["results"]:
            if res["dtype"] != dtype:
                continue
            res["vs_baseline"] = {
                "flops": {p: res["flops_per_image"][p] / base["flops_per_image"][p]
                          for p in res["flops_per_image"] if base["flops_per_image"].get(p)},
                "images_per_s": {p: res["images_per_s"][p]["median"] / base["images_per_s"][p]["median"]
                                 for p in res["images_per_s"] if p in base["images_per_s"]},
            }


# ---------------------------------------------------------------------------- output
def _ips(res: dict, phase: str) -> str:
    s = res["images_per_s"].get(phase)
    if s is None:
        return "-"
    return f"{s['median']:.3g} ({s['min']:.3g}-{s['max']:.3g})"


def _mib(res: dict, phase: str) -> str:
    v = res.get("peak_memory_bytes", {}).get(phase)
    return "-" if v is None else f"{v / 2**20:.0f}"


def to_markdown(out: dict, command: str | None = None) -> str:
    """The benchmark as Markdown: a header with the setup and peaks, and one table per dtype."""
    meta = out["meta"]
    lines = [
        f"# Tokenizer benchmark: {meta['image_size']} px, batch {meta['batch_size']}, {meta['device']} "
        f"({meta['device_name']}, {meta['threads']} threads)",
        "",
        f"torch {meta['torch']}, {meta['date']}; warm-up {meta['warmup']}, repeats {meta['repeats']}; "
        f"compile={meta['compile']}, channels_last={meta['channels_last']}.",
    ]
    if command:
        lines += ["", f"Command: `{command}`"]
    lines += ["", "Matmul peak (square matmul, best of 5): " + ", ".join(
        f"{d} {p['flops_per_s'] / 1e9:.0f} GFLOP/s (n={p['size']})" for d, p in out["matmul_peak"].items()), ""]
    base = meta.get("baseline")
    for dtype in meta["dtypes"]:
        rows = [r for r in out["results"] if r["dtype"] == dtype]
        lines += [f"## {dtype}", "",
                  "images/s: median (min-max) over the repeats. GFLOPs per image (multiply-add = 2). "
                  + (f"Ratios are to {base} in the same dtype. " if base else "")
                  + "% peak: achieved FLOP/s over the measured matmul peak. Memory: peak extra MiB of one call.",
                  ""]
        head = ["model", "params (M)", "enc GFLOPs", "dec GFLOPs", "enc+dec GFLOPs"]
        if base:
            head.append("FLOPs ratio")
        head += ["enc img/s", "dec img/s", "enc+dec img/s"]
        if base:
            head.append("enc+dec img/s ratio")
        head += ["train img/s", "enc % peak", "dec % peak", "train % peak", "mem enc+dec (MiB)", "mem train (MiB)"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            fl = r["flops_per_image"]
            pf = r.get("peak_fraction", {})
            cells = [r["model"], f"{r['params'] / 1e6:.1f}" if r.get("params") else "-"]
            cells += [f"{fl[p] / 1e9:.4g}" if p in fl else "-" for p in ("encode", "decode", "encode_decode")]
            if base:
                cells.append(f"{r['vs_baseline']['flops'].get('encode_decode', float('nan')):.3f}")
            cells += [_ips(r, p) for p in INFERENCE_PHASES]
            if base:
                cells.append(f"{r['vs_baseline']['images_per_s'].get('encode_decode', float('nan')):.2f}")
            cells.append(_ips(r, "train_step"))
            cells += [f"{100 * pf[p]:.0f}%" if p in pf else "-" for p in ("encode", "decode", "train_step")]
            cells += [_mib(r, "encode_decode"), _mib(r, "train_step")]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_results(out: dict, json_path: str | Path | None = None, md_path: str | Path | None = None,
                  command: str | None = None) -> str:
    """Write the JSON and/or Markdown files; returns the Markdown."""
    md = to_markdown(out, command)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(out, indent=2, default=str))
    if md_path:
        Path(md_path).parent.mkdir(parents=True, exist_ok=True)
        Path(md_path).write_text(md)
    return md
