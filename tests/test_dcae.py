"""Training a DC-AE (diffusers' AutoencoderDC) with `tcae train`: a few steps, exact resume after SIGKILL,
the export that diffusers loads with tcae's outputs, `tcae eval`, phase 2, and the refusal of iBOT."""

import json
import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import AutoencoderDC  # noqa: E402

from tcae.cli.main import main as cli  # noqa: E402
from tcae.data import build_dataset  # noqa: E402
from tcae.tokenizers import DiffusersTokenizer, create_dcae, load_tokenizer  # noqa: E402
from tcae.training.checkpoint import list_checkpoints, load_checkpoint  # noqa: E402

# the digits config (32 px) with the tiny DC-AE: f=16, c=8 -> 2x2x8 latents; GAN from step 2
DCAE = ["train", "digits", "model.name=dc-ae-tiny", "ssl=false", "batch_size=4", "optim.warmup_steps=1",
        "log_every=1", "image_every=0", "progress=false", "latent_stats_images=16", "gan=true", "loss.gan_start=2",
        "loss.disc_channels=16", "loss.disc_layers=2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("dcae")
    assert cli([*DCAE, f"run_dir={root}", "name=dc", "steps=4", "checkpoint_every=2"]) == 0
    return SimpleNamespace(root=root, dir=root / "dc", model=root / "dc" / "model")


def test_dcae_trains_and_exports_a_diffusers_folder(run):
    rows = [json.loads(r) for r in (run.dir / "scalars.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert "gan_g" in rows[-1] and "gan_d" in rows[-1] and "gan_g" not in rows[0]  # the GAN starts at gan_start
    config = json.loads((run.model / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderDC" and config["latent_channels"] == 8
    assert (run.model / "diffusion_pytorch_model.safetensors").is_file()


def test_diffusers_loads_the_export_with_tcae_outputs_and_scaling(run):
    ae = AutoencoderDC.from_pretrained(run.model).eval()
    # tcae's own model: the EMA weights of the last checkpoint, in a freshly built preset
    ema = load_checkpoint(list_checkpoints(run.dir / "checkpoints")[-1])["ema"]
    ours = create_dcae("dc-ae-tiny", image_size=32).eval()
    ours.load_state_dict({k[len("module."):]: v for k, v in ema.items()})
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        z = ae.encode(x).latent
        assert z.shape == (2, 8, 2, 2)
        assert torch.equal(z, ours.encode(x))
        assert torch.equal(ae.decode(z).sample, ours.decode(z))
        loaded = load_tokenizer(run.dir)  # the run directory, as tcae's tools take it
        assert isinstance(loaded, DiffusersTokenizer) and loaded.config.image_size == 32
        assert torch.equal(loaded.decode(loaded.encode(x)), ae.decode(z).sample)
        # scaling_factor = 1 / RMS of the raw latents of the first latent_stats_images training images
        ds = build_dataset("builtin:digits:train", 32, train=False)
        images = torch.stack([ds[i]["image"] for i in range(16)])
        rms = ae.encode(images).latent.pow(2).mean().sqrt()
    assert ae.config.scaling_factor == pytest.approx(1 / float(rms), rel=1e-4)
    torch.testing.assert_close(loaded.normalize(z), z * ae.config.scaling_factor)


def test_tcae_eval_takes_the_dcae_run(run, tmp_path, capsys):
    out = tmp_path / "eval"
    assert cli(["eval", "--model", str(run.dir), "--data", "builtin:digits:val", "--metrics", "psnr,ssim",
                "--max-images", "8", "--out", str(out), "--no-progress"]) == 0
    report = json.loads(next(out.rglob("*.json")).read_text())
    text = json.dumps(report)
    assert "psnr" in text and "AutoencoderDC" in text


def test_ssl_with_a_dcae_is_refused_naming_why(tmp_path, capsys):
    assert cli([*DCAE, "ssl=true", f"run_dir={tmp_path}", "name=x", "steps=1"]) == 2
    err = capsys.readouterr().err
    assert "ssl=true cannot train" in err and "token sequence" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()
    # a TC-AE-only setting is refused too, by name
    assert cli([*DCAE, "model.patch_size=4", f"run_dir={tmp_path}", "name=x", "steps=1"]) == 2
    assert "model.patch_size" in capsys.readouterr().err


def test_finetune_decoder_of_a_dcae_freezes_its_encoder(run, tmp_path):
    assert cli(["finetune-decoder", "digits", f"init={run.dir}", "batch_size=4", "steps=2", "precision=bf16",
                "optim.warmup_steps=1", "image_every=0", "progress=false", "latent_stats_images=8",
                f"run_dir={tmp_path}", "name=p2"]) == 0
    before = AutoencoderDC.from_pretrained(run.model)
    after = AutoencoderDC.from_pretrained(tmp_path / "p2" / "model")
    b, a = before.state_dict(), after.state_dict()
    assert all(torch.equal(b[k], a[k]) for k in b if k.startswith("encoder."))
    assert any(not torch.equal(b[k], a[k]) for k in b if k.startswith("decoder."))


# Runs `tcae ARGS` and SIGKILLs its own process when the loop is about to take step 4: checkpoint 2 is on
# disk, step 3 is done but not checkpointed (as in test_cli's DiT resume test).
_KILL_AT_STEP_3 = """
import os, signal, sys
import torch
torch.set_num_threads(1)
from tcae.training import tokenizer
_step = tokenizer.TokenizerTrainer.train_step
def train_step(self, batch):
    if self.step == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return _step(self, batch)
tokenizer.TokenizerTrainer.train_step = train_step
from tcae.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_dcae_resume_after_sigkill_equals_uninterrupted(run):
    common = [*DCAE, f"run_dir={run.root}", "steps=4", "checkpoint_every=2", "keep_last=10"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _KILL_AT_STEP_3, *common, "name=killed"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    killed = run.root / "killed"
    assert [p.name for p in list_checkpoints(killed / "checkpoints")] == ["step-00000002.pt"]
    assert cli([*common, "name=killed"]) == 0
    a = load_checkpoint(run.dir / "checkpoints" / "step-00000004.pt")
    b = load_checkpoint(killed / "checkpoints" / "step-00000004.pt")
    for key in ("student", "ema", "disc"):
        assert set(a[key]) == set(b[key])
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), f"{key}.{k} differs after resume"
    for name in a["optimizers"]:
        for i, st in a["optimizers"][name]["state"].items():
            for k, v in st.items():
                assert torch.equal(v, b["optimizers"][name]["state"][i][k]), f"{name}.{i}.{k}"


def test_tiny_dcae_costs_what_its_preset_states_beside_the_fashion_tcae():
    """dc-ae-tiny has the Fashion-MNIST TC-AE's latent shape (2x2x8 at 32 px) at about 1/0.27 its FLOPs."""
    from tcae.models import create_model, flops

    tcae = create_model("tcae-tiny", patch_size=4, compression=16, latent_channels=8, image_size=32)
    dcae = create_dcae("dc-ae-tiny", image_size=32)
    x = torch.zeros(1, 3, 32, 32)
    assert tcae.encode(x).shape == dcae.encode(x).shape == (1, 8, 2, 2)
    t, d = flops(tcae, 32).total, flops(dcae, 32).total
    assert d == pytest.approx(273.0e6, rel=0.01) and t / d == pytest.approx(0.26, abs=0.01)


@pytest.mark.slow
def test_the_dcae_repro_cell_trains_and_scores(tmp_path):
    """`tcae repro dcae`'s DC-AE cell at the digits scale, a few steps of everything: same latent shape as the
    TC-AE cell, scored with its cost."""
    import dataclasses
    import math

    from tcae.evaluation import DigitsJudge
    from tcae.studies.cells import cell_key, run_cell
    from tcae.studies.paper import SCALES, experiment_cells

    scale = dataclasses.replace(SCALES["tiny"], tokenizer_steps=2, dit_steps=2, per_class=1)
    cells = experiment_cells("dcae", scale)
    keys = {cell: cell_key(o, scale, "builtin:digits", 0) for cell, o in cells.items()}
    assert len(set(keys.values())) == 2  # the two cells are two runs
    result = run_cell(tmp_path / "cell", cells["DC-AE"], scale, "builtin:digits", judge=DigitsJudge())
    assert math.isfinite(result["reconstruction"]["metrics"]["psnr"]) and "fd_judge" in result["generation"]
    config = json.loads((tmp_path / "cell" / "runs" / "tokenizer" / "model" / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderDC" and config["latent_channels"] == 32  # tcae-tiny's c at 32 px
    assert result["cost"]["total_gflops"] > 0


def test_decoder_part_head_refines_only_the_dcae_decoder_head(run, tmp_path):
    """DC-AE's local refinement: phase 2 with decoder_part=head (and the GAN) trains the decoder head alone."""
    assert cli(["finetune-decoder", "digits", f"init={run.dir}", "batch_size=4", "steps=2", "decoder_part=head",
                "gan=true", "loss.gan_start=0", "loss.disc_channels=16", "loss.disc_layers=2",
                "optim.warmup_steps=1", "image_every=0", "progress=false", "latent_stats_images=8",
                f"run_dir={tmp_path}", "name=head"]) == 0
    b = AutoencoderDC.from_pretrained(run.model).state_dict()
    a = AutoencoderDC.from_pretrained(tmp_path / "head" / "model").state_dict()
    head = ("decoder.up_blocks.0.", "decoder.norm_out.", "decoder.conv_out.")
    changed = {k for k in b if not torch.equal(a[k], b[k])}
    assert changed and all(k.startswith(head) for k in changed), sorted(changed - {k for k in b if k.startswith(head)})
    assert cli(["train", "digits", "model.name=dc-ae-tiny", "ssl=false", "decoder_part=head",
                f"run_dir={tmp_path}", "name=x", "steps=1"]) == 2
