"""`tcae bench`: the run's JSON and Markdown, the DC-AE baseline's config and FLOPs, the CLI."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tcae.bench import benchmark_model, matmul_peak, run_bench, to_markdown, write_results
from tcae.bench.core import median_and_spread

ROOT = Path(__file__).resolve().parents[1]

PHASES = ("encode", "decode", "encode_decode", "train_step")


def test_run_bench_tiny_json_and_markdown(tmp_path):
    out = run_bench(models=("tcae-tiny",), image_size=32, batch_size=2, dtypes=("fp32", "bf16"),
                    repeats=1, warmup=1, matmul_size=256, baseline="tcae-tiny")
    assert set(out) == {"meta", "matmul_peak", "results"}
    assert out["meta"]["image_size"] == 32 and out["meta"]["baseline"] == "tcae-tiny"
    assert {d: p["flops_per_s"] > 0 for d, p in out["matmul_peak"].items()} == {"fp32": True, "bf16": True}
    assert [(r["model"], r["dtype"]) for r in out["results"]] == [("tcae-tiny", "fp32"), ("tcae-tiny", "bf16")]
    for r in out["results"]:
        assert r["params"] > 0
        for key in ("flops_per_image", "images_per_s", "achieved_flops_per_s", "peak_fraction"):
            assert set(r[key]) == set(PHASES), key
        assert r["flops_per_image"]["encode_decode"] == r["flops_per_image"]["encode"] + r["flops_per_image"]["decode"]
        assert r["flops_per_image"]["train_step"] > r["flops_per_image"]["encode_decode"]  # fwd + bwd
        for p in PHASES:
            s = r["images_per_s"][p]
            assert s["n"] == 1 and s["min"] <= s["median"] <= s["max"] and s["median"] > 0
            assert r["achieved_flops_per_s"][p] > 0 and r["peak_fraction"][p] > 0
        assert set(r["peak_memory_bytes"]) == set(PHASES)
        assert r["vs_baseline"]["flops"]["encode_decode"] == pytest.approx(1.0)
        assert r["vs_baseline"]["images_per_s"]["encode_decode"] == pytest.approx(1.0)
    # FLOPs do not depend on the dtype
    assert out["results"][0]["flops_per_image"] == out["results"][1]["flops_per_image"]

    md = write_results(out, tmp_path / "b.json", tmp_path / "b.md", command="tcae bench ...")
    assert json.loads((tmp_path / "b.json").read_text())["results"][0]["model"] == "tcae-tiny"
    assert (tmp_path / "b.md").read_text() == md == to_markdown(out, "tcae bench ...")
    assert "## fp32" in md and "## bf16" in md and "| tcae-tiny |" in md
    assert "FLOPs ratio" in md and "enc+dec img/s ratio" in md


def test_benchmark_model_custom_functions():
    lin = torch.nn.Linear(16, 16)
    x = torch.randn(4, 16)
    res = benchmark_model("linear", lin, lin, None, images=x, repeats=2, warmup=1, peak_flops=1e9, params=272)
    assert res["flops_per_image"]["encode"] == 2 * 16 * 16
    assert res["flops_per_image"]["encode_decode"] == 4 * 16 * 16
    assert "train_step" not in res["images_per_s"]
    assert res["images_per_s"]["decode"]["n"] == 2
    assert res["peak_fraction"]["encode"] == pytest.approx(res["achieved_flops_per_s"]["encode"] / 1e9)


def test_matmul_peak_and_stats():
    peak = matmul_peak("cpu", "fp32", size=128, repeats=2)
    assert peak["flops_per_s"] > 0 and peak["size"] == 128
    assert median_and_spread([3.0, 1.0, 2.0, 4.0]) == (2.5, 1.0, 4.0, 1.75, 3.25)
    with pytest.raises(ValueError, match="unknown model"):
        run_bench(models=("nope",), image_size=32, dtypes=("fp32",), repeats=1, matmul_size=64)
    with pytest.raises(ValueError, match="divisible"):
        run_bench(models=("tcae-tiny",), image_size=40, dtypes=("fp32",), repeats=1, matmul_size=64)


def test_grouped_conv_backward_flops_counted_once_per_gradient():
    from tcae.models.flops import flop_counter

    conv = torch.nn.Conv2d(32, 32, 3, padding=1, groups=32)  # depthwise, as in DC-AE's EfficientViT blocks
    x = torch.randn(1, 32, 16, 16, requires_grad=True)
    with flop_counter() as fwd:
        conv(x)
    with flop_counter() as both:
        conv(x).sum().backward()
    assert both.get_total_flops() == 3 * fwd.get_total_flops()  # forward + grad input + grad weight


def test_dcae_published_config_flops():
    """DC-AE-f32c32 from the published config: 1214 GFLOPs encode+decode at 256 px (= the paper's 607 GMACs)."""
    pytest.importorskip("diffusers")
    from tcae.bench.dcae import build_dcae, dcae_config
    from tcae.models.flops import count_flops

    cfg = dcae_config()
    assert cfg["encoder_layers_per_block"] == (0, 4, 8, 2, 2, 2)
    assert cfg["decoder_layers_per_block"] == (0, 5, 10, 2, 2, 2)
    assert cfg["latent_channels"] == 32
    with torch.device("meta"):  # FLOPs depend on shapes only
        model = build_dcae()
        x = torch.empty(1, 3, 256, 256)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(323.4e6, rel=1e-3)
    z = model.encode(x).latent
    assert tuple(z.shape) == (1, 32, 8, 8)
    enc = count_flops(lambda t: model.encode(t).latent, x)
    dec = count_flops(lambda t: model.decode(t).sample, z)
    assert enc + dec == pytest.approx(1214e9, rel=0.01)


def test_cli_registers_and_runs(tmp_path, capsys):
    from tcae.cli import bench as bench_cmd

    parser = argparse.ArgumentParser()
    bench_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--models", "tcae-tiny", "--image-size", "32", "--batch-size", "1",
                              "--dtypes", "fp32", "--repeats", "1", "--warmup", "1", "--no-train-step",
                              "--matmul-size", "128", "--out-json", str(tmp_path / "o.json"),
                              "--out-md", str(tmp_path / "o.md")])
    assert args.func is not None and args.dtypes == "fp32"
    assert args.func(args) == 0
    out = json.loads((tmp_path / "o.json").read_text())
    assert "train_step" not in out["results"][0]["images_per_s"]
    assert "| tcae-tiny |" in capsys.readouterr().out


