"""`tcae score`: the generation-proxy score of any tokenizer on the repro cell runner."""

import dataclasses
import hashlib
import json

import pytest
import torch

from tcae.studies import paper
from tcae.cli.main import main as cli
from tcae.models import create_model
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


def test_score_errors_before_training(tokenizers, tmp_path, capsys):
    tc = str(tokenizers / "tc")
    assert cli(["score", "--model", tc, "--budget", "tiny", "--image-size", "40", "--out", str(tmp_path / "o")]) == 2
    assert "divisible by 16" in capsys.readouterr().err
    assert cli(["score", "--model", tc, "--data", "builtin:photos", "--out", str(tmp_path / "o")]) == 2
    assert "has no classes" in capsys.readouterr().err
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
