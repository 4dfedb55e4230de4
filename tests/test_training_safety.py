"""The training path at GPU scale, checked on the CPU: identical DDP ranks from step 0, checkpoints that never
run code, failed writes that keep the last good checkpoint, a step without host syncs, gradient accumulation,
fp16, warm starts, and the settings that used to be silently ignored."""

import errno
import json
import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.overrides import TorchFunctionMode

from tcae.cli.main import main as cli
from tcae.config import TRAIN_ALIASES, TrainConfig, load_config
from tcae.data import MaskedTokens
from tcae.models import TCAE
from tcae.training import checkpoint as ckpt_mod
from tcae.training.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from tcae.training.tokenizer import TokenizerTrainer

FAST = ["image_size=32", "batch_size=4", "data.epoch_size=64", "ssl.out_dim=64", "ssl.patch_out_dim=64",
        "ssl.head_hidden_dim=32", "ssl.head_bottleneck_dim=16", "ssl.num_local=2", "optim.warmup_steps=2",
        "log_every=1", "image_every=0", "progress=false", "latent_stats_images=16"]
GAN = ["gan=true", "loss.gan_start=0", "loss.lecam_weight=0.1", "loss.disc_channels=8"]


def make_cfg(tmp_path: Path, *overrides: str, config: str = "tiny"):
    return load_config(TrainConfig, config, [*FAST, f"run_dir={tmp_path}", *overrides], TRAIN_ALIASES)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weights(trainer) -> dict[str, torch.Tensor]:
    nets = {"student": trainer.student, "ema": trainer.ema.module, "disc": trainer.disc,
            **({"teacher": trainer.teacher.module} if trainer.teacher is not None else {})}
    return {f"{n}.{k}": v.detach().clone() for n, m in nets.items() for k, v in m.state_dict().items()}