TRAINING_SCRIPT = ROOT / "benchmarks" / "bench_training.py"


@pytest.mark.slow
def test_training_benchmark_script_runs_both_objectives():
    """benchmarks/bench_training.py end to end at 32 px: both settings, FLOPs and the ratio in its JSON."""
    script = TRAINING_SCRIPT
    recon_gflops = {}
    for objective in ("l1", "paper"):
        res = subprocess.run([sys.executable, str(script), "--image-size", "32", "--batch-size", "2", "--steps", "1",
                              "--warmup", "1", "--threads", "1", "--objective", objective],
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
        out = json.loads(res.stdout.strip().splitlines()[-1])
        recon, joint = out["rows"]["recon"], out["rows"]["joint"]
        # iBOT adds a second student view, 4 local crops and a teacher forward: strictly more FLOPs
        assert joint["step_gflops"] > recon["step_gflops"] > 0
        assert out["joint_over_recon_flops"] == pytest.approx(joint["step_gflops"] / recon["step_gflops"])
        assert out["joint_over_recon"] == pytest.approx(joint["step_s_median"] / recon["step_s_median"])
        assert out["peak_rss_mib"]["joint"] > 0 and out["args"]["objective"] == objective
        assert f"({objective} L_rec; 2 global + 4 local crops)" in res.stdout
        recon_gflops[objective] = recon["step_gflops"]
    assert recon_gflops["paper"] > recon_gflops["l1"]  # LPIPS's VGG16 and the PatchGAN really ran


def test_training_benchmark_ref_that_is_not_a_revision_exits_2():
    r = subprocess.run([sys.executable, str(TRAINING_SCRIPT), "--ref", "no-such-ref"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "--ref no-such-ref: not a git revision" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_training_benchmark_against_a_ref_side_by_side():
    """--ref HEAD: both settings measured with HEAD's `src/` (exported) and with the working tree's, side by side.
    The model code is the same on both sides here, so the FLOPs of a step must agree exactly."""
    r = subprocess.run([sys.executable, str(TRAINING_SCRIPT), "--ref", "HEAD", "--image-size", "32", "--batch-size",
                        "2", "--steps", "2", "--warmup", "1", "--threads", "1"], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["args"]["ref"] == "HEAD" and set(out["rows"]) == {"recon", "joint"}
    for kind, sides in out["rows"].items():
        assert sides["ref"]["step_gflops"] == sides["tree"]["step_gflops"] > 0, kind
        assert all(s["images_per_s"] > 0 and s["step_s_min"] <= s["step_s_max"] for s in sides.values())
        speed = sides["tree"]["images_per_s"] / sides["ref"]["images_per_s"]
        assert f"| {kind} | {sides['ref']['images_per_s']:.2f} | {sides['tree']['images_per_s']:.2f} | " \
               f"{speed:.3f}x |" in r.stdout
    assert out["rows"]["joint"]["tree"]["step_gflops"] > out["rows"]["recon"]["tree"]["step_gflops"]


@pytest.mark.slow
def test_gpu_check_runs_its_code_paths_on_the_cpu(tmp_path):
    """benchmarks/gpu_check.py --device cpu --tiny: training (iBOT + GAN), the guarded steps, the encode/decode
    bench and a 1-process torchrun all run, so the GPU check cannot rot (compile=true training: test_training)."""
    out = tmp_path / "check.md"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny",
                        "--steps", "1", "--skip-compile", "--out", str(out)], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=1200)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    text = out.read_text()
    for row in ("train step, joint iBOT + GAN |", "2 steps (no CUDA",
                "tcae-tiny encode", "dc-ae-f32c32 decode", "torchrun --nproc-per-node 1 (gloo)"):
        assert row in text, row
    assert "FAILED" not in text
