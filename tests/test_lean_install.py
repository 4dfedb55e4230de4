"""The core install (`pip install tcae`, no extras) is enough for the model, encode/decode, save/load and the
inference commands: checked in a subprocess in which every package of the extras fails to import."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# import names of everything the extras (train, eval, diffusers) bring
EXTRA_MODULES = ["torchvision", "omegaconf", "tensorboard", "lpips", "webdataset", "skimage", "sklearn", "matplotlib",
                 "torchmetrics", "torch_fidelity", "scipy", "timm", "diffusers"]

_SCRIPT = r'''
import sys
BLOCKED = set(sys.argv[1].split(","))
for name in BLOCKED:  # `import name` now raises ModuleNotFoundError; find_spec(name) says it is absent
    sys.modules[name] = None
work = sys.argv[2]

import numpy as np, torch
from PIL import Image
import tcae
from tcae.cli.main import main

torch.manual_seed(0)
model = tcae.create_model("tcae-tiny")
x = torch.rand(2, 3, 32, 48) * 2 - 1
z = model.encode(x)
assert z.shape == (2, 32, 2, 3), z.shape
assert model.decode(z).shape == x.shape
model.save_pretrained(f"{work}/model", card_info={"training_data": "none", "steps": 1})
same = tcae.TCAE.from_pretrained(f"{work}/model")
assert torch.equal(same.decode(same.encode(x)), model.decode(model.encode(x)))
print("flops", tcae.flops(model, 32).as_dict()["total_gflops"] > 0)

Image.fromarray(np.random.default_rng(0).integers(0, 256, (21, 30, 3), dtype=np.uint8)).save(f"{work}/a.png")
argv = ["--model", f"{work}/model", "--no-progress"]
assert main(["reconstruct", *argv, "--data", f"{work}/a.png", "--out", f"{work}/rec"]) == 0
assert main(["encode", *argv, "--data", f"{work}/a.png", "--out", f"{work}/lat"]) == 0
assert main(["decode", *argv, "--latents", f"{work}/lat", "--out", f"{work}/dec"]) == 0
assert Image.open(f"{work}/dec/a.png").size == (30, 21)
assert main(["models", "tcae-tiny", "--image-size", "32"]) == 0
assert main(["push", "--model", f"{work}/model", "--repo", "org/x", "--dry-run", "--out", f"{work}/up"]) == 0
assert main(["train", "tiny", "--print-config"]) == 2  # needs [train]: a message, not a traceback
print("LEAN OK", sorted(m for m in BLOCKED if sys.modules.get(m) is not None))
'''


def test_core_install_runs_model_io_and_inference_commands(tmp_path):
    res = subprocess.run([sys.executable, "-c", _SCRIPT, ",".join(EXTRA_MODULES), str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "LEAN OK []" in res.stdout and "flops True" in res.stdout
    assert "needs the package 'omegaconf'" in res.stderr and "pip install 'tcae[train]'" in res.stderr
    assert "Traceback" not in res.stderr


def test_core_dependencies_exclude_the_extras():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {re.split(r"[<>=!~ \[]", d)[0].lower().replace("_", "-") for d in project["dependencies"]}
    assert core == {"torch", "einops", "safetensors", "huggingface-hub", "numpy", "pillow", "tqdm"}
    assert project["license"] == "Apache-2.0" and (ROOT / "LICENSE").is_file()
    extras = project["optional-dependencies"]
    assert {"train", "eval", "diffusers", "all", "dev"} <= set(extras)
    assert not any(d.startswith("torch==") or d.startswith("torchvision==") for deps in extras.values() for d in deps)
    constraints = (ROOT / "constraints.txt").read_text()
    assert "torch==2.14.1" in constraints and "torchvision==0.29.1" in constraints
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()
