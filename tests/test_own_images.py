"""Issue 21, data and inference side: a user's own folder of mixed images, start to finish, with nothing
silent — skipped files named, large images tiled, class names carried from the folder to `tcae sample`."""

from __future__ import annotations

import json
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


# ---------------------------------------------------------------------- --tile
def _recording(model):
    """Wrap model.encode/decode to record the (H, W) of every input they get: the largest one bounds the
    activations' memory and the attention's cost."""
    seen = {"encode": [], "decode": []}
    for name in seen:
        fn = getattr(model, name)

        def wrapped(x, _fn=fn, _name=name):
            seen[_name].append(tuple(x.shape[-2:]))
            return _fn(x)

        setattr(model, name, wrapped)
    return seen


def test_tiled_encode_equals_each_tile_away_from_seams_and_bounds_the_input(tokenizer_dir):
    from tcae.inference import decode_tensor, encode_tensor

    model = tcae.TCAE.from_pretrained(tokenizer_dir).eval()
    x = torch.rand(1, 3, 96, 160) * 2 - 1  # 6x10 latent positions; 64 px tiles = 4 positions, stride 3
    with torch.no_grad():
        z = encode_tensor(model, x, tile=64)
        # rows 0-1 lie in the first tile row only, rows 4-5 in the last; columns 0-2, 4-5, 7-9 in one tile
        for (r0, r1, y0), (c0, c1, x0) in [((0, 2, 0), (0, 3, 0)), ((4, 6, 32), (4, 6, 48)), ((4, 6, 32), (7, 10, 96))]:
            alone = model.encode(x[..., y0:y0 + 64, x0:x0 + 64])  # tile starts in latent positions: y0/16, x0/16
            ty, tx = y0 // 16, x0 // 16
            assert torch.equal(z[..., r0:r1, c0:c1], alone[..., r0 - ty:r1 - ty, c0 - tx:c1 - tx])
        # column 3 is the one-position overlap of the first two tile columns: the mean of the two (ramp weights 1/2)
        left, right = model.encode(x[..., 0:64, 0:64]), model.encode(x[..., 0:64, 48:112])
        assert torch.allclose(z[..., 0:2, 3], 0.5 * left[..., 0:2, 3] + 0.5 * right[..., 0:2, 0], atol=1e-6)

    # the model never sees more than one tile, whatever the image size: bounded memory and time per tile
    for h, w in [(96, 160), (320, 320)]:
        seen = _recording(model)
        with torch.no_grad():
            y = decode_tensor(model, encode_tensor(model, torch.zeros(1, 3, h, w), tile=64), tile=64)
        assert y.shape == (1, 3, h, w)
        assert max(seen["encode"]) == (64, 64) and max(seen["decode"]) == (4, 4)
        assert len(seen["encode"]) == len(seen["decode"]) > 1
        model = tcae.TCAE.from_pretrained(tokenizer_dir).eval()


def test_cli_tile_round_trips_and_leaves_small_images_alone(tokenizer_dir, tmp_path, capsys):
    rng = np.random.default_rng(1)
    data = tmp_path / "img"
    data.mkdir()
    Image.fromarray(_noise(rng, 90, 150)).save(data / "big.png")
    Image.fromarray(_noise(rng, 20, 30)).save(data / "small.png")
    run = ["--model", str(tokenizer_dir), "--device", "cpu", "--no-progress"]
    assert cli(["reconstruct", *run, "--data", str(data), "--out", str(tmp_path / "whole")]) == 0
    assert cli(["reconstruct", *run, "--data", str(data), "--out", str(tmp_path / "rec"), "--tile", "auto"]) == 0
    assert "wrote 2 reconstructions (PNG, original sizes; 1 in tiles)" in capsys.readouterr().out
    assert cli(["encode", *run, "--data", str(data), "--out", str(tmp_path / "lat"), "--tile", "auto"]) == 0
    assert cli(["decode", *run, "--latents", str(tmp_path / "lat"), "--out", str(tmp_path / "dec")]) == 0

    def png(d: str, name: str) -> np.ndarray:
        return np.asarray(Image.open(tmp_path / d / name))

    assert png("rec", "big.png").shape == (90, 150, 3)
    # decode of tiled latents = tiled reconstruct, bit for bit (decode reads the tiling from the latents)
    assert all(np.array_equal(png("rec", n), png("dec", n)) for n in ("big.png", "small.png"))
    # an image within one tile is not tiled: identical to the whole-image reconstruction
    assert np.array_equal(png("rec", "small.png"), png("whole", "small.png"))
    assert not np.array_equal(png("rec", "big.png"), png("whole", "big.png"))  # a ViT sees only its tile

    for bad, message in (("40", "not a multiple of the model's compression f=16"), ("banana", "--tile takes auto")):
        assert cli(["reconstruct", *run, "--data", str(data), "--out", str(tmp_path / "x"), "--tile", bad]) == 2
        assert message in capsys.readouterr().err


