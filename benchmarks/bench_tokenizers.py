"""TC-AE presets vs DC-AE-f32c32, side by side: a thin wrapper around `tcae.bench.run_bench`.

Same options as `tcae bench` (see benchmarks/README.md), e.g. from the repository root:

    .venv/bin/python benchmarks/bench_tokenizers.py --image-size 256 --dtypes fp32,bf16 \\
        --out-json benchmarks/results/cpu-256.json --out-md benchmarks/results/cpu-256.md
"""

from __future__ import annotations

import sys

from tcae.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
