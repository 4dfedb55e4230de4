"""What a run directory promises (issue 21, training side): phase 2 trains on phase 1's data, a changed
config is never resumed into a run, one process per run directory, the exported EMA is as good as the
trained weights on a short run, a warm-up longer than the run is reported, folder data gets reconstruction
grids, and the DiT's run says what it was trained on."""

import contextlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from tcae.cli.main import main as cli
from tcae.config import TrainConfig, load_config
from tcae.data import build_dataset
from tcae.models import TCAE
from tcae.models.card import read_card_info
from tcae.training.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from tcae.training.ema import warmup_decay

# tcae-tiny at 32 px without iBOT: a step takes milliseconds on a CPU
FAST = ["image_size=32", "batch_size=4", "ssl=false", "optim.warmup_steps=1", "log_every=1", "image_every=0",
        "progress=false", "latent_stats_images=8"]


def run_cli(argv: list) -> SimpleNamespace:
    """`tcae ARGV` in-process: exit code and stdout (module fixtures cannot use capsys)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli([str(a) for a in argv])
    return SimpleNamespace(code=code, out=out.getvalue())


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def folder(work) -> Path:
    """10 odd-sized RGB images in two class sub-folders."""
    rng = np.random.default_rng(0)
    root = work / "my images"
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def phase1(work, folder) -> Path:
    """`tcae train tiny data=FOLDER steps=2` (32 px)."""
    assert run_cli(["train", "tiny", *FAST, f"data={folder}", f"run_dir={work}", "name=p1", "steps=2"]).code == 0
    return work / "p1"


# ---------------------------------------------------------------------------- 1. phase 2 inherits the data
def test_phase2_trains_on_the_folder_of_the_run_it_starts_from(phase1, folder, tmp_path, caplog):
    common = ["finetune-decoder", "tiny-decoder", "batch_size=4", "progress=false", "latent_stats_images=8",
              f"run_dir={tmp_path}", "steps=1"]
    with caplog.at_level(logging.INFO, logger="tcae.train"):
        assert run_cli([*common, "name=p2", f"init={phase1}"]).code == 0
    run = tmp_path / "p2"
    cfg = load_config(TrainConfig, str(run / "config.yaml"))
    # tiny-decoder.yaml says builtin:photos at 64 px; the phase-1 run trained on the folder at 32 px
    assert (cfg.data.spec, cfg.data.image_size) == (str(folder), 32)
    assert read_card_info(run / "model" / "README.md")["training_data"] == str(folder)
    assert f"data {folder} at 32 px" in caplog.text and f"the run {phase1}" in caplog.text
    # from the model directory (its card) as well, and data= on the command line wins
    assert run_cli([*common, "name=p2m", f"init={phase1 / 'model'}"]).code == 0
    assert load_config(TrainConfig, str(tmp_path / "p2m" / "config.yaml")).data.spec == str(folder)
    assert run_cli([*common, "name=p2d", f"init={phase1}", "data=builtin:digits"]).code == 0
    cfg = load_config(TrainConfig, str(tmp_path / "p2d" / "config.yaml"))
    assert (cfg.data.spec, cfg.data.image_size) == ("builtin:digits", 32)


# ---------------------------------------------------------------------------- 6. grids for folder data
def test_folder_run_writes_reconstruction_grids_of_fixed_training_images(phase1):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(phase1 / "tb"), size_guidance={"images": 0})
    acc.Reload()
    assert "train_fixed/reconstruction" in acc.Tags()["images"]
    image = acc.Images("train_fixed/reconstruction")[-1]
    assert image.step == 2 and image.width > 8 * 32  # 8 images and their reconstructions, side by side
    assert "train_fixed/psnr_ema" in acc.Tags()["scalars"]


# ---------------------------------------------------------------------------- 2. a changed config is refused
def test_changed_lr_is_refused_naming_it_and_nothing_is_rewritten(tmp_path, capsys):
    common = ["train", "tiny", *FAST, "data=builtin:digits", f"run_dir={tmp_path}", "name=r"]
    assert cli([*common, "steps=2"]) == 0
    run = tmp_path / "r"
    before = files_under(run)
    capsys.readouterr()
    assert cli([*common, "steps=4", "lr=5e-4"]) == 2
    err = capsys.readouterr().err
    assert "optim.lr: 0.001 -> 0.0005" in err and str(run) in err and "Traceback" not in err
    assert "name=" in err and "resume=never" in err
    assert files_under(run) == before  # config.yaml, checkpoint, model, logs: byte for byte
    # the same config with more steps resumes as before
    assert cli([*common, "steps=3"]) == 0
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-00000002.pt", "step-00000003.pt"]
    # resume=never starts over: the old run's checkpoints are gone, config.yaml describes the new weights
    assert cli([*common, "steps=1", "lr=5e-4", "resume=never"]) == 0
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-00000001.pt"]
    assert load_config(TrainConfig, str(run / "config.yaml")).optim.lr == 5e-4
    assert [json.loads(r)["step"] for r in (run / "scalars.jsonl").read_text().splitlines()] == [1]


def test_the_same_folder_written_another_way_resumes(folder, tmp_path, monkeypatch):
    """`data=DIR`, `data=DIR/` and an absolute or relative path to it are one folder: the run resumes."""
    common = ["train", "tiny", *FAST, f"run_dir={tmp_path}", "name=f"]
    assert cli([*common, f"data={folder}", "steps=1"]) == 0
    monkeypatch.chdir(folder.parent)
    assert cli([*common, f"data={folder.name}/", "steps=2"]) == 0
    assert [p.name for p in list_checkpoints(tmp_path / "f" / "checkpoints")][-1] == "step-00000002.pt"


# ---------------------------------------------------------------------------- 3. one run per directory
_HOLD = """
import sys, time
from tcae.util import file_lock
with file_lock(sys.argv[1], wait=False, record_pid=True):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_second_run_on_a_locked_directory_stops_naming_it_and_the_holder(tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(run / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert cli(["train", "tiny", *FAST, "data=builtin:digits", f"run_dir={tmp_path}", "name=r", "steps=1"]) == 2
        err = capsys.readouterr().err
        assert f"run directory {run} is in use by process {holder.pid}" in err and "Traceback" not in err
        assert not (run / "config.yaml").exists() and not (run / "checkpoints").exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # a killed holder releases the lock: the next run is not blocked
        holder.wait()
    assert cli(["train", "tiny", *FAST, "data=builtin:digits", f"run_dir={tmp_path}", "name=r", "steps=1"]) == 0
    assert latest_checkpoint(run / "checkpoints").name == "step-00000001.pt"


# ---------------------------------------------------------------------------- 4. EMA warm-up
def test_ema_decay_warmup_matches_diffusers_ema_model():
    assert [warmup_decay(s, 0.99) for s in (0, 1, 40)] == [0.0, 2 / 11, 41 / 50]
    assert warmup_decay(10_000, 0.99) == 0.99 and warmup_decay(10_000, 0.9999) == pytest.approx(10_001 / 10_010)
    diffusers = pytest.importorskip("diffusers.training_utils")
    ref = diffusers.EMAModel([torch.nn.Parameter(torch.zeros(1))], decay=0.999)
    # diffusers counts updates from 1 (step() increments optimization_step, then asks for its decay)
    for step in (0, 1, 2, 9, 40, 500, 20_000):
        assert warmup_decay(step, 0.999) == pytest.approx(ref.get_decay(step + 1), abs=1e-12), step


def test_exported_ema_of_a_40_step_run_is_within_0_3_db_of_the_trained_weights(tmp_path):
    assert cli(["train", "tiny", "image_size=32", "batch_size=8", "ssl=false", "data=builtin:digits", "lr=2e-3",
                "optim.warmup_steps=2", "steps=40", "log_every=40", "image_every=0", "progress=false",
                "latent_stats_images=0", f"run_dir={tmp_path}", "name=e"]) == 0
    run = tmp_path / "e"
    ema = TCAE.from_pretrained(run / "model").eval()
    raw = TCAE.from_pretrained(run / "model").eval()
    student = load_checkpoint(latest_checkpoint(run / "checkpoints"))["student"]
    raw.load_state_dict({k.removeprefix("model."): v for k, v in student.items()}, strict=False)
    assert not torch.equal(raw.decoder.to_pixels.weight, ema.decoder.to_pixels.weight)
    val = build_dataset("builtin:digits:val", 32, train=False)
    x = torch.stack([val[i]["image"] for i in range(64)])

    def psnr(model: TCAE) -> float:
        with torch.no_grad():
            rec = model(x).sample.clamp(-1, 1)
        return float((-10 * torch.log10(((rec - x) / 2).pow(2).flatten(1).mean(1))).mean())

    # a fixed decay of 0.99 from step 0 exported 2.8 dB below the trained weights here
    assert abs(psnr(ema) - psnr(raw)) < 0.3, (psnr(ema), psnr(raw))


# ---------------------------------------------------------------------------- 5. LR warm-up > run
def test_lr_warmup_longer_than_the_run_is_reported(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="tcae.train"):
        assert cli(["train", "tiny", *FAST, "data=builtin:digits", f"run_dir={tmp_path}", "name=w", "steps=2",
                    "optim.warmup_steps=50"]) == 0
    assert "warm-up (optim.warmup_steps=50) is longer than the run (steps=2)" in caplog.text


# ---------------------------------------------------------------------------- 7. the DiT's run
@pytest.fixture(scope="module")
def latents(work, folder, phase1) -> Path:
    out = work / "latents"
    assert run_cli(["cache-latents", "--model", phase1, "--data", folder, "--image-size", "32", "--out", out,
                    "--no-progress"]).code == 0
    meta = json.loads((out / "meta.json").read_text())
    if "class_names" not in meta:  # written by cache-latents where it knows them (issue 21, data side)
        meta["class_names"] = ["cats", "dogs"]
        (out / "meta.json").write_text(json.dumps(meta))
    return out


def test_train_dit_without_a_full_batch_says_the_counts_and_makes_no_run_directory(latents, tmp_path, capsys):
    assert cli(["train-dit", "dit-tiny", f"latents={latents}", f"run_dir={tmp_path}", "name=d", "steps=1",
                "batch_size=128", "progress=false"]) == 2
    err = capsys.readouterr().err
    assert "10 latents, batch_size 128: no full batch; lower batch_size= to at most 10" in err
    assert not (tmp_path / "d").exists()


def test_dit_model_card_names_its_data_steps_tokenizer_and_classes(latents, phase1, tmp_path):
    assert run_cli(["train-dit", "dit-tiny", f"latents={latents}", f"run_dir={tmp_path}", "name=d", "steps=2",
                    "batch_size=4", "progress=false"]).code == 0
    model = tmp_path / "d" / "model"
    info = read_card_info(model / "README.md")
    assert info["training_data"].startswith(f"latent cache {latents}") and info["steps"] == 2
    # the tokenizer the cache recorded (its absolute path: `tcae sample --model` can use it as it is)
    assert info["class_names"] == ["cats", "dogs"] and info["tokenizer"] == str(Path(phase1).resolve())
    text = (model / "README.md").read_text()
    assert "| classes | 2: 0 `cats`, 1 `dogs` |" in text
    metrics = text.split("## Metrics")[1].split("##")[0]
    assert "tcae eval-gen" in metrics and "tcae sample" in metrics and "`tcae eval`" not in metrics


def test_sample_with_a_tokenizer_run_as_dit_says_so(phase1, tmp_path, capsys):
    assert cli(["sample", "--dit", str(phase1), "--model", str(phase1), "--num", "1", "--out", str(tmp_path / "s"),
                "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"tcae sample: error: --dit {phase1} is a tokenizer run, not a DiT; pass it as --model "
                   "(and the train-dit run as --dit)")
    assert not (tmp_path / "s").exists()


def test_sigkill_run_releases_its_lock(tmp_path):
    """A run killed while it holds the run directory's lock (flock) never blocks its own resume."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "tcae.cli.main", "train", "tiny", *FAST, "data=builtin:digits",
           f"run_dir={tmp_path}", "name=k", "steps=1000", "checkpoint_every=1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "k" / "checkpoints"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list_checkpoints(ckpts):
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = int(load_checkpoint(latest_checkpoint(ckpts))["step"])
    assert cli(["train", "tiny", *FAST, "data=builtin:digits", f"run_dir={tmp_path}", "name=k",
                f"steps={done + 1}", "checkpoint_every=1"]) == 0
    assert latest_checkpoint(ckpts).name == f"step-{done + 1:08d}.pt"
