"""`tcae score`: the generation-proxy score of any tokenizer on the repro cell runner."""

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import torch

from tcae.cli.main import main as cli
from tcae.models import create_model
from tcae.studies import paper
from tcae.studies.score import budget_name, score_markdown

diffusers = pytest.importorskip("diffusers")


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def tokenizers(tmp_path):
    """A tiny random TC-AE (32 px, f = 16) and a tiny random AutoencoderKL (f = 8), saved to folders."""
    torch.manual_seed(0)
    create_model("tcae-tiny", image_size=32).save_pretrained(tmp_path / "tc")
    diffusers.AutoencoderKL(block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=4,
                            sample_size=32).save_pretrained(tmp_path / "kl")
    return tmp_path


def test_budget_names_and_markdown_name_the_budget():
    assert budget_name("tiny") == "tiny" and budget_name("tiny", dit_steps=20) == "tiny[dit_steps=20]"
    budget = {"dit": "dit-tiny", "dit_steps": 1500, "samples": 300, "per_class": 30, "num_classes": 10,
              "sampler": "euler, 50 steps, no CFG", "gfid_reference": None, "image_size": 32, "fd_name": "FD-digits",
              "eval_split": "builtin:digits:val"}
    results = [{"name": "a", "metrics": {"psnr": 20.0, "fd_judge@tiny": 12.5, "gflops_enc_dec": 0.07}},
               {"name": "b", "metrics": {"psnr": 18.0, "probe_acc_tokens": 0.5, "gflops_enc_dec": 0.1}}]
    md = score_markdown(results, "tiny", budget, "builtin:digits").splitlines()
    assert md[0] == ("| tokenizer | PSNR | SSIM | LPIPS | rFID | A1 tokens | FD-digits@tiny | gFID@tiny | "
                     "GFLOPs enc+dec |")  # reconstruction metrics and gFID always shown, n/a when not computed
    assert md[2] == "| a | 20 | n/a | n/a | n/a | n/a | 12.5 | n/a | 0.07 |"
    assert md[3] == "| b | 18 | n/a | n/a | n/a | 0.5 | n/a | n/a | 0.1 |"
    assert "Budget tiny: dit-tiny trained 1500 steps" in md[-1] and "300 class-balanced samples" in md[-1]


@pytest.fixture
def no_inception(tmp_path, monkeypatch):
    """A torch hub cache without the InceptionV3 file (as on an offline machine)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


def test_score_errors_before_training(tokenizers, tmp_path, capsys, no_inception):
    tc = str(tokenizers / "tc")
    assert cli(["score", "--model", tc, "--budget", "tiny", "--image-size", "40", "--out", str(tmp_path / "o")]) == 2
    assert "divisible by 16" in capsys.readouterr().err
    # unlabelled data with no feature network: the Inception file, its download and the other options named
    assert cli(["score", "--model", tc, "--data", "builtin:photos", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no generation metric for builtin:photos" in err and "weights-inception-2015-12-05-6726825d.pth" in err
    assert "https://github.com/toshas/torch-fidelity/releases" in err and "--feature-network" in err
    assert "Traceback" not in err
    missing = tmp_path / "inception.pth"
    assert cli(["score", "--model", tc, "--data", "builtin:photos", "--inception-weights", str(missing),
                "--out", str(tmp_path / "o")]) == 2
    assert f"InceptionV3 (FID) weights file {str(missing)!r} (passed with" in capsys.readouterr().err
    assert cli(["score", "--model", "diffusers:" + str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "diffusers model folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_score_tcae_and_a_diffusers_kl_on_digits(tokenizers, tmp_path, monkeypatch, capsys):
    """`tcae score` on a tcae model and a diffusers AutoencoderKL folder: one table with both, the budget in
    every generation figure, the same PSNR as `tcae eval`, the user's models untouched, resumable."""
    monkeypatch.setitem(paper.SCALES, "tiny", dataclasses.replace(paper.SCALES["tiny"], per_class=2))
    tc, kl = str(tokenizers / "tc"), "diffusers:" + str(tokenizers / "kl")
    before = _sha(tokenizers / "tc" / "model.safetensors")
    out = tmp_path / "score"
    argv = ["score", "--model", tc, "--model", kl, "--names", "tcae,sd-vae", "--data", "builtin:digits",
            "--dit-steps", "3", "--out", str(out), "--no-progress"]
    assert cli(argv) == 0
    printed = capsys.readouterr().out
    payload = json.loads((out / "score.json").read_text())
    assert payload["budget"]["name"] == "tiny[dit_steps=3]" and payload["budget"]["samples"] == 20
    rows = {r["name"]: r for r in payload["results"]}
    assert set(rows) == {"tcae", "sd-vae"}
    for r in rows.values():
        gen = [k for k in r["metrics"] if k.startswith(("fd_judge", "class_agreement"))]
        assert gen and all(k.endswith("@tiny[dit_steps=3]") for k in gen)
        assert all("budget tiny[dit_steps=3]: dit-tiny 3 steps, 20 samples (2 per class x 10)" in r["labels"][k]
                   for k in gen)
        totals = r["cell"]["generation"]["per_class_total"]
        assert len(totals) == 10 and set(totals.values()) == {2}  # class-balanced: 2 of each of the 10 digits
    assert "A1" not in "".join(k for k in rows["sd-vae"]["metrics"]) and "probe_acc_tokens" not in rows["sd-vae"]
    assert "probe_acc_tokens" in rows["tcae"]["metrics"] and "probe_acc_latents" in rows["sd-vae"]["metrics"]
    md = (out / "score.md").read_text()
    assert "| tcae |" in md and "| sd-vae |" in md and "FD-digits@tiny[dit_steps=3]" in md and md in printed + "\n"

    # the same reconstruction numbers as `tcae eval` on the val split
    assert cli(["eval", "--model", kl, "--data", "builtin:digits:val", "--image-size", "32", "--metrics",
                "psnr,ssim", "--out", str(tmp_path / "eval"), "--no-progress"]) == 0
    direct = json.loads((tmp_path / "eval" / "eval.json").read_text())["results"][0]["metrics"]
    assert rows["sd-vae"]["metrics"]["psnr"] == pytest.approx(direct["psnr"], rel=1e-9)

    assert _sha(tokenizers / "tc" / "model.safetensors") == before  # score never writes into the tokenizer
    dit = out / "tcae" / "runs" / "dit" / "model" / "model.safetensors"
    stamp = dit.stat().st_mtime_ns
    assert cli(argv) == 0 and dit.stat().st_mtime_ns == stamp  # resumed from result.json: nothing retrained
    assert cli([*argv[:-5], "--dit-steps", "4", "--out", str(out), "--no-progress"]) == 2
    assert "other settings" in capsys.readouterr().err