# ------------------------------------------------------------------ identical ranks (2 gloo processes)
def _rank_worker(rank: int, world: int, port: int, run_dir: str, out_dir: str, extra: tuple[str, ...] = ()
                 ) -> None:
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        trainer = TokenizerTrainer(make_cfg(Path(run_dir), "name=ddp", "steps=2", "batch_size=8", *GAN, *extra))
        built = _weights(trainer)
        data = trainer.batches()
        for _ in range(2):
            trainer.train_step([next(data)])
            trainer.step += 1
        torch.save({"built": built, "stepped": _weights(trainer)}, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        from tcae import dist

        dist.cleanup()


def test_ddp_ranks_identical_after_construction_and_two_steps(tmp_path):
    """Student, iBOT teacher, discriminator and EMA: bit-identical on both ranks from step 0 (rank r used to
    seed with seed + r before building, so its teacher and EMA -- copies DDP's broadcast never reaches --
    differed) and after two joint iBOT + GAN steps."""
    mp.spawn(_rank_worker, args=(2, _free_port(), str(tmp_path / "runs"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "0.pt"), torch.load(tmp_path / "1.pt")
    for when in ("built", "stepped"):
        assert r0[when].keys() == r1[when].keys()
        assert {k.split(".")[0] for k in r0[when]} == {"student", "teacher", "ema", "disc"}
        for k in r0[when]:
            assert torch.equal(r0[when][k], r1[when][k]), f"{k} differs between ranks ({when})"
    assert any(not torch.equal(r0["built"][k], r0["stepped"][k]) for k in r0["built"] if k.startswith("teacher"))


def test_ddp_ranks_identical_for_a_dcae(tmp_path):
    """The same for diffusers' AutoencoderDC through the trainer's autoencoder interface (no SSL: no teacher):
    student, EMA and discriminator bit-identical on both ranks when built and after two L1 + GAN steps."""
    dcae = ("model.name=dc-ae-tiny", "model.patch_size=null", "ssl=false")
    mp.spawn(_rank_worker, args=(2, _free_port(), str(tmp_path / "runs"), str(tmp_path), dcae), nprocs=2,
             join=True)
    r0, r1 = torch.load(tmp_path / "0.pt"), torch.load(tmp_path / "1.pt")
    assert {k.split(".")[0] for k in r0["built"]} == {"student", "ema", "disc"}
    assert any(".autoencoder.encoder.down_blocks." in k for k in r0["built"])  # AutoencoderDC modules, not a TC-AE
    for when in ("built", "stepped"):
        for k in r0[when]:
            assert torch.equal(r0[when][k], r1[when][k]), f"{k} differs between ranks ({when})"
    assert any(not torch.equal(r0["built"][k], r0["stepped"][k]) for k in r0["built"] if k.startswith("student"))


# ------------------------------------------------------------------ checkpoints never run code
class _CreatesFile:
    """Unpickling this calls open(path, "w"): a checkpoint that would create a file when loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def test_checkpoint_holding_an_object_is_refused_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "pwned"
    ckpts = tmp_path / "runs" / "evil" / "checkpoints"
    ckpts.mkdir(parents=True)
    bad = ckpts / "step-00000001.pt"
    with open(bad, "wb") as f:
        pickle.dump({"step": 1, "payload": _CreatesFile(str(marker))}, f)
    with pytest.raises(CheckpointError, match="refused checkpoint .*step-00000001.pt"):
        load_checkpoint(bad)
    code = cli(["train", "tiny", *FAST, f"run_dir={tmp_path / 'runs'}", "name=evil", "steps=2", "resume=auto"])
    err = capsys.readouterr().err
    assert code == 2 and f"refused checkpoint {bad}" in err and "could run code" in err and "Traceback" not in err
    assert not marker.exists()


def test_checkpoint_holds_only_plain_data(tmp_path):
    run = TokenizerTrainer(make_cfg(tmp_path, "name=plain", "steps=2", "checkpoint_every=2", *GAN)).fit()
    state = load_checkpoint(latest_checkpoint(run / "checkpoints"))  # weights_only=True
    assert isinstance(state["config"], str) and "name: plain" in state["config"]
    assert isinstance(state["rng"]["torch"], torch.Tensor)


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch, capsys):
    real_save = torch.save
    calls = {"n": 0}

    def disk_full(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint: half written, then the disk is full
            f.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ckpt_mod.torch, "save", disk_full)
    code = cli(["train", "tiny", *FAST, f"run_dir={tmp_path}", "name=full", "steps=4", "checkpoint_every=2",
                "ssl=false"])
    err = capsys.readouterr().err
    ckpts = tmp_path / "full" / "checkpoints"
    assert code == 2 and "Traceback" not in err
    assert "could not write checkpoint" in err and "No space left on device" in err
    assert f"the last good checkpoint is {ckpts / 'step-00000002.pt'}" in err
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000002.pt"]  # no .tmp left behind
    assert load_checkpoint(ckpts / "step-00000002.pt")["step"] == 2


# ------------------------------------------------------------------ no host sync in the step
class _NoHostSync(TorchFunctionMode):
    """Raises on every tensor operation that reads a value on the host (on a GPU: a stream sync), including
    boolean-mask indexing and nonzero, whose output size depends on the data."""

    SYNCING = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__float__,
               torch.Tensor.__int__, torch.Tensor.nonzero, torch.nonzero, torch.Tensor.nonzero_static,
               torch.masked_select, torch.Tensor.masked_select, torch.unique, torch.Tensor.unique,
               torch.Tensor.cpu, torch.Tensor.numpy}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.SYNCING:
            raise AssertionError(f"host sync in the training step: {func.__name__}")
        if func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__):
            index = args[1] if len(args) > 1 else None
            indices = index if isinstance(index, tuple) else (index,)
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices):
                raise AssertionError("host sync in the training step: boolean-mask indexing")
        return func(*args, **kwargs)


def test_training_step_reads_nothing_on_the_host(tmp_path):
    """Joint iBOT (centering, masked patch tokens) + GAN (adaptive weight, LeCam) + the non-finite guard,
    two micro-batches: not one value is read on the host. (On a GPU, benchmarks/gpu_check.py runs the same
    steps under torch.cuda.set_sync_debug_mode("error").)"""
    trainer = TokenizerTrainer(make_cfg(tmp_path, "name=sync", "steps=4", "batch_size=8", "grad_accum=2", *GAN))
    data = trainer.batches()
    trainer.train_step([next(data), next(data)])  # warm-up: lazily built caches (RoPE tables) may sync once
    micro = [next(data), next(data)]
    with _NoHostSync():
        terms = trainer.train_step(micro)
    assert {"loss", "l1", "ibot_cls", "ibot_mim", "gan_w", "gan_d", "lecam", "grad_norm"} <= set(terms)
    # and the guard itself is real: with a single syncing call in the step the mode raises
    with pytest.raises(AssertionError, match="host sync"), _NoHostSync():
        float(terms["loss"])


def test_masked_tokens_from_masks():
    masks = torch.tensor([[[0, 0], [0, 0]], [[1, 0], [0, 1]], [[1, 1], [1, 0]]], dtype=torch.bool)
    mt = MaskedTokens.from_masks(masks)
    assert mt.index.tolist() == [4, 7, 8, 9, 10] and mt.num_views == 2
    torch.testing.assert_close(mt.weight, torch.tensor([1 / 2, 1 / 2, 1 / 3, 1 / 3, 1 / 3]))
    tokens = torch.arange(3 * 4 * 2, dtype=torch.float32).reshape(3, 4, 2)
    torch.testing.assert_close(mt.gather(tokens), tokens[masks.flatten(1)])


# ------------------------------------------------------------------ gradient accumulation and fp16
def _final_student(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(latest_checkpoint(run / "checkpoints"))["student"]


def test_grad_accum_equals_the_larger_batch(tmp_path):
    """grad_accum=4 micro-batches of 2 == one batch of 8, up to float error (L1 is a per-sample mean). atol is
    2% of the lr: Adam's early steps are ~lr * sign(grad), which turns summation-order noise in a near-zero
    gradient into a visible difference (as in the DDP test)."""
    common = ["ssl=false", "batch_size=8", "steps=3", "checkpoint_every=3", "data=builtin:digits"]
    one = TokenizerTrainer(make_cfg(tmp_path, "name=big", *common)).fit()
    acc = TokenizerTrainer(make_cfg(tmp_path, "name=acc", "grad_accum=4", *common)).fit()
    a, b = _final_student(one), _final_student(acc)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=2e-5, msg=lambda m, k=k: f"{k}: {m}")
    rows = lambda r: [json.loads(x) for x in (r / "scalars.jsonl").read_text().splitlines()]  # noqa: E731
    assert [r["l1"] for r in rows(one)] == pytest.approx([r["l1"] for r in rows(acc)], rel=1e-5)


def test_grad_accum_resume_is_exact(tmp_path):
    common = ["grad_accum=2", "batch_size=8", "steps=4", "checkpoint_every=2", "keep_last=5"]
    straight = TokenizerTrainer(make_cfg(tmp_path, "name=s", *common)).fit()
    crashing = TokenizerTrainer(make_cfg(tmp_path, "name=r", *common))
    real_save = crashing.save

    def save_then_crash():
        real_save()
        if crashing.step == 2:
            raise KeyboardInterrupt  # the process dies right after checkpoint 2

    crashing.save = save_then_crash
    with pytest.raises(KeyboardInterrupt):
        crashing.fit()
    resumed = TokenizerTrainer(make_cfg(tmp_path, "name=r", *common)).fit()
    a, b = (load_checkpoint(r / "checkpoints" / "step-00000004.pt") for r in (straight, resumed))
    for key in ("student", "ema", "teacher"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), f"{key}.{k} differs after resume"


def test_fp16_with_gradient_scaler(tmp_path):
    with pytest.raises(ValueError, match="precision=fp16 with the adaptive GAN weight is not supported"):
        TokenizerTrainer(make_cfg(tmp_path, "name=no", "precision=fp16", *GAN))
    run = TokenizerTrainer(make_cfg(tmp_path, "name=fp16", "precision=fp16", "steps=3", "checkpoint_every=3",
                                    *GAN, "loss.adaptive_gan_weight=false")).fit()
    state = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    assert state["grad_scaler"]["scale"] > 0
    rows = [json.loads(x) for x in (run / "scalars.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)


# ------------------------------------------------------------------ nothing silently ignored
def test_phase1_init_warm_starts_from_a_run(tmp_path, capsys):
    first = TokenizerTrainer(make_cfg(tmp_path, "name=a", "ssl=false", "steps=2")).fit()
    trainer = TokenizerTrainer(make_cfg(tmp_path, "name=b", "steps=2", f"init={first}"))
    src = TCAE.from_pretrained(first)
    for (k, v), w in zip(src.state_dict().items(), trainer.model.state_dict().values()):
        assert torch.equal(v, w), k  # the warm start begins from the run's exported (EMA) weights
    assert cli(["train", "tiny", *FAST, f"run_dir={tmp_path}", "name=c", "steps=1", f"init={first}",
                "model.latent_channels=16"]) == 2
    err = capsys.readouterr().err
    assert "model.latent_channels=16 (the init model has 32)" in err and "cannot apply" in err


def test_finetune_decoder_rejects_model_overrides(tmp_path, capsys):
    first = TokenizerTrainer(make_cfg(tmp_path, "name=a", "ssl=false", "steps=1")).fit()
    assert cli(["finetune-decoder", "tiny-decoder", *FAST, f"run_dir={tmp_path}", "name=p2", "steps=1",
                f"init={first}", "model.staged=false"]) == 2
    assert "model.staged=False (the init model has True)" in capsys.readouterr().err


def test_log_lines_when_stderr_is_not_a_terminal(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tcae.cli.main", "train", "tiny", *FAST[:-3], "log_every=2",
                        f"run_dir={tmp_path}", "name=log", "steps=4", "ssl=false", "progress=true"],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "\r" not in r.stderr  # no progress bar
    lines = [x for x in r.stderr.splitlines() if "tcae.train: step " in x]
    assert len(lines) == 2 and " step 2/4 | " in lines[0] and " step 4/4 | " in lines[1]
    assert " l1 " in lines[0] and " img/s | ETA " in lines[0]
    assert "model:\n" not in r.stderr and "optim:" not in r.stderr  # the config goes to the run directory
    assert (tmp_path / "log" / "config.yaml").is_file()


def test_model_path_that_is_not_local_fails_fast_and_names_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    t = time.perf_counter()
    assert cli(["eval", "--model", "runs/nothere", "--data", "builtin:digits", "--metrics", "psnr"]) == 2
    assert time.perf_counter() - t < 5
    err = capsys.readouterr().err
    assert f"no local directory {tmp_path / 'runs' / 'nothere'}" in err and "Traceback" not in err

    # an org/name with no local match still goes to the Hub
    asked = []

    def fake_download(repo_id, filename, **kwargs):
        asked.append((repo_id, filename))
        raise FileNotFoundError(f"{repo_id}/{filename}: not on the fake Hub")

    import huggingface_hub

    from tcae.models import checkpoint_io

    monkeypatch.setattr(checkpoint_io, "_check_hub_reachable", lambda *a, **k: None)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr("huggingface_hub.hub_mixin.hf_hub_download", fake_download, raising=False)
    with pytest.raises(Exception):  # noqa: B017 (whatever the mixin makes of the fake Hub's answer)
        TCAE.from_pretrained("some-org/some-model")
    assert asked and asked[0][0] == "some-org/some-model"


def test_logger_none_and_wandb_without_the_package(tmp_path, capsys, monkeypatch):
    run = TokenizerTrainer(make_cfg(tmp_path, "name=quiet", "ssl=false", "steps=2", "logger=none")).fit()
    assert not (run / "tb").exists() and len((run / "scalars.jsonl").read_text().splitlines()) == 2
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    assert cli(["train", "tiny", *FAST, f"run_dir={tmp_path}", "name=w", "steps=1", "ssl=false",
                "logger=wandb"]) == 2
    assert "logger=wandb needs the wandb package" in capsys.readouterr().err
