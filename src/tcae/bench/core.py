"""Measurement primitives of `tcae bench`: timing, matmul peak, FLOPs, peak memory.

Definitions used throughout (also in the JSON's `meta.definitions`):

- FLOPs: counted by `tcae.models.flops.flop_counter` (torch.utils.flop_counter plus CPU flash-attention formulas
  and a corrected grouped-convolution backward); one multiply-add = 2 FLOPs. Per image =
  count for the batch / batch.
- images/s: batch / wall time of one call, after warm-up (CUDA synchronised), over `repeats` calls:
  median, min, max and the inter-quartile range (q1, q3).
- achieved FLOP/s: FLOPs per image x median images/s; `peak_fraction` divides it by the measured
  matmul peak of the same device and dtype (`matmul_peak`).
- peak memory: extra memory one call needs beyond what was allocated before it (weights and, for the
  training step, optimizer state are excluded). CUDA: `torch.cuda.max_memory_allocated()` minus
  `memory_allocated()` before the call. CPU: growth of the process's peak resident set (Linux VmHWM,
  reset through /proc/self/clear_refs after `malloc_trim`) during the call: tensors plus library
  workspaces (oneDNN/MKL scratch); None where /proc is unavailable.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from tcae.models.flops import flop_counter

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_dtype(name: str) -> torch.dtype:
    """'fp32' | 'bf16' | 'fp16' -> torch dtype."""
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {', '.join(DTYPES)}")
    return DTYPES[name]


def autocast_context(device: str | torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """fp32: no autocast; bf16/fp16: `torch.autocast` (weights stay fp32, as in training)."""
    if parse_dtype(dtype) == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=parse_dtype(dtype))


def synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median_and_spread(values: list[float]) -> tuple[float, float, float, float, float]:
    """(median, min, max, q1, q3) of `values` (q1/q3 by linear interpolation)."""
    if not values:
        raise ValueError("no values")
    if len(values) == 1:
        v = values[0]
        return v, v, v, v, v
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return statistics.median(values), min(values), max(values), q1, q3


def throughput_stats(seconds: list[float], batch: int) -> dict[str, float]:
    """images/s statistics of per-call wall times."""
    med, lo, hi, q1, q3 = median_and_spread([batch / s for s in seconds])
    return {"median": med, "min": lo, "max": hi, "q1": q1, "q3": q3, "n": len(seconds)}


def timed_call(fn: Callable[[], object], device: str | torch.device) -> float:
    """Wall seconds of one call of fn (CUDA synchronised before and after)."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def time_fn(fn: Callable[[], object], device: str | torch.device, repeats: int = 5, warmup: int = 1) -> list[float]:
    """Per-call wall seconds of `repeats` calls of fn after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    return [timed_call(fn, device) for _ in range(repeats)]


# ---------------------------------------------------------------------------- matmul peak
def matmul_peak(device: str | torch.device = "cpu", dtype: str = "fp32", size: int | None = None,
                repeats: int = 5) -> dict[str, float]:
    """Measured FLOP/s of a square (size x size) @ (size x size) matmul in `dtype`, best of `repeats`.

    The physical limit the models' achieved FLOP/s is compared against. size defaults to 4096 on CPU
    and 8192 on CUDA. On CUDA, fp32 uses whatever TF32 setting is in force (reported in the result).
    Returns {"flops_per_s", "size", "seconds", "dtype"}.
    """
    device = torch.device(device)
    size = size or (8192 if device.type == "cuda" else 4096)
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device=device, dtype=parse_dtype(dtype))
    b = torch.randn(size, size, generator=gen).to(device=device, dtype=parse_dtype(dtype))
    with torch.no_grad():
        times = time_fn(lambda: torch.mm(a, b), device, repeats=max(1, repeats), warmup=1)
    best = min(times)
    out = {"flops_per_s": 2 * size**3 / best, "size": size, "seconds": best, "dtype": dtype}
    if device.type == "cuda" and dtype == "fp32":
        out["tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
    return out


# ---------------------------------------------------------------------------- FLOPs
def count_call_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of fn, counted by torch.utils.flop_counter (CPU attention included)."""
    with flop_counter() as counter:
        fn()
    return int(counter.get_total_flops())


# ---------------------------------------------------------------------------- memory
_STATUS_RE = {k: re.compile(rf"^{k}:\s+(\d+) kB", re.M) for k in ("VmRSS", "VmHWM")}


def _proc_status() -> dict[str, int] | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    out = {}
    for key, pattern in _STATUS_RE.items():
        m = pattern.search(text)
        if m is None:
            return None
        out[key] = int(m.group(1)) * 1024
    return out


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@contextlib.contextmanager
def peak_memory(device: str | torch.device) -> Iterator[dict[str, int | None]]:
    """Measures the extra memory the body needs; the yielded dict gets `peak_bytes` (None if unknown).

    CUDA: max_memory_allocated - memory_allocated before. CPU (Linux): peak RSS growth, see the module
    docstring; freed heap memory is returned to the OS first (malloc_trim) so that reuse of cached pages
    does not hide allocations.
    """
    device = torch.device(device)
    result: dict[str, int | None] = {"peak_bytes": None}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        torch.cuda.synchronize(device)
        result["peak_bytes"] = int(torch.cuda.max_memory_allocated(device) - base)
        return
    _malloc_trim()
    before = _proc_status()
    ok = before is not None and _reset_peak_rss()
    if ok:
        before = _proc_status()
    yield result
    after = _proc_status()
    if ok and before is not None and after is not None:
        result["peak_bytes"] = max(0, after["VmHWM"] - before["VmRSS"])


def tensor_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