def _unlabelled_folder(root, n: int = 6):
    """n small colour and grey images in one folder (no class sub-folders), at odd sizes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root.mkdir()
    for i in range(n):
        image = Image.fromarray(rng.integers(0, 256, (36 + 3 * i, 40, 3), dtype=np.uint8))
        (image.convert("L") if i % 2 else image).save(root / f"img{i}.png")
    return root


def test_score_on_an_unlabelled_folder_with_a_named_feature_network(tokenizers, tmp_path, monkeypatch, capsys,
                                                                    no_inception):
    """`tcae score` on a folder without classes: an unconditional DiT (batch sized to the 6 images), its samples
    compared with the folder in a torchvision network's features, every figure saying what it is (and no
    random-weights number called FID); the same FD as `evaluate_samples` on the saved samples."""
    import torchvision

    from tcae.evaluation.gen_eval import evaluate_samples

    monkeypatch.setitem(paper.SCALES, "tiny", dataclasses.replace(paper.SCALES["tiny"], per_class=5))
    folder = _unlabelled_folder(tmp_path / "mine")
    torch.manual_seed(0)
    weights = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), weights)
    out = tmp_path / "score"
    assert cli(["score", "--model", str(tokenizers / "tc"), "--data", str(folder), "--dit-steps", "2",
                "--feature-network", "torchvision:mobilenet_v3_small", "--feature-weights", str(weights),
                "--out", str(out), "--no-progress"]) == 0
    payload = json.loads((out / "score.json").read_text())
    budget = payload["budget"]
    assert budget["conditional"] is False and budget["num_classes"] == 0 and budget["samples"] == 5
    assert "no train/ and val/ sub-folders" in budget["eval_note"]
    (row,) = payload["results"]
    fd = row["metrics"]["fd_features@tiny[dit_steps=2]"]
    label = row["labels"]["fd_features@tiny[dit_steps=2]"]
    assert "torchvision mobilenet_v3_small" in label and "5 samples" in label and "FID" not in label
    assert "5 unconditional samples" in label
    assert "probe_acc_latents" not in row["metrics"] and "gfid@tiny[dit_steps=2]" not in row["metrics"]
    md = (out / "score.md").read_text()
    assert "FD-torchvision:mobilenet_v3_small@tiny[dit_steps=2]" in md and "5 unconditional samples" in md
    assert "same images the DiT trains on" in md and md in capsys.readouterr().out + "\n"
    config = (out / "tc" / "runs" / "dit" / "config.yaml").read_text()
    assert "batch_size: 4" in config  # 6 latents: the largest power of two that fits, not dit-tiny's 128
    from tcae.diffusion import DiT

    assert DiT.from_pretrained(out / "tc" / "runs" / "dit" / "model").config.num_classes == 1

    # the figure is the FD of the very samples drawn, against the folder, in that network's features
    from tcae.studies.stages import sample_stage

    images, _ = sample_stage(out / "tc" / "runs" / "dit" / "model", tokenizers / "tc", [0], 5, 1.0, 50, seed=0)
    direct = evaluate_samples(images, str(folder), image_size=32, progress=False,
                              feature_network="torchvision:mobilenet_v3_small", inception_weights=weights)
    assert fd == pytest.approx(direct["metrics"]["gfd_torchvision_mobilenet_v3_small"], rel=1e-4)
