"""Tokenizer training: loss falls, SSL teacher, exact resume after SIGKILL, DDP, bad input, phase 2."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tcae.cli.main import main as cli
from tcae.config import TRAIN_ALIASES, ConfigError, TrainConfig, load_config
from tcae.models import TCAE
from tcae.training.checkpoint import latest_checkpoint, load_checkpoint
from tcae.training.ema import cosine_momentum
from tcae.training.loop import NonFiniteLossError
from tcae.training.tokenizer import TokenizerTrainer

# A tiny, fast setting of the shipped `tiny` config: 32 px, small heads, few local crops.
FAST = ["image_size=32", "batch_size=4", "data.epoch_size=64", "ssl.out_dim=64", "ssl.patch_out_dim=64",
        "ssl.head_hidden_dim=32", "ssl.head_bottleneck_dim=16", "ssl.num_local=2", "optim.warmup_steps=2",
        "log_every=1", "image_every=0", "progress=false"]


def make_cfg(tmp_path: Path, *overrides: str, config: str = "tiny"):
    return load_config(TrainConfig, config, [*FAST, f"run_dir={tmp_path}", *overrides], TRAIN_ALIASES)


def scalars(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "scalars.jsonl").read_text().splitlines()]


def test_tiny_run_loss_falls(tmp_path):
    run = TokenizerTrainer(make_cfg(tmp_path, "name=fall", "ssl=false", "steps=40", "lr=2e-3",
                                    "batch_size=8", "data=builtin:digits")).fit()
    losses = [r["l1"] for r in scalars(run)]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    model = TCAE.from_pretrained(run / "model")
    assert model.encode(torch.zeros(1, 3, 32, 32)).shape == (1, 32, 2, 2)
    assert (run / "config.yaml").is_file() and list((run / "tb").iterdir())


def test_joint_ssl_teacher_is_an_ema_of_the_encoder_only(tmp_path):
    trainer = TokenizerTrainer(make_cfg(tmp_path, "name=ssl", "steps=3"))
    teacher = trainer.teacher.module
    # the teacher is the encoder and heads only (DINOv2's parallel dicts): no decoder weights anywhere
    assert set(teacher.keys()) == {"encoder", "cls_head"}  # the iBOT head is shared: one copy
    assert set(teacher.state_dict()) == {f"encoder.{k}" for k in trainer.model.encoder.state_dict()} | {
        f"cls_head.{k}" for k in trainer.student.cls_head.state_dict()}
    assert not any(p.requires_grad for p in teacher.parameters())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    terms = trainer.train_step([next(trainer.batches())])
    assert np.isfinite(float(terms["ibot_cls"])) and np.isfinite(float(terms["ibot_mim"]))
    # after one step: teacher = lerp(teacher, student, 1 - momentum), never an optimizer step of its own
    m = cosine_momentum(0, 3, trainer.cfg.ssl.momentum)
    student = trainer.student.state_dict()
    for name, sname in (("encoder.coarse.blocks.0.attn.qkv.weight", "model.encoder.coarse.blocks.0.attn.qkv.weight"),
                        ("cls_head.mlp.0.weight", "cls_head.mlp.0.weight"),
                        ("encoder.cls_token", "model.encoder.cls_token")):
        expected = torch.lerp(before[name], student[sname], 1 - m)
        assert not torch.equal(teacher.state_dict()[name], before[name]), name
        torch.testing.assert_close(teacher.state_dict()[name], expected, rtol=0, atol=1e-7)


def _train_cmd(tmp_path, name, steps, *extra):
    return [sys.executable, "-m", "tcae.cli.main", "train", "tiny", *FAST, f"run_dir={tmp_path}",
            f"name={name}", f"steps={steps}", "checkpoint_every=3", "keep_last=10", *extra]


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_train_cmd(tmp_path, "straight", 9), check=True, env=env, capture_output=True)
    ckpts = tmp_path / "killed" / "checkpoints"
    proc = subprocess.Popen(_train_cmd(tmp_path, "killed", 9, "checkpoint_every=3"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not (ckpts / "step-00000003.pt").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest_checkpoint(ckpts) is not None
    assert latest_checkpoint(ckpts).name != "step-00000009.pt", "killed too late to test resume"
    subprocess.run(_train_cmd(tmp_path, "killed", 9, "resume=auto"), check=True, env=env, capture_output=True)
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "step-00000009.pt")
    b = load_checkpoint(ckpts / "step-00000009.pt")
    for key in ("student", "ema", "teacher"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), f"{key}.{k} differs after resume"
    for k in a["ibot_loss"]:
        assert torch.equal(a["ibot_loss"][k], b["ibot_loss"][k])
    # the steps logged between checkpoint 3 and the kill are logged once, in scalars.jsonl and TensorBoard
    assert [r["step"] for r in scalars(tmp_path / "killed")] == list(range(1, 10))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "killed" / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, 10))


@pytest.mark.slow
def test_torchrun_two_processes_match_single_process(tmp_path):
    # GAN from step 0: the adaptive weight and the discriminator step must also see the global batch
    common = [*FAST, f"run_dir={tmp_path}", "steps=1", "ssl=false", "batch_size=8", "optim.warmup_steps=1",
              "gan=true", "loss.gan_start=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "tcae.cli.main", "train", "tiny", *common, "name=one"],
                   check=True, env=env, capture_output=True)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                        "--standalone", "-m", "tcae.cli.main", "train", "tiny", *common, "name=two"],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    one, two = scalars(tmp_path / "one")[0], scalars(tmp_path / "two")[0]
    for key in ("loss", "gan_w", "gan_g", "gan_d"):
        assert one[key] == pytest.approx(two[key], rel=1e-5), (key, one, two)
    # the gradient all-reduce makes the updated weights agree as well (atol 2% of lr: Adam's first step is
    # ~lr * sign(grad), which turns summation-order noise in a near-zero gradient into a visible difference)
    a = load_checkpoint(latest_checkpoint(tmp_path / "one" / "checkpoints"))
    b = load_checkpoint(latest_checkpoint(tmp_path / "two" / "checkpoints"))
    for net in ("student", "disc"):
        for k in a[net]:
            torch.testing.assert_close(a[net][k], b[net][k], rtol=1e-4, atol=2e-5, msg=lambda m, k=k: f"{k}: {m}")


def _odd_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    (root / "a").mkdir(parents=True)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / "a" / f"{i}.png")
    Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(root / "a" / "gray.jpg")
    Image.fromarray(rng.integers(0, 255, (40, 40, 4), dtype=np.uint8)).save(root / "a" / "rgba.png")
    Image.fromarray(rng.integers(0, 65535, (40, 40), dtype=np.uint16)).save(root / "a" / "deep.png")
    (root / "a" / "broken.jpg").write_bytes(b"not an image at all")
    return root


def test_folder_with_corrupt_and_odd_images_trains(tmp_path):
    data = _odd_folder(tmp_path / "imgs")
    run = TokenizerTrainer(make_cfg(tmp_path, "name=folder", f"data={data}", "steps=4")).fit()
    assert all(np.isfinite(r["loss"]) for r in scalars(run))


def test_misspelt_key_is_rejected_with_its_name(capsys):
    assert cli(["train", "tiny", "optim.lrr=1e-3"]) == 2
    err = capsys.readouterr().err
    assert "optim.lrr" in err and "optim.lr" in err
    with pytest.raises(ConfigError, match="ssl.num_locals"):
        load_config(TrainConfig, "tiny", ["ssl.num_locals=3"], TRAIN_ALIASES)


def _training_state(trainer) -> dict[str, torch.Tensor]:
    """Every tensor a step may change: weights, EMA, teacher, iBOT centers, discriminator, optimizer state."""
    out = {f"{k}.{n}": t.detach().clone() for k, st in trainer.state_extra().items() for n, t in st.items()}
    for name, opt in trainer.optimizers.items():
        for i, st in opt.state_dict()["state"].items():
            out.update({f"opt.{name}.{i}.{n}": torch.as_tensor(t).clone() for n, t in st.items()})
    return out


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_non_finite_step_changes_nothing_and_stops(tmp_path, where):
    """A step with a NaN loss (or finite loss, NaN gradient) changes no weight, optimizer state, EMA, teacher,
    center or discriminator; the run goes on to the next log step, then stops with the message and keeps
    the last good checkpoint."""
    trainer = TokenizerTrainer(make_cfg(tmp_path, "name=nan", "steps=8", "checkpoint_every=2", "log_every=3",
                                        "gan=true", "loss.gan_start=0", "loss.lecam_weight=0.1",
                                        "loss.disc_channels=8"))
    real = trainer.forward_backward
    snapshots = {}

    def poisoned(batch, scale):
        if trainer.step == 2:
            snapshots["before"] = _training_state(trainer)
            if where == "loss":
                batch = {**batch, "global_crops": batch["global_crops"] * float("nan")}
            else:  # a NaN in one gradient only: the loss stays finite
                p = trainer.model.decoder.to_pixels.bias
                p.register_hook(lambda g: g * float("nan") if trainer.step == 2 else g)
        return real(batch, scale)

    real_step = trainer.train_step

    def step(micro):
        out = real_step(micro)
        if trainer.step == 2:
            snapshots["after"] = _training_state(trainer)
        return out

    trainer.forward_backward, trainer.train_step = poisoned, step
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 2: .*step-00000002.pt"):
        trainer.fit()
    before, after = snapshots["before"], snapshots["after"]
    assert before.keys() == after.keys() and any(k.startswith("teacher.") for k in before)
    for k in before:
        assert torch.equal(before[k], after[k]), f"{k} changed in a non-finite step"
    ckpt = latest_checkpoint(trainer.ckpt_dir)
    assert ckpt.name == "step-00000002.pt" and load_checkpoint(ckpt)["step"] == 2
    assert trainer.step == 3  # stopped at the first log step after the bad one


def test_bf16_autocast_and_gan_path(tmp_path):
    run = TokenizerTrainer(make_cfg(tmp_path, "name=bf16", "precision=bf16", "gan=true", "loss.gan_start=1",
                                    "loss.lecam_weight=0.01", "loss.disc_channels=8", "steps=3")).fit()
    rows = scalars(run)
    assert "gan_g" not in rows[0] and "gan_d" in rows[-1] and "lecam" in rows[-1]
    assert all(np.isfinite(r["loss"]) for r in rows)


def test_finetune_decoder_freezes_encoder(tmp_path):
    phase1 = TokenizerTrainer(make_cfg(tmp_path, "name=p1", "ssl=false", "steps=2")).fit()
    assert cli(["finetune-decoder", "tiny-decoder", *FAST, f"run_dir={tmp_path}", "name=p2", "steps=3",
                f"init={phase1}"]) == 0
    before, after = TCAE.from_pretrained(phase1 / "model"), TCAE.from_pretrained(tmp_path / "p2" / "model")
    for (n, a), b in zip(before.encoder.named_parameters(), after.encoder.parameters()):
        assert torch.equal(a, b), f"encoder parameter {n} changed in phase 2"
    assert not torch.equal(before.decoder.to_pixels.weight, after.decoder.to_pixels.weight)


def test_resume_rejects_checkpoint_of_another_model(tmp_path):
    TokenizerTrainer(make_cfg(tmp_path, "name=x", "ssl=false", "steps=1")).fit()
    with pytest.raises(ValueError, match="different model config"):
        TokenizerTrainer(make_cfg(tmp_path, "name=x", "ssl=false", "steps=2", "model.latent_channels=16")).fit()


def test_short_override_keys_reach_their_dotted_paths():
    cfg = load_config(TrainConfig, "tiny", ["model=tcae-s", "data=builtin:digits", "image_size=32", "batch_size=8",
                                            "lr=1e-4", "ssl=false", "perceptual=none", "gan=true"], TRAIN_ALIASES)
    assert (cfg.model.name, cfg.data.spec, cfg.data.image_size, cfg.data.batch_size) == ("tcae-s", "builtin:digits",
                                                                                         32, 8)
    assert (cfg.optim.lr, cfg.ssl.enabled, cfg.loss.perceptual, cfg.loss.gan) == (1e-4, False, "none", True)


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    """compile=true (torch.compile of the student, inductor on CPU) trains the same steps as eager."""
    losses = {}
    for mode in ("eager", "compiled"):
        run = TokenizerTrainer(make_cfg(tmp_path, f"name={mode}", "steps=3", f"compile={mode == 'compiled'}")).fit()
        losses[mode] = [(r["l1"], r["ibot_cls"], r["ibot_mim"]) for r in scalars(run)]
    np.testing.assert_allclose(losses["compiled"], losses["eager"], rtol=2e-3, atol=1e-5)


def test_color_augment_reaches_the_ssl_crops_but_not_the_reconstruction_input(tmp_path):
    batches = {}
    for on in (False, True):
        trainer = TokenizerTrainer(make_cfg(tmp_path, f"name=c{on}", "steps=1", f"ssl.color_augment={on}"))
        batches[on] = next(trainer.batches())
    b = len(batches[False]["image"])
    # same seed, same crops: crop 0 (reconstruction input) identical, the augmented views differ
    assert torch.equal(batches[False]["image"], batches[True]["image"])
    assert not torch.equal(batches[False]["global_crops"][b:], batches[True]["global_crops"][b:])
    assert not torch.equal(batches[False]["local_crops"], batches[True]["local_crops"])
