"""The `tcae` command line end to end on tiny configs.

Commands run in-process through `tcae.cli.main.main(argv)` (it returns the exit code); only the
interrupted-run test needs a real process to SIGKILL. One tiny tokenizer, one latent cache and one
DiT are trained once per module and shared.
"""

import contextlib
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tcae.cli.main import main as cli
from tcae.config import TrainConfig, list_configs, load_config
from tcae.data import build_dataset
from tcae.diffusion import DiT
from tcae.evaluation.features import INCEPTION_FILE
from tcae.models import TCAE
from tcae.training.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint

# The shipped `tiny` config made fast: 32 px, small iBOT heads, two local crops (as in test_training.py).
FAST = ["image_size=32", "batch_size=4", "data.epoch_size=64", "ssl.out_dim=64", "ssl.patch_out_dim=64",
        "ssl.head_hidden_dim=32", "ssl.head_bottleneck_dim=16", "ssl.num_local=2", "optim.warmup_steps=2",
        "log_every=1", "image_every=0", "progress=false"]


def run_cli(argv: list[str]) -> SimpleNamespace:
    """`tcae ARGV` in-process: exit code and captured stdout (for module-scoped fixtures, where capsys
    is not available)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli([str(a) for a in argv])
    return SimpleNamespace(code=code, out=out.getvalue())


def files_under(root: Path) -> dict[str, int]:
    """Relative path -> mtime_ns of every file under `root`."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def tokenizer_run(work) -> SimpleNamespace:
    """`tcae train tiny <FAST> run_dir=WORK name=t steps=3`."""
    r = run_cli(["train", "tiny", *FAST, f"run_dir={work}", "name=t", "steps=3"])
    assert r.code == 0
    return SimpleNamespace(run=work / "t", model=work / "t" / "model", out=r.out)


@pytest.fixture(scope="module")
def latents(work, tokenizer_run) -> SimpleNamespace:
    out = work / "latents"
    r = run_cli(["cache-latents", "--model", tokenizer_run.model, "--data", "builtin:digits:train",
                 "--image-size", "32", "--out", out, "--no-progress"])
    assert r.code == 0
    return SimpleNamespace(dir=out, out=r.out)


@pytest.fixture(scope="module")
def dit_run(work, latents) -> SimpleNamespace:
    r = run_cli(["train-dit", "dit-tiny", f"latents={latents.dir}", f"run_dir={work}", "name=d", "steps=4",
                 "batch_size=16", "progress=false"])
    assert r.code == 0
    return SimpleNamespace(run=work / "d", model=work / "d" / "model", out=r.out)


