"""Issue 21, data and inference side: a user's own folder of mixed images, start to finish, with nothing
silent — skipped files named, large images tiled, class names carried from the folder to `tcae sample`."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tcae
from tcae.cli.main import main as cli

SIZE = 32  # tcae-tiny at 32 px: f=16, latents 32x2x2


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = tcae.create_model("tcae-tiny", image_size=SIZE)
    path = tmp_path_factory.mktemp("tok")
    model.save_pretrained(path)
    return path


def _noise(rng: np.random.Generator, h: int, w: int, c: int = 3) -> np.ndarray:
    return rng.integers(0, 256, (h, w, c) if c > 1 else (h, w), dtype=np.uint8)


@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    """What a researcher's folder looks like: png, jpg, a gray tif, a two-frame gif, a note, a corrupt png
    and a thumbnail too small to train on (under a quarter of the 32 px training size)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "mine"
    root.mkdir()
    Image.fromarray(_noise(rng, 40, 40)).save(root / "a.png")
    Image.fromarray(_noise(rng, 48, 40)).save(root / "b.JPG", quality=90)
    Image.fromarray(_noise(rng, 40, 44, c=1)).save(root / "c.tif")
    frames = [Image.fromarray(_noise(rng, 36, 36)).convert("P", palette=Image.Palette.ADAPTIVE) for _ in range(2)]
    frames[0].save(root / "d.gif", save_all=True, append_images=frames[1:])
    (root / "notes.txt").write_text("shot on a Tuesday")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    Image.fromarray(_noise(rng, 4, 6)).save(root / "tiny.png")
    return root


def test_skipped_files_are_named_by_reason_and_tif_gif_are_read(mixed_folder, tokenizer_dir, tmp_path, caplog):
    from tcae.data import build_dataset
    from tcae.diffusion.latents import read_latent_meta

    with caplog.at_level(logging.INFO, logger="tcae.data.folder"):
        assert cli(["cache-latents", "--model", str(tokenizer_dir), "--data", str(mixed_folder), "--out",
                    str(tmp_path / "lat"), "--device", "cpu", "--no-progress"]) == 0
    assert read_latent_meta(tmp_path / "lat")["num_samples"] == 4  # a.png, b.JPG, c.tif, d.gif
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len([m for m in skipped if ": skipped 1 " in m]) == 3  # one warning per reason, once per build
    text = "\n".join(skipped)
    assert "1 not an image" in text and "notes.txt" in text
    assert "1 undecodable: corrupt.png (no image format PIL reads)" in text
    assert "1 too small (shorter side under 8 px): tiny.png (6x4)" in text
    assert "4 images read, 3 files skipped" in text

    # the .tif (gray -> 3 equal channels) and the .gif (its first frame) are read as PIL reads them
    ds = build_dataset(str(mixed_folder), SIZE, train=False, transform=np.asarray)
    assert [Path(p).name for p, _ in ds.items()] == ["a.png", "b.JPG", "c.tif", "d.gif"]
    tif, gif = ds[2]["image"], ds[3]["image"]
    assert tif.shape == (40, 44, 3) and (tif[..., 0] == tif[..., 1]).all() and (tif[..., 1] == tif[..., 2]).all()
    with Image.open(mixed_folder / "d.gif") as im:
        assert im.n_frames == 2
        first = np.asarray(im.convert("RGB"))
    assert np.array_equal(gif, first)


def test_more_skipped_files_than_shown_are_counted(tmp_path, caplog):
    from tcae.data import build_dataset

    Image.new("RGB", (16, 16)).save(tmp_path / "ok.png")
    for i in range(8):
        (tmp_path / f"n{i}.csv").write_text("1,2")
    with caplog.at_level(logging.WARNING, logger="tcae.data.folder"):
        assert len(build_dataset(str(tmp_path), SIZE, train=False)) == 1
    assert "8 not an image" in caplog.text and "n0.csv, n1.csv, n2.csv, n3.csv, n4.csv and 3 more" in caplog.text
    (tmp_path / "ok.png").unlink()
    with pytest.raises(ValueError, match="no images found.*skipped 8 not an image"):
        build_dataset(str(tmp_path), SIZE, train=False)
