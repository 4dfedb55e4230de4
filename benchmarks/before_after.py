"""Before/after speed and output check of the TC-AE model code against a git revision.

Loads `src/tcae/models/layers.py` as it is at `--ref` (default HEAD, i.e. before uncommitted work)
into a private module, builds the working tree's `tcae.py` model on top of it and the working-tree model
with the same weights, checks their outputs agree, and times them *interleaved* (A, B, A, B, ...) in one
process, so the speed ratio is robust to other load on the machine. `--ref-model` also takes `tcae.py`
from the reference. Run from the repository root:

    .venv/bin/python benchmarks/before_after.py --ref 70bcdb2 --model tcae-b --image-size 256 --batch-size 2
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

from tcae.bench.core import autocast_context, median_and_spread
from tcae.models import preset_config
from tcae.models.tcae import TCAE

ROOT = Path(__file__).resolve().parents[1]


def load_reference(ref: str, ref_model: bool = False) -> type:
    """The TCAE class built on `layers.py` at git revision `ref` (and `tcae.py` too with ref_model)."""
    def show(path: str) -> str:
        if path.endswith("tcae.py") and not ref_model:
            return (ROOT / path).read_text()
        return subprocess.run(["git", "show", f"{ref}:{path}"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout

    layers = types.ModuleType("_ref_layers")
    exec(compile(show("src/tcae/models/layers.py"), f"{ref}:layers.py", "exec"), layers.__dict__)
    sys.modules["_ref_layers"] = layers
    src = show("src/tcae/models/tcae.py").replace("from tcae.models.layers import", "from _ref_layers import")
    model = types.ModuleType("_ref_tcae")
    sys.modules["_ref_tcae"] = model
    exec(compile(src, f"{ref}:tcae.py", "exec"), model.__dict__)
    return model.TCAE


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", default="HEAD")
    ap.add_argument("--ref-model", action="store_true", help="take tcae.py from --ref as well")
    ap.add_argument("--model", default="tcae-b")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with the process CPU clock (with --threads 1: robust to other load)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    clock = time.process_time if args.cpu_time else time.perf_counter
    torch.manual_seed(0)
    cfg = preset_config(args.model, image_size=args.image_size)
    new = TCAE(cfg).eval()
    old = load_reference(args.ref, args.ref_model)(cfg).eval()
    old.load_state_dict(new.state_dict())
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)

    print(f"{args.model} {args.image_size}px batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"reference {args.ref} vs working tree (median of {args.repeats} interleaved repeats, "
          f"{'CPU' if args.cpu_time else 'wall'} time)")
    for dtype in args.dtypes.split(","):
        with torch.no_grad(), autocast_context("cpu", dtype):
            z_old, z_new = old.encode(x), new.encode(x)
            y_old, y_new = old.decode(z_old), new.decode(z_old)
            dz = (z_old.float() - z_new.float()).abs().max().item()
            dy = (y_old.float() - y_new.float()).abs().max().item()
            times: dict[str, list[float]] = {k: [] for k in ("old enc", "new enc", "old dec", "new dec")}
            for _ in range(args.repeats):
                for key, fn, arg in (("old enc", old.encode, x), ("new enc", new.encode, x),
                                     ("old dec", old.decode, z_old), ("new dec", new.decode, z_old)):
                    t0 = clock()
                    fn(arg)
                    times[key].append(clock() - t0)
        med = {k: median_and_spread(v)[0] for k, v in times.items()}
        print(f"[{dtype}] max |diff| latent {dz:.3g}, image {dy:.3g}; "
              f"encode {args.batch_size / med['old enc']:.2f} -> {args.batch_size / med['new enc']:.2f} img/s "
              f"(x{med['old enc'] / med['new enc']:.2f}), "
              f"decode {args.batch_size / med['old dec']:.2f} -> {args.batch_size / med['new dec']:.2f} img/s "
              f"(x{med['old dec'] / med['new dec']:.2f})")


if __name__ == "__main__":
    main()
