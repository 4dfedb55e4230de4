"""Model cards written by save_pretrained, and `tcae push` (a dry run, and the upload against a fake Hub API)."""

import json
import re
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file

import tcae
from tcae.cli.main import main as cli
from tcae.diffusion import create_dit
from tcae.models.card import read_card_info

INFO = {"training_data": "builtin:digits:train", "steps": 400, "phase": "joint", "image_size": 32,
        "metrics": {"psnr": 24.123456, "ssim": 0.8}, "metrics_data": "builtin:digits:val", "metrics_image_size": 32}


@pytest.fixture
def saved(tmp_path) -> tuple[tcae.TCAE, Path]:
    torch.manual_seed(0)
    model = tcae.create_model("tcae-tiny")
    model.save_pretrained(tmp_path / "m", card_info=INFO)
    return model, tmp_path / "m"


def _python_block(text: str) -> str:
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def test_card_fields(saved):
    model, path = saved
    card = ModelCard.load(path / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "tcae" and data["license"] == "apache-2.0" and "image-tokenizer" in data["tags"]
    assert data["tcae"] == INFO  # stored for later saves and pushes
    text = card.text
    assert "[TC-AE (arXiv 2604.07340)](https://arxiv.org/abs/2604.07340)" in text
    assert "| latent | 32 x H/16 x W/16 (32x2x2 at 32x32) |" in text
    assert "| training | `builtin:digits:train`, 400 steps (phase `joint`) |" in text
    assert "| license | apache-2.0 |" in text
    n = sum(p.numel() for p in model.parameters())
    assert f"| parameters | {n / 1e6:.2f} M |" in text
    assert "Measured with `tcae eval` on `builtin:digits:val` at 32 px:" in text
    assert "| psnr | 24.12 |" in text and "| ssim | 0.8 |" in text
    assert "| latent statistics | not measured" in text


def test_card_usage_snippet_runs(saved):
    model, path = saved
    code = _python_block((path / "README.md").read_text()).replace("path/to/model", str(path))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert tuple(scope["z"].shape) == (1, 32, 2, 2) and tuple(scope["x_hat"].shape) == (1, 3, 32, 32)
    assert torch.equal(scope["model"].decode(scope["z"]), scope["x_hat"])


def test_resave_keeps_the_info_and_updates_the_rest(saved):
    model, path = saved
    model.set_latent_stats(torch.zeros(32), torch.ones(32))
    model.save_pretrained(path, card_info={"steps": 500})  # e.g. diagnose --write-stats, then more steps
    assert read_card_info(path / "README.md") == {**INFO, "steps": 500}
    text = (path / "README.md").read_text()
    assert "| latent statistics | measured" in text and "500 steps" in text


def test_card_without_info_and_bad_info(tmp_path):
    model = tcae.create_model("tcae-tiny", staged=False)
    model.save_pretrained(tmp_path / "plain")
    text = (tmp_path / "plain" / "README.md").read_text()
    assert "| training | not recorded |" in text and "No measured metrics were given" in text
    assert "single-stage" in text and "latent | 32 x H/16 x W/16 (32x4x4 at 64x64)" in text
    with pytest.raises(ValueError, match="unknown card_info key"):
        model.save_pretrained(tmp_path / "bad", card_info={"stepz": 3})


def test_dit_card(tmp_path):
    dit = create_dit("dit-tiny", in_channels=32, input_size=2, num_classes=4)
    dit.save_pretrained(tmp_path / "dit", card_info={"training_data": "latents/digits", "steps": 20})
    text = (tmp_path / "dit" / "README.md").read_text()
    assert "DiT.from_pretrained" in text and "| training | `latents/digits`, 20 steps |" in text
    assert "arXiv 2604.07340" in text


# ---------------------------------------------------------------------------- tcae push
class FakeHfApi:
    """Records what HfApi would be asked to do; keeps a copy of the uploaded folder."""

    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, private=False, exist_ok=False):
        FakeHfApi.calls.append(("create_repo", repo_id, private, exist_ok))
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, folder_path, repo_id, commit_message):
        files = {str(p.relative_to(folder_path)): p.read_bytes() for p in Path(folder_path).rglob("*") if p.is_file()}
        FakeHfApi.calls.append(("upload_folder", repo_id, files))
        return f"https://huggingface.co/{repo_id}/commit/0"


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a dry run must not talk to the Hub")

    monkeypatch.setattr(huggingface_hub, "HfApi", refuse)


