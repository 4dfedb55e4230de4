"""`tcae reconstruct` / `encode` / `decode` on folders of images of any size, and the latent view of the
eval grids (first 3 principal components of the latent channels as RGB)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

import tcae
from tcae.cli.main import main as cli
from tcae.evaluation.grid import latent_pca_rgb, save_grid
from tcae.inference import pad_to_multiple

F = 16  # tcae-tiny's compression
SIZES = {"a.png": (37, 23), "d.png": (5, 7), "sub/b.jpg": (16, 16), "sub/deeper/c.png": (50, 70)}  # (W, H)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = tcae.create_model("tcae-tiny")
    model.set_latent_stats(torch.linspace(-1, 1, 32), torch.linspace(0.5, 2, 32))
    path = tmp_path_factory.mktemp("model")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Odd sizes, nested folders, JPEG, grayscale and RGBA."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, (w, h) in SIZES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        if name == "sub/deeper/c.png":
            image = image.convert("L")
        if name == "d.png":
            image = image.convert("RGBA")
        image.save(path)
    return root


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        return np.asarray(im)


def _reference(model, path: Path, mode: str = "reflect") -> np.ndarray:
    """The reconstruction computed here, another way: numpy pad, one image per batch, crop, round."""
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    h, w = rgb.shape[:2]
    padded = np.pad(rgb, ((0, (F - h % F) % F), (0, (F - w % F) % F), (0, 0)), mode=mode)
    x = torch.tensor(padded, dtype=torch.float32).permute(2, 0, 1)[None] / 127.5 - 1
    with torch.no_grad():
        y = model.decode(model.encode(x))[0, :, :h, :w]
    return ((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def test_reconstruct_keeps_names_sizes_and_matches_a_reference(model_dir, images, tmp_path, capsys):
    out = tmp_path / "rec"
    assert cli(["reconstruct", "--model", str(model_dir), "--data", str(images), "--out", str(out),
                "--no-progress"]) == 0
    assert f"wrote 4 reconstructions (PNG, original sizes) to {out}" in capsys.readouterr().out
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == sorted(str(Path(n).with_suffix(".png")) for n in SIZES)
    model = tcae.TCAE.from_pretrained(model_dir)
    for name, (w, h) in SIZES.items():
        rec = _png(out / Path(name).with_suffix(".png"))
        assert rec.shape == (h, w, 3), name
        # d.png and sub/b.jpg share a padded size and are batched together: float rounding may move a pixel by 1
        diff = np.abs(rec.astype(int) - _reference(model, images / name).astype(int))
        assert diff.max() <= 1, name


def test_encode_then_decode_equals_reconstruct(model_dir, images, tmp_path):
    rec, lat, dec = tmp_path / "rec", tmp_path / "lat", tmp_path / "dec"
    assert cli(["reconstruct", "--model", str(model_dir), "--data", str(images), "--out", str(rec),
                "--no-progress", "--batch-size", "2"]) == 0
    assert cli(["encode", "--model", str(model_dir), "--data", str(images), "--out", str(lat), "--no-progress",
                "--batch-size", "2"]) == 0
    assert cli(["decode", "--model", str(model_dir), "--latents", str(lat), "--out", str(dec), "--no-progress",
                "--batch-size", "2"]) == 0
    model = tcae.TCAE.from_pretrained(model_dir)
    for name, (w, h) in SIZES.items():
        png = Path(name).with_suffix(".png")
        assert np.array_equal(_png(rec / png), _png(dec / png)), name
        with safe_open(str(lat / Path(name).with_suffix(".safetensors")), framework="pt") as fh:
            meta, latent = fh.metadata(), fh.get_tensor("latent")
        assert latent.dtype == torch.float32 and tuple(latent.shape) == (32, -(-h // F), -(-w // F))
        assert (meta["source"], meta["height"], meta["width"], meta["compression"], meta["pad"]) == (
            name, str(h), str(w), str(F), "reflect")
        assert meta["model"] == str(model_dir) and meta["latent_stats"] == "measured"
        assert json.loads(meta["latent_mean"]) == pytest.approx(model.latent_mean.tolist())
        assert json.loads(meta["latent_std"]) == pytest.approx(model.latent_std.tolist())


def test_pad_modes():
    image = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    reflect, edge = pad_to_multiple(image, 16, "reflect"), pad_to_multiple(image, 16, "edge")
    assert reflect.shape == edge.shape == (16, 16, 3)
    assert np.array_equal(reflect[:5, :7], image) and np.array_equal(edge[:5, :7], image)
    assert np.array_equal(edge[5:, :7], np.broadcast_to(image[-1], (11, 7, 3)))  # last row repeated
    assert np.array_equal(reflect[5, :7], image[3]) and np.array_equal(reflect[:5, 7], image[:, 5])  # mirrored
    assert pad_to_multiple(image[:4, :4], 4, "edge").shape == (4, 4, 3)  # already a multiple: unchanged
    with pytest.raises(ValueError, match="pad mode must be one of reflect, edge"):
        pad_to_multiple(image, 16, "zeros")


def test_edge_padding_changes_the_reconstruction(model_dir, images, tmp_path):
    for mode in ("reflect", "edge"):
        assert cli(["reconstruct", "--model", str(model_dir), "--data", str(images / "a.png"), "--out",
                    str(tmp_path / mode), "--pad", mode, "--no-progress"]) == 0
    model = tcae.TCAE.from_pretrained(model_dir)
    assert np.array_equal(_png(tmp_path / "edge" / "a.png"), _reference(model, images / "a.png", "edge"))
    assert not np.array_equal(_png(tmp_path / "edge" / "a.png"), _png(tmp_path / "reflect" / "a.png"))


def test_builtin_data_is_named_by_index(model_dir, tmp_path):
    out = tmp_path / "digits"
    assert cli(["reconstruct", "--model", str(model_dir), "--data", "builtin:digits:val", "--image-size", "32",
                "--max-images", "3", "--out", str(out), "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png", "000002.png"]
    assert _png(out / "000000.png").shape == (32, 32, 3)


@pytest.mark.parametrize("setup, fragment", [
    (lambda root: None, "no such folder"),
    (lambda root: (root.mkdir(), (root / "x.png").write_bytes(b"not a png")), "cannot read image"),
    (lambda root: (root.mkdir(), Image.new("RGB", (4, 4)).save(root / "x.png"),
                   Image.new("RGB", (4, 4)).save(root / "x.jpg")), "would both be written to x.png"),
    (lambda root: root.mkdir(), "no images found under"),
])
def test_bad_image_input_exits_2(model_dir, tmp_path, capsys, setup, fragment):
    root = tmp_path / "in"
    setup(root)
    assert cli(["reconstruct", "--model", str(model_dir), "--data", str(root), "--out", str(tmp_path / "o"),
                "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


def test_shards_are_refused(model_dir, tmp_path, capsys):
    assert cli(["encode", "--model", str(model_dir), "--data", str(tmp_path / "s-{000..003}.tar"), "--out",
                str(tmp_path / "o")]) == 2
    assert "not WebDataset shards" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_decode_with_another_model_or_no_latents_exits_2(model_dir, images, tmp_path, capsys):
    lat = tmp_path / "lat"
    assert cli(["encode", "--model", str(model_dir), "--data", str(images / "a.png"), "--out", str(lat),
                "--no-progress"]) == 0
    other = tmp_path / "other"
    tcae.create_model("tcae-tiny", latent_channels=16).save_pretrained(other)
    capsys.readouterr()
    assert cli(["decode", "--model", str(other), "--latents", str(lat), "--out", str(tmp_path / "d")]) == 2
    assert "but this model has 16 channels" in capsys.readouterr().err
    assert cli(["decode", "--model", str(model_dir), "--latents", str(tmp_path / "nope"), "--out", "x"]) == 2
    assert f"latent directory {tmp_path / 'nope'} not found" in capsys.readouterr().err


# ---------------------------------------------------------------------------- latent view
def test_latent_pca_rgb_matches_an_eigendecomposition():
    """A latent with a 3-dimensional signal in 16 channels: the view is its projection on the top 3
    principal components (here from numpy's eigh of the covariance), min-max scaled, sign-fixed."""
    g = torch.Generator().manual_seed(0)
    signal = torch.randn(4, 3, 5, 6, generator=g) * torch.tensor([3.0, 2.0, 1.0]).view(1, 3, 1, 1)
    mix = torch.linalg.qr(torch.randn(16, 3, generator=g))[0]  # orthonormal columns
    z = torch.einsum("bkhw,ck->bchw", signal, mix) + 0.01 * torch.randn(4, 16, 5, 6, generator=g)
    view = latent_pca_rgb(z)
    assert view.shape == (4, 3, 5, 6) and view.dtype == torch.float32
    assert float(view.min()) == 0.0 and float(view.max()) == 1.0
    assert torch.allclose(view.amin(dim=(0, 2, 3)), torch.zeros(3)) and torch.allclose(view.amax(dim=(0, 2, 3)),
                                                                                        torch.ones(3))
    x = z.permute(0, 2, 3, 1).reshape(-1, 16).double().numpy()
    x = x - x.mean(0)
    vals, vecs = np.linalg.eigh(np.cov(x, rowvar=False))
    top = vecs[:, ::-1][:, :3]
    top = top * np.where(top[np.abs(top).argmax(0), range(3)] < 0, -1, 1)
    proj = x @ top
    ref = (proj - proj.min(0)) / (proj.max(0) - proj.min(0))
    got = view.permute(0, 2, 3, 1).reshape(-1, 3).double().numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_latent_pca_rgb_edge_cases():
    two = latent_pca_rgb(torch.randn(2, 2, 3, 3))
    assert two.shape == (2, 3, 3, 3) and torch.equal(two[:, 2], torch.zeros(2, 3, 3))  # c < 3: channel 3 is 0
    assert torch.equal(latent_pca_rgb(torch.ones(1, 8, 2, 2)), torch.zeros(1, 3, 2, 2))  # constant latent
    with pytest.raises(ValueError, match=r"\(B, c, h, w\)"):
        latent_pca_rgb(torch.zeros(8, 2, 2))


def test_grid_has_a_latent_row(tmp_path):
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    path = save_grid(x, x, tmp_path / "g.png", padding=2, latents=torch.randn(3, 32, 2, 2))
    with Image.open(path) as im:
        assert im.size == (3 * 32 + 4 * 2, 3 * 32 + 4 * 2)
    with Image.open(save_grid(x, x, tmp_path / "h.png", padding=2)) as im:
        assert im.size == (3 * 32 + 4 * 2, 2 * 32 + 3 * 2)