# ---------------------------------------------------------------------- class names travel
def test_class_names_travel_from_the_folder_to_sample(tokenizer_dir, tmp_path, capsys):
    from tcae.diffusion import DiT
    from tcae.diffusion.latents import read_latent_meta

    rng = np.random.default_rng(2)
    data = tmp_path / "two"
    for cls in ("colour", "gray"):
        (data / cls).mkdir(parents=True)
        for i in range(3):
            image = Image.fromarray(_noise(rng, 32, 32))
            (image.convert("L") if cls == "gray" else image).save(data / cls / f"{i}.png")
    lat, runs = tmp_path / "lat", tmp_path / "runs"
    assert cli(["cache-latents", "--model", str(tokenizer_dir), "--data", str(data), "--out", str(lat),
                "--device", "cpu", "--no-progress"]) == 0
    meta = read_latent_meta(lat)
    assert meta["class_names"] == ["colour", "gray"] and meta["num_classes"] == 2
    assert cli(["train-dit", "dit-tiny", f"latents={lat}", f"run_dir={runs}", "name=d", "steps=2", "batch_size=2",
                "progress=false", "device=cpu"]) == 0
    assert DiT.from_pretrained(runs / "d" / "model").config.class_names == ["colour", "gray"]
    capsys.readouterr()

    sample = ["sample", "--dit", str(runs / "d"), "--model", str(tokenizer_dir), "--num", "2", "--steps", "2",
              "--device", "cpu", "--no-progress"]
    assert cli([*sample, "--classes", "gray,0", "--out", str(tmp_path / "s")]) == 0
    with np.load(tmp_path / "s" / "samples.npz") as npz:
        assert npz["arr_1"].tolist() == [1, 1, 0, 0]  # names and ids mix
    info = json.loads((tmp_path / "s" / "sample_config.json").read_text())
    assert info["classes"] == [1, 0] and info["class_names"] == ["gray", "colour"]
    assert cli([*sample, "--classes", "grey", "--out", str(tmp_path / "x")]) == 2
    assert "unknown class 'grey': its classes are 0='colour', 1='gray'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # refused before anything is written


def test_builtin_class_names_are_cached(tokenizer_dir, tmp_path):
    from tcae.data import FASHION_CLASSES, build_dataset
    from tcae.data.base import class_names_of
    from tcae.data.fashion import OneChannel
    from tcae.diffusion.latents import LatentDataset

    assert cli(["cache-latents", "--model", str(tokenizer_dir), "--data", "builtin:digits:val", "--out",
                str(tmp_path / "d"), "--device", "cpu", "--no-progress"]) == 0
    assert LatentDataset(tmp_path / "d").class_names == [str(d) for d in range(10)]
    digits = build_dataset("builtin:digits:val", SIZE, train=False)
    assert class_names_of(OneChannel(digits)) == class_names_of(digits)  # wrappers are looked through
    assert FASHION_CLASSES[0] == "T-shirt/top"


# ---------------------------------------------------------------------- smaller items
def test_eval_json_has_one_layout_and_the_comparison_names_f_and_channels(tokenizer_dir, tmp_path, capsys):
    other = tmp_path / "c16"
    tcae.create_model("tcae-tiny", image_size=SIZE, latent_channels=16).save_pretrained(other)
    common = ["--data", "builtin:digits:val", "--metrics", "psnr", "--max-images", "4", "--no-progress",
              "--device", "cpu", "--no-grid"]
    assert cli(["eval", "--model", str(tokenizer_dir), *common, "--out", str(tmp_path / "one")]) == 0
    assert cli(["eval", "--model", str(tokenizer_dir), "--model", str(other), "--names", "c32,c16", *common,
                "--out", str(tmp_path / "two")]) == 0
    one, two = (json.loads((tmp_path / d / "eval.json").read_text()) for d in ("one", "two"))
    assert [r["model"]["name"] for r in one["results"]] == [tokenizer_dir.name]
    assert [r["model"]["name"] for r in two["results"]] == ["c32", "c16"]
    assert one["results"][0]["metrics"] == two["results"][0]["metrics"]
    md = (tmp_path / "two" / "comparison.md").read_text().splitlines()
    assert md[0].startswith("| model | f | channels | PSNR")
    assert md[2].startswith("| c32 | 16 | 32 |") and md[3].startswith("| c16 | 16 | 16 |")
    # `tcae push --eval-json` reads the one-model file in this layout
    from tcae.hub import metrics_card_info

    assert metrics_card_info(tmp_path / "one" / "eval.json")["metrics"] == one["results"][0]["metrics"]
    with pytest.raises(ValueError, match="results of 2 models"):
        metrics_card_info(tmp_path / "two" / "eval.json")


def test_cache_latents_prints_a_summary_not_json(tokenizer_dir, tmp_path, capsys):
    assert cli(["cache-latents", "--model", str(tokenizer_dir), "--data", "builtin:digits:val", "--out",
                str(tmp_path / "lat"), "--flip", "--device", "cpu", "--no-progress"]) == 0
    out = capsys.readouterr().out.strip()
    n = json.loads((tmp_path / "lat" / "meta.json").read_text())["num_samples"]
    assert out.startswith(f"cached {2 * n} latents of {n} images ({n} of them of flipped images), each 32x2x2")
    assert "10 classes (0, 1, 2, 3, 4, 5, 6, 7, 8, 9)" in out and f"under {tmp_path / 'lat'}" in out
    assert "{" not in out


def test_singular_covariances_give_one_clean_log_line_and_no_warning(monkeypatch, caplog):
    import warnings

    from tcae.evaluation import fid

    monkeypatch.setattr(fid, "_said_singular", False)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 16)), rng.normal(size=(6, 16))
    x[:, 0], y[:, 0] = 1.0, 2.0  # a constant feature: exactly singular covariances
    with warnings.catch_warnings(), caplog.at_level(logging.INFO, logger="tcae.evaluation.fid"):
        warnings.simplefilter("error")  # scipy's LinAlgWarning would raise here
        d = [fid.frechet_distance(x.mean(0), np.cov(x.T), y.mean(0), np.cov(y.T)) for _ in range(2)]
    assert d[0] == d[1] and np.isfinite(d[0]) and d[0] >= 1.0  # at least the squared mean difference
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["Fréchet distance"]
    assert "singular" in caplog.text