def test_push_dry_run_writes_exactly_the_upload(saved, tmp_path, capsys, no_network):
    model, path = saved
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "eval.json").write_text(json.dumps(
        {"data": "builtin:digits:val", "image_size": 32, "num_images": 360, "metrics": {"psnr": 25.5, "ssim": 0.9}}))
    out = tmp_path / "upload"
    assert cli(["push", "--model", str(path), "--repo", "org/tcae-digits", "--dry-run", "--out", str(out),
                "--eval-json", str(tmp_path / "eval" / "eval.json")]) == 0
    printed = capsys.readouterr().out
    assert "dry run: would upload to org/tcae-digits" in printed
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    for name in ("README.md", "config.json", "model.safetensors"):
        assert f"  {name}  ({(out / name).stat().st_size} bytes)" in printed
    same = load_file(out / "model.safetensors")
    for k, v in model.state_dict().items():
        assert torch.equal(same[k], v), k
    assert json.loads((out / "config.json").read_text()) == json.loads((path / "config.json").read_text())
    text = (out / "README.md").read_text()
    assert 'tcae.TCAE.from_pretrained("org/tcae-digits")' in text and "# tcae-digits" in text
    assert "| psnr | 25.5 |" in text and "| ssim | 0.9 |" in text  # --eval-json wins over the saved metrics
    assert "400 steps" in text  # the training info kept from the model's own card
    assert "tcae reconstruct --model org/tcae-digits" in text


def test_push_uploads_the_same_files_as_the_dry_run(saved, tmp_path, monkeypatch):
    _, path = saved
    assert cli(["push", "--model", str(path), "--repo", "org/x", "--dry-run", "--out", str(tmp_path / "dry")]) == 0
    FakeHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    assert cli(["push", "--model", str(path), "--repo", "org/x", "--private"]) == 0
    (create, repo, private, exist_ok), (upload, repo2, files) = FakeHfApi.calls
    assert (create, repo, private, exist_ok, upload, repo2) == ("create_repo", "org/x", True, True, "upload_folder",
                                                                "org/x")
    assert files == {p.name: p.read_bytes() for p in (tmp_path / "dry").iterdir()}


@pytest.mark.parametrize("argv, fragment", [
    (["--repo", "not a repo!", "--dry-run", "--out", "o"], "Repo id"),
    (["--repo", "org/x", "--dry-run"], "--dry-run writes the upload into --out DIR"),
    (["--repo", "org/x", "--dry-run", "--out", "full"], "is not empty"),
    (["--repo", "org/x", "--dry-run", "--out", "o", "--eval-json", "none.json"], "eval result none.json not found"),
])
def test_push_bad_input_exits_2(saved, tmp_path, monkeypatch, capsys, no_network, argv, fragment):
    _, path = saved
    monkeypatch.chdir(tmp_path)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert cli(["push", "--model", str(path), *argv]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_writing_latent_stats_refreshes_the_card(saved):
    from tcae.evaluation.diagnostics import write_latent_stats

    model, path = saved
    write_latent_stats(model, path, torch.zeros(32), torch.ones(32), count=10)
    text = (path / "README.md").read_text()
    assert "| latent statistics | measured" in text and read_card_info(path / "README.md") == INFO
    assert tcae.TCAE.from_pretrained(path).has_latent_stats
