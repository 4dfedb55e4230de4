"""Benchmarks of TC-AE tokenizers against DC-AE: FLOPs, throughput, memory, fraction of the matmul peak.

`run_bench(...)` measures everything side by side and returns a JSON-ready dict; `to_markdown` /
`write_results` render it. `tcae bench` is the command-line front end (tcae.cli.bench).
"""

from tcae.bench.core import autocast_context, matmul_peak, median_and_spread, peak_memory, time_fn
from tcae.bench.dcae import DCAE_F32C32_IN_CONFIG, build_dcae, dcae_config
from tcae.bench.run import DEFAULT_MODELS, benchmark_model, build_candidate, run_bench, to_markdown, write_results

__all__ = [
    "DCAE_F32C32_IN_CONFIG", "DEFAULT_MODELS", "autocast_context", "benchmark_model", "build_candidate",
    "build_dcae", "dcae_config", "matmul_peak", "median_and_spread", "peak_memory", "run_bench", "time_fn",
    "to_markdown", "write_results",
]
