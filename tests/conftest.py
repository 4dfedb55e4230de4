"""Test-wide settings: one intra-op thread per process. The suite's models are tiny; on a 2-core box
several torch processes (DDP ranks, CLI subprocesses) each spinning 2 threads slow down 10x or more."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by CLI and torchrun subprocesses

import torch  # noqa: E402

torch.set_num_threads(1)