# ---------------------------------------------------------------------------- tcae models
def test_models_prints_preset_table(capsys):
    assert cli(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert {"model", "latent", "params_M", "encode_gflops", "decode_gflops", "total_gflops"} <= set(header)
    rows = {r["model"]: r for r in (dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
                                    for line in lines[2:])}
    assert set(rows) == {"tcae-tiny", "tcae-s", "tcae-b"}
    assert rows["tcae-tiny"]["latent"] == "32x4x4" and rows["tcae-b"]["latent"] == "128x8x8"
    for r in rows.values():
        enc, dec, total = (float(r[k]) for k in ("encode_gflops", "decode_gflops", "total_gflops"))
        assert enc > 0 and dec > 0 and total == pytest.approx(enc + dec, abs=2e-3)
    assert float(rows["tcae-b"]["total_gflops"]) > float(rows["tcae-s"]["total_gflops"]) > float(
        rows["tcae-tiny"]["total_gflops"])


def test_models_json_both(capsys):
    assert cli(["models", "tcae-tiny", "--both", "--json", "--image-size", "32"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["model"], r["staged"], r["image_size"]) for r in rows] == [("tcae-tiny", True, 32),
                                                                          ("tcae-tiny", False, 32)]
    assert rows[0]["latent"] == rows[1]["latent"] == "32x2x2"


# ---------------------------------------------------------------------------- tokenizer training
def test_train_writes_run_directory(tokenizer_run):
    run = tokenizer_run.run
    assert f"run directory: {run}" in tokenizer_run.out
    cfg = load_config(TrainConfig, str(run / "config.yaml"))
    assert (cfg.name, cfg.steps, cfg.data.image_size, cfg.data.batch_size, cfg.phase) == ("t", 3, 32, 4, "joint")
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-00000003.pt"]
    assert (run / "model" / "config.json").is_file() and (run / "model" / "model.safetensors").is_file()
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tb").iterdir())
    rows = [json.loads(line) for line in (run / "scalars.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) and "ibot_cls" in r for r in rows)
    model = TCAE.from_pretrained(run / "model")
    assert model.encode(torch.zeros(1, 3, 32, 32)).shape == (1, 32, 2, 2)


def test_finetune_decoder_from_run(tokenizer_run, tmp_path):
    r = run_cli(["finetune-decoder", "tiny-decoder", *FAST, f"run_dir={tmp_path}", "name=ft", "steps=2",
                 f"init={tokenizer_run.run}"])
    assert r.code == 0 and "run directory" in r.out
    run = tmp_path / "ft"
    assert load_config(TrainConfig, str(run / "config.yaml")).phase == "decoder"
    before, after = TCAE.from_pretrained(tokenizer_run.model), TCAE.from_pretrained(run / "model")
    for (name, a), b in zip(before.encoder.named_parameters(), after.encoder.parameters()):
        assert torch.equal(a, b), f"encoder parameter {name} changed in phase 2"
    assert not torch.equal(before.decoder.to_pixels.weight, after.decoder.to_pixels.weight)


# ---------------------------------------------------------------------------- eval / diagnose
def test_eval_psnr_ssim_json_and_grid(tokenizer_run, tmp_path, capsys):
    out, grid = tmp_path / "eval" / "eval.json", tmp_path / "eval" / "grid.png"
    assert cli(["eval", "--model", str(tokenizer_run.model), "--data", "builtin:digits:val", "--image-size", "32",
                "--metrics", "psnr,ssim", "--out", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    assert "PSNR" in printed and "SSIM" in printed and f"wrote {out}" in printed
    result = json.loads(out.read_text())["results"][0]  # one layout for one model or several
    assert set(result["metrics"]) == {"psnr", "ssim"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in result["metrics"].values())
    assert 0 < result["metrics"]["psnr"] < 100 and -1 <= result["metrics"]["ssim"] <= 1
    assert result["num_images"] == 360 and result["image_size"] == 32 and result["data"] == "builtin:digits:val"
    assert result["model"]["name"] == "t" and result["model"]["dir"] == str(tokenizer_run.model)
    with Image.open(grid) as im:  # 8 originals above their 8 reconstructions above the 8 latent views
        assert im.format == "PNG" and im.width > im.height == 3 * 32 + 4 * 2


def test_eval_rfid_without_inception_weights_names_the_file(tokenizer_run, tmp_path, monkeypatch, capsys):
    torch_home = tmp_path / "torch_home"  # empty: a developer's hub cache must not change the outcome
    torch_home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    out = tmp_path / "rfid"
    assert cli(["eval", "--model", str(tokenizer_run.model), "--data", "builtin:digits:val", "--image-size", "32",
                "--metrics", "rfid", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert INCEPTION_FILE in err and str(torch_home / "hub" / "checkpoints") in err
    assert "--inception-weights" in err and "Traceback" not in err
    assert not out.exists()


def test_diagnose_write_stats(tokenizer_run, tmp_path, capsys):
    model_dir = tmp_path / "run" / "model"  # a copy: the shared model stays as trained
    shutil.copytree(tokenizer_run.model, model_dir)
    trained = TCAE.from_pretrained(model_dir)
    # training exported the model with its latent statistics: over its training images (the 13 train photos
    # x 16 fixed evaluation crops = 208; at most latent_stats_images=1024)
    assert trained.has_latent_stats and int(trained.latent_stats_count) == 208
    ds = build_dataset("builtin:photos:train", 32, train=False)
    with torch.no_grad():
        z = trained.encode(torch.stack([ds[i]["image"] for i in range(208)])).double()
    torch.testing.assert_close(trained.latent_mean.double(), z.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(trained.latent_std.double(), z.std(dim=(0, 2, 3), correction=0), rtol=1e-4,
                               atol=1e-5)
    out = tmp_path / "diag"
    # given the run directory, the stats go into the model in its model/, never beside it
    assert cli(["diagnose", "--model", str(tmp_path / "run"), "--data", "builtin:digits:train", "--write-stats",
                "--max-images", "256", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "latent diagnostics on builtin:digits:train" in printed and "latent 32x2x2" in printed
    assert "A1 on pooled encoder tokens" in printed and f"latent statistics written into {model_dir}" in printed
    model = TCAE.from_pretrained(model_dir)
    assert int(model.latent_stats_count) == 256 and not (tmp_path / "run" / "config.json").exists()
    assert not torch.equal(model.latent_mean, trained.latent_mean)  # re-measured on 256 images
    assert model.latent_mean.shape == model.latent_std.shape == (32,) and bool((model.latent_std > 0).all())
    result = json.loads((out / "diagnostics.json").read_text())
    assert 0 <= result["probe_acc_tokens"] <= 1 and result["latent_shape"] == [32, 2, 2]


# ---------------------------------------------------------------------------- latent diffusion
def test_cache_latents_and_train_dit(latents, dit_run, tokenizer_run):
    # one sentence for the user: what was cached, its shape and classes, where, and what comes next
    assert "cached 1437 latents of 1437 images, each 32x2x2" in latents.out and "10 classes (0, 1, 2" in latents.out
    assert f"tcae train-dit PRESET latents={latents.dir}" in latents.out
    meta = json.loads((latents.dir / "meta.json").read_text())
    assert meta["num_samples"] == 1437 and meta["latent_shape"] == [32, 2, 2] and meta["num_classes"] == 10
    assert meta["complete"] and list(latents.dir.glob("shard-*.safetensors"))

    assert f"run directory: {dit_run.run}" in dit_run.out
    for name in ("config.json", "model.safetensors"):
        assert (dit_run.model / name).is_file(), name
    # the cache's own statistics, recomputed from the cached latents themselves: per channel, over all rows
    # and latent positions
    z = torch.cat([load_file(f)["latents"].double() for f in sorted(latents.dir.glob("shard-*.safetensors"))])
    assert z.shape[0] == 1437
    z = z.transpose(0, 1).flatten(1)
    assert meta["mean"] == pytest.approx(z.mean(1).tolist(), rel=1e-5, abs=1e-6)
    assert meta["std"] == pytest.approx(z.std(1, correction=0).tolist(), rel=1e-5, abs=1e-6)
    # one home: the normalisation is the tokenizer's stored statistics (measured when training exported
    # it), which the cache records and the DiT keeps in its own weights
    tok = TCAE.from_pretrained(tokenizer_run.model)
    assert tok.has_latent_stats and meta["normalization"]["source"] == "tokenizer"
    assert meta["normalization"]["mean"] == pytest.approx(tok.latent_mean.tolist(), rel=1e-6)
    dit = DiT.from_pretrained(dit_run.model)
    assert torch.equal(dit.latent_mean, tok.latent_mean) and torch.equal(dit.latent_std, tok.latent_std)
    assert latest_checkpoint(dit_run.run / "checkpoints").name == "step-00000004.pt"
    dit_cfg = json.loads((dit_run.model / "config.json").read_text())
    assert (dit_cfg["in_channels"], dit_cfg["input_size"], dit_cfg["num_classes"]) == (32, 2, 10)


def test_sample_writes_npz_and_grid(dit_run, tokenizer_run, tmp_path, capsys):
    out = tmp_path / "samples"
    assert cli(["sample", "--dit", str(dit_run.run), "--model", str(tokenizer_run.model), "--num", "2",
                "--classes", "0,1", "--cfg", "1.5", "--steps", "4", "--out", str(out), "--no-progress"]) == 0
    assert "wrote 4 samples" in capsys.readouterr().out
    with np.load(out / "samples.npz") as npz:
        assert npz["arr_0"].dtype == np.uint8 and npz["arr_0"].shape == (4, 32, 32, 3)
        assert npz["arr_1"].tolist() == [0, 0, 1, 1]
    with Image.open(out / "grid.png") as im:
        assert im.format == "PNG"
    info = json.loads((out / "sample_config.json").read_text())
    assert info["cfg"] == 1.5 and info["steps"] == 4 and info["latent_stats"] == "dit"


def test_chain_samples_from_copied_model_directories(tokenizer_run, latents, dit_run, tmp_path):
    """train -> cache-latents -> train-dit -> sample, with no diagnose step: `sample` needs only the two model
    directories, wherever they were copied, and gives the same samples as from the originals."""
    tok, dit = tmp_path / "elsewhere" / "tok", tmp_path / "elsewhere" / "dit"
    shutil.copytree(tokenizer_run.model, tok)
    shutil.copytree(dit_run.model, dit)
    common = ["--num", "2", "--classes", "0,3", "--steps", "3", "--seed", "7", "--no-progress"]
    assert cli(["sample", "--dit", str(dit_run.model), "--model", str(tokenizer_run.model), *common,
                "--out", str(tmp_path / "a")]) == 0
    assert cli(["sample", "--dit", str(dit), "--model", str(tok), *common, "--out", str(tmp_path / "b")]) == 0
    with np.load(tmp_path / "a" / "samples.npz") as a, np.load(tmp_path / "b" / "samples.npz") as b:
        assert a["arr_0"].shape == (4, 32, 32, 3) and np.array_equal(a["arr_0"], b["arr_0"])


# ---------------------------------------------------------------------------- exact resume after SIGKILL
# Runs `tcae ARGS` and SIGKILLs its own process when the loop is about to take its 5th step: after
# checkpoint 3 is on disk and step 4 is done but not checkpointed. (A DiT step on 2x2 latents takes
# milliseconds, so a kill from outside after step-00000003.pt appears would race the run's end.)
_KILL_AT_STEP_4 = """
import os, signal, sys
import torch
torch.set_num_threads(1)
from tcae.training import dit
_step = dit.DiTTrainer.train_step
def train_step(self, batch):
    if self.step == 4:
        os.kill(os.getpid(), signal.SIGKILL)
    return _step(self, batch)
dit.DiTTrainer.train_step = train_step
from tcae.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _assert_same(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_dit_resume_after_sigkill_equals_uninterrupted(latents, tmp_path):
    common = ["train-dit", "dit-tiny", f"latents={latents.dir}", f"run_dir={tmp_path}", "steps=6",
              "checkpoint_every=3", "keep_last=10", "batch_size=16", "log_every=1", "progress=false"]
    assert run_cli([*common, "name=a"]).code == 0

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _KILL_AT_STEP_4, *common, "name=b"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    b = tmp_path / "b"
    assert [p.name for p in list_checkpoints(b / "checkpoints")] == ["step-00000003.pt"]
    assert not (b / "model").exists()

    r = run_cli([*common, "name=b", "resume=auto"])
    assert r.code == 0
    final_a = load_checkpoint(tmp_path / "a" / "checkpoints" / "step-00000006.pt")
    final_b = load_checkpoint(b / "checkpoints" / "step-00000006.pt")
    assert final_a["step"] == final_b["step"] == 6
    for key in ("model", "ema", "optimizers"):
        _assert_same(final_a[key], final_b[key], key)
    _assert_same(final_a["rng"]["torch"], final_b["rng"]["torch"], "rng.torch")
    # the logged losses agree too (step 4 was logged before the kill and again after the resume)
    rows = {name: {json.loads(x)["step"]: json.loads(x)["loss"]
                   for x in (tmp_path / name / "scalars.jsonl").read_text().splitlines()} for name in "ab"}
    assert rows["a"] == rows["b"]


# ---------------------------------------------------------------------------- bad input
def test_misspelt_key_exits_2_naming_it(tmp_path, capsys):
    assert cli(["train", "tiny", f"run_dir={tmp_path}", "ssl.num_locals=2"]) == 2
    err = capsys.readouterr().err
    assert "ssl.num_locals" in err and "did you mean ssl.num_local" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir()), "a rejected config must not create a run directory"
    assert cli(["train-dit", "dit-tiny", "data.latent=x"]) == 2
    assert "data.latent" in capsys.readouterr().err


def test_unknown_config_exits_2_listing_shipped_configs(capsys):
    assert cli(["train", "no-such-config"]) == 2
    err = capsys.readouterr().err
    assert "no-such-config" in err
    assert all(name in err for name in list_configs())
    assert {"tiny", "tiny-decoder", "digits", "s", "b", "b-decoder", "dit-tiny", "dit-b"} <= set(list_configs())


@pytest.mark.parametrize("argv, names", [
    (["eval", "--model", "/nonexistent", "--data", "builtin:digits:val", "--metrics", "psnr"], "/nonexistent"),
    (["diagnose", "--model", "/nonexistent/run/model", "--data", "builtin:digits"], "/nonexistent/run/model"),
    (["cache-latents", "--model", "./no-such-run", "--data", "builtin:digits", "--out", "x"], "./no-such-run"),
    (["train-dit", "dit-tiny", "latents=/nonexistent"], "/nonexistent/meta.json"),
])
def test_missing_model_or_data_exits_2_with_clear_message(argv, names, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert names in err and "not found" in err
    assert "Traceback" not in err and "Repo id" not in err


def test_sample_with_missing_dit_exits_2(tokenizer_run, tmp_path, capsys):
    assert cli(["sample", "--dit", str(tmp_path / "none"), "--model", str(tokenizer_run.model), "--num", "1",
                "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "none") in err and "not found" in err and "Repo id" not in err


def test_eval_image_size_not_divisible_by_f_exits_2(tokenizer_run, capsys):
    assert TCAE.from_pretrained(tokenizer_run.model).config.compression == 16
    assert cli(["eval", "--model", str(tokenizer_run.model), "--data", "builtin:digits:val", "--image-size", "40",
                "--metrics", "psnr"]) == 2
    err = capsys.readouterr().err
    assert "divisible by 16" in err and "40" in err and "Traceback" not in err
