"""The GAN-phase reconstruction step: `adaptive_gan_loss` (LPIPS's VGG and the discriminator backpropagated
once) against the direct form (w from d loss / d W, then loss.backward(): each backpropagated twice),
stepped alternately on one trainer in one process.

    python benchmarks/bench_gan_backward.py --model tcae-tiny --image-size 64 --batch-size 16 --steps 8
    python benchmarks/bench_gan_backward.py --model tcae-s --image-size 256 --batch-size 2 --steps 5

L_rec = L1 + LPIPS + GAN from step 0, no iBOT; LPIPS's VGG16 has random weights when its file is missing
(cost only). The first step of each form counts FLOPs; the rest are timed (median).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_training  # noqa: E402  (its trainer builder)


def direct_adaptive_gan_loss(output, rec_loss, g_loss, last_layer, gan_weight, max_weight=1e4):
    """The taming-transformers form, as tcae computed it before `adaptive_gan_loss`."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    w = (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0, max_weight).detach()
    return rec_loss + gan_weight * w * g_loss, w


def main() -> None:
    import tcae.training.tokenizer as tokenizer
    from tcae.losses import adaptive_gan_loss
    from tcae.models.flops import flop_counter

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tcae-tiny")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    args = argparse.Namespace(model=a.model, config="tiny", image_size=a.image_size, batch_size=a.batch_size,
                              num_local=0, steps=a.steps, warmup=1, objective="paper", precision="fp32")
    forms = {"once": adaptive_gan_loss, "direct": direct_adaptive_gan_loss}
    times: dict[str, list[float]] = {k: [] for k in forms}
    flops: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        trainer, batches = bench_training.build(args, False, tmp)
        for i, batch in enumerate(batches):
            for kind, form in forms.items():
                tokenizer.adaptive_gan_loss = form  # what TokenizerTrainer.train_step calls
                if i == 0:
                    with flop_counter() as counter:
                        trainer.train_step([batch])
                    flops[kind] = counter.get_total_flops() / 1e9
                    continue
                t = time.perf_counter()
                trainer.train_step([batch])
                times[kind].append(time.perf_counter() - t)
    print(f"command: python {' '.join(sys.argv)}")
    for kind in forms:
        print(f"| {kind} | {statistics.median(times[kind]):.3f} s | {flops[kind]:.1f} GFLOPs |")
    ratio = statistics.median(times["direct"]) / statistics.median(times["once"])
    print(f"direct / once: time {ratio:.2f}x, FLOPs {flops['direct'] / flops['once']:.2f}x")


if __name__ == "__main__":
    main()
