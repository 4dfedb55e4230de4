"""`tcae demo --data FOLDER`: the demo on a user's own images, labelled (a row per class) or not."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from tcae.cli.main import main as cli


def _folder(root, classes: tuple[str, ...], per_class: int = 3):
    """Small noise images at odd sizes, colour and grey; in a sub-folder per class when `classes` is not empty."""
    rng = np.random.default_rng(0)
    for c in classes or ("",):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = Image.fromarray(rng.integers(0, 256, (34 + 2 * i, 40, 3), dtype=np.uint8))
            (image.convert("L") if i % 2 else image).save(root / c / f"{i}.png")
    return root


def _demo(data, out, *extra: str) -> int:
    return cli(["demo", "--data", str(data), "--out", str(out), "--tokenizer-steps", "2", "--dit-steps", "2",
                "--per-class", "2", "--no-progress", *extra])


def test_demo_on_a_labelled_folder_has_a_row_per_class_and_no_judge(tmp_path):
    data = _folder(tmp_path / "mine", ("cats", "dogs"))
    assert _demo(data, tmp_path / "out") == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"your folder `{data}` (6 images at 32 px, 2 classes: cats, dogs)" in report
    assert "one row per class (cats, dogs" in report and "No judge" in report and "--inception-weights" in report
    with np.load(tmp_path / "out" / "samples.npz") as npz:
        assert npz["arr_1"].tolist() == [0, 0, 1, 1]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["generation"] == {} and results["settings"]["class_names"] == ["cats", "dogs"]
    config = (tmp_path / "out" / "runs" / "tokenizer" / "config.yaml").read_text()
    assert "batch_size: 4" in config  # 6 images: the largest power of two that fits, not the config's 32


def test_demo_on_an_unlabelled_folder_with_a_feature_network(tmp_path):
    import torch
    import torchvision

    data = _folder(tmp_path / "mine", ())
    torch.manual_seed(0)
    weights = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), weights)
    assert _demo(data, tmp_path / "out", "--feature-network", "torchvision:mobilenet_v3_small",
                 "--feature-weights", str(weights)) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "no classes" in report and "20 unconditional samples" in report
    assert "gFD (torchvision mobilenet_v3_small); 20 samples" in report and "FID" not in report
    with np.load(tmp_path / "out" / "samples.npz") as npz:
        assert npz["arr_0"].shape == (20, 32, 32, 3)
