"""builtin:fashion: the idx reader, the dataset (values, labels, padding, splits), where the files are
looked up, and the error messages. Every test writes its own tiny idx files (CI needs no package)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from tcae.data import build_dataset, dataset_num_classes, parse_spec, read_idx
from tcae.data import fashion as fm
from tcae.data.spec import split_spec
from tcae.data.transforms import MultiCropTransform

PER_CLASS_TRAIN, PER_CLASS_TEST = 12, 2


def _idx_bytes(array: np.ndarray) -> bytes:
    """An idx file built by hand (not with fm.write_idx): 0x00 0x00 0x08 ndim, big-endian dims, data."""
    head = b"\x00\x00\x08" + bytes([array.ndim])
    for d in array.shape:
        head += int(d).to_bytes(4, "big")
    return head + array.astype(np.uint8).tobytes()


def make_fashion(folder: Path, seed: int = 0, gz: bool = True, per_class: int = PER_CLASS_TRAIN) -> dict:
    """Four tiny idx files in `folder`: `per_class` train and 2 test images per class, labels in a
    shuffled order; returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for part, n in (("train", per_class), ("t10k", PER_CLASS_TEST)):
        labels = rng.permutation(np.repeat(np.arange(10), n)).astype(np.uint8)
        images = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
        arrays[part] = (images, labels)
        for kind, arr, dims in (("images", images, 3), ("labels", labels, 1)):
            path = folder / f"{part}-{kind}-idx{dims}-ubyte"
            data = _idx_bytes(arr)
            if gz:
                with gzip.open(f"{path}.gz", "wb") as f:
                    f.write(data)
            else:
                path.write_bytes(data)
    return arrays


@pytest.fixture
def no_default_places(tmp_path, monkeypatch):
    """No env folder, an empty torchvision root, no Debian folder, no download."""
    monkeypatch.delenv(fm.ENV_FOLDER, raising=False)
    monkeypatch.setenv(fm.ENV_DATA_ROOT, str(tmp_path / "empty-root"))
    monkeypatch.setattr(fm, "DEBIAN_FOLDER", tmp_path / "no-debian")
    monkeypatch.setenv(fm.ENV_NO_DOWNLOAD, "1")


@pytest.fixture
def fashion_dir(tmp_path, monkeypatch, no_default_places):
    arrays = make_fashion(tmp_path / "fmnist")
    monkeypatch.setenv(fm.ENV_FOLDER, str(tmp_path / "fmnist"))
    return tmp_path / "fmnist", arrays


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_hand_made(tmp_path, gz):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("x.gz" if gz else "x")
    data = _idx_bytes(images)
    path.write_bytes(gzip.compress(data) if gz else data)
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4) and np.array_equal(out, images)
    # a big-endian int32 file: type code 0x0c
    ints = np.array([1, -2, 70000], dtype=">i4")
    (tmp_path / "i").write_bytes(b"\x00\x00\x0c\x01" + (3).to_bytes(4, "big") + ints.tobytes())
    assert read_idx(tmp_path / "i").tolist() == [1, -2, 70000]
    fm.write_idx(images, tmp_path / "w.gz")  # the tests' writer agrees with the hand-made layout
    assert gzip.decompress((tmp_path / "w.gz").read_bytes()) == data


def test_read_idx_corrupt(tmp_path):
    good = _idx_bytes(np.zeros((2, 28, 28), np.uint8))
    (tmp_path / "magic").write_bytes(b"\x12\x34" + good[2:])
    with pytest.raises(ValueError, match=r"magic number 0x12340803.*corrupt or not an idx file"):
        read_idx(tmp_path / "magic")
    (tmp_path / "code").write_bytes(b"\x00\x00\x07" + good[3:])
    with pytest.raises(ValueError, match="magic number 0x00000703"):
        read_idx(tmp_path / "code")
    (tmp_path / "short").write_bytes(good[:-5])
    with pytest.raises(ValueError, match=r"declares shape \(2, 28, 28\) \(1568 data bytes\) but holds 1563"):
        read_idx(tmp_path / "short")
    (tmp_path / "badgz").write_bytes(b"\x1f\x8b" + b"garbage")
    with pytest.raises(ValueError, match="could not be read"):
        read_idx(tmp_path / "badgz")


def test_corrupt_file_in_the_data_folder_is_a_clear_error(tmp_path, monkeypatch, no_default_places):
    folder = tmp_path / "bad"
    make_fashion(folder, gz=False)
    raw = (folder / "t10k-labels-idx1-ubyte").read_bytes()
    (folder / "t10k-labels-idx1-ubyte").write_bytes(b"\xff" + raw[1:])
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.*magic number 0xff000801"):
        build_dataset(f"builtin:fashion@{folder}:test", 32, train=False)


def test_values_labels_padding(fashion_dir):
    folder, arrays = fashion_dir
    ds = build_dataset("builtin:fashion:test", 32, train=False)
    images, labels = arrays["t10k"]
    assert len(ds) == 20 and ds.folder == folder
    for i in (0, 7, 19):
        item = ds[i]
        x = item["image"]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert item["label"] == int(labels[i])
        expected = torch.from_numpy(images[i]).float() / 127.5 - 1.0  # exact pixels, no resampling
        for c in range(3):
            assert torch.equal(x[c, 2:30, 2:30], expected)
        border = torch.ones(32, 32, dtype=torch.bool)
        border[2:30, 2:30] = False
        assert bool((x[:, border] == -1.0).all())  # the padding is the background value
    gray = build_dataset("builtin:fashion:test", 32, train=False, channels=1)[3]["image"]
    assert gray.shape == (1, 32, 32) and torch.equal(gray[0], ds[3]["image"][0])
    wide = build_dataset("builtin:fashion:test", 35, train=False)[0]["image"]  # odd padding: 3 left, 4 right
    assert torch.equal(wide[0, 3:31, 3:31], torch.from_numpy(images[0]).float() / 127.5 - 1.0)
    assert dataset_num_classes("builtin:fashion") == 10
    with pytest.raises(ValueError, match="never resamples.*>= 28, got 16"):
        build_dataset("builtin:fashion", 16, train=False)


def test_splits_carved_stratified(fashion_dir):
    _, arrays = fashion_dir
    train = build_dataset("builtin:fashion:train", 32)
    val = build_dataset("builtin:fashion:val", 32, train=False)
    assert len(train) == 110 and len(val) == 10  # 12 // 12 = 1 of each class carved into val
    assert sorted(val[i]["label"] for i in range(len(val))) == list(range(10))
    assert set(train.indices).isdisjoint(val.indices)
    assert sorted([*train.indices, *val.indices]) == list(range(120))
    # without a split: train for training, val otherwise
    assert np.array_equal(build_dataset("builtin:fashion", 32, train=True).indices, train.indices)
    assert np.array_equal(build_dataset("builtin:fashion", 32, train=False).indices, val.indices)
    # a val item is the train file's image at that index
    images, labels = arrays["train"]
    j = int(val.indices[4])
    assert torch.equal(val[4]["image"][0, 2:30, 2:30], torch.from_numpy(images[j]).float() / 127.5 - 1)
    assert val[4]["label"] == int(labels[j])
    # the carve is fixed: the same file gives the same split
    assert np.array_equal(fm.carve_val(labels.astype(np.int64))[1], val.indices)


def test_carve_val_sizes_on_the_real_layout():
    labels = np.tile(np.arange(10), 6000)
    train, val = fm.carve_val(labels)
    assert len(train) == 55000 and len(val) == 5000 and np.bincount(labels[val]).tolist() == [500] * 10


def test_transform_gets_padded_rgb_and_one_channel(fashion_dir):
    mc = MultiCropTransform(32, 16, num_global=2, num_local=1)
    item = build_dataset("builtin:fashion:train", 32, transform=mc, seed=3)[0]
    assert [c.shape for c in item["global_crops"]] == [(3, 32, 32)] * 2 and item["local_crops"][0].shape == (3, 16, 16)
    one = build_dataset("builtin:fashion:train", 32, transform=mc, seed=3, channels=1)[0]
    assert [c.shape for c in one["global_crops"]] == [(1, 32, 32)] * 2 and one["image"].shape == (1, 32, 32)
    assert torch.equal(one["global_crops"][1][0], item["global_crops"][1][0])  # same crop, first channel
    with pytest.raises(ValueError, match="only the gray built-ins"):
        build_dataset("builtin:photos", 32, channels=1)
    assert build_dataset("builtin:digits:val", 32, train=False, channels=1)[0]["image"].shape == (1, 32, 32)


def test_full_recon_view_is_the_image_a_run_without_ssl_trains_on(fashion_dir):
    """ssl.recon_view=full: global crop 0 (the reconstruction input) is the exact padded image; the other
    global view stays a random crop; the default view is a random resized crop (not the image)."""
    plain = build_dataset("builtin:fashion:train", 32, train=True, seed=3)
    full = build_dataset("builtin:fashion:train", 32, train=True, seed=3,
                         transform=MultiCropTransform(32, 16, 2, 1, (0.6, 1.0), (0.2, 0.5), recon_view="full"))
    crop = build_dataset("builtin:fashion:train", 32, train=True, seed=3,
                         transform=MultiCropTransform(32, 16, 2, 1, (0.6, 1.0), (0.2, 0.5)))
    for i in range(4):
        image = plain[i]["image"]
        assert torch.allclose(full[i]["global_crops"][0], image, atol=1e-6)
        assert not torch.allclose(full[i]["global_crops"][1], image, atol=1e-2)
    assert not all(torch.allclose(crop[i]["global_crops"][0], plain[i]["image"], atol=1e-2) for i in range(4))
    with pytest.raises(ValueError, match="recon_view must be 'crop' or 'full'"):
        MultiCropTransform(32, 16, recon_view="center")


def test_spec_grammar(tmp_path):
    p = parse_spec(f"builtin:fashion@{tmp_path}:test")
    assert (p.kind, p.root, p.split) == ("fashion", str(tmp_path), "test")
    assert parse_spec("builtin:fashion").root is None and parse_spec("builtin:fashion").splits == fm.FASHION_SPLITS
    with pytest.raises(ValueError, match="only builtin:fashion takes a folder"):
        parse_spec("builtin:digits@/x")
    with pytest.raises(ValueError, match="unknown split 'test'"):
        parse_spec("builtin:digits:test")
    assert split_spec("builtin:fashion", "test") == "builtin:fashion:test"
    assert split_spec(f"builtin:fashion@{tmp_path}", "val") == f"builtin:fashion@{tmp_path}:val"
    with pytest.raises(ValueError, match="unknown split 'test'"):
        split_spec("builtin:digits", "test")


def test_missing_files_name_all_three_ways(no_default_places):
    with pytest.raises(FileNotFoundError) as err:
        build_dataset("builtin:fashion", 32)
    msg = str(err.value)
    assert "Fashion-MNIST idx files" in msg and "train-images-idx3-ubyte[.gz]" in msg
    assert "builtin:fashion@/path/to/folder" in msg and fm.ENV_FOLDER in msg  # 1. explicit folder / env var
    assert str(fm.torchvision_folder()) in msg and "FashionMNIST(root, download=True)" in msg  # 2. torchvision
    assert "apt-get install dataset-fashion-mnist" in msg  # 3. Debian


def test_explicit_folder_without_files_is_an_error_not_a_fallback(tmp_path, monkeypatch, no_default_places):
    make_fashion(fm.torchvision_folder())  # present in torchvision's place ...
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=f"not found in '{tmp_path / 'empty'}'"):
        build_dataset(f"builtin:fashion@{tmp_path / 'empty'}", 32)  # ... but the explicit folder wins
    monkeypatch.setenv(fm.ENV_FOLDER, str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="not found in"):
        build_dataset("builtin:fashion", 32)


def test_search_order(tmp_path, monkeypatch, no_default_places):
    debian, tv, env, spec = (tmp_path / n for n in ("debian", "tv", "env", "spec"))
    for i, folder in enumerate((debian, env, spec)):
        make_fashion(folder, seed=i)
    make_fashion(tv / "FashionMNIST" / "raw", seed=9, gz=False)  # torchvision extracts the files
    monkeypatch.setattr(fm, "DEBIAN_FOLDER", debian)
    assert fm.find_fashion_folder() == debian
    monkeypatch.setenv(fm.ENV_DATA_ROOT, str(tv))
    assert fm.find_fashion_folder() == tv / "FashionMNIST" / "raw"
    monkeypatch.setenv(fm.ENV_FOLDER, str(env))
    assert fm.find_fashion_folder() == env
    assert build_dataset(f"builtin:fashion@{spec}:test", 32, train=False).folder == spec
    assert fm.load_fashion(spec)["hash"] != fm.load_fashion(env)["hash"]


def test_download_only_where_reachable(tmp_path, monkeypatch, no_default_places):
    monkeypatch.delenv(fm.ENV_NO_DOWNLOAD)
    calls = []
    monkeypatch.setattr(fm, "network_reachable", lambda *a, **k: calls.append("probe") or False)
    with pytest.raises(FileNotFoundError, match="apt-get install"):
        fm.find_fashion_folder()
    assert calls == ["probe"]  # offline: probed once, torchvision never asked
    assert fm.network_reachable(("127.0.0.1", 9), timeout=0.5) is False  # nothing listens on port 9


def test_one_channel_model_trains_on_gray_fashion(fashion_dir, tmp_path):
    """A model with in_channels=1 gets 1-channel batches (multi-crop views too) from the trainer."""
    from tcae.config import TRAIN_ALIASES, TrainConfig, load_config
    from tcae.training.tokenizer import TokenizerTrainer

    cfg = load_config(TrainConfig, "fashion", [f"run_dir={tmp_path}", "steps=1", "batch_size=4", "progress=false",
                                               "model.in_channels=1", "model.fine_depth=1", "model.coarse_depth=1"],
                      TRAIN_ALIASES)
    trainer = TokenizerTrainer(cfg)
    batch = next(iter(trainer.loader))
    assert batch["global_crops"].shape[1] == 1 and batch["local_crops"].shape[1] == 1
    assert trainer.val_images.shape[1:] == (1, 32, 32)
    terms = trainer.train_step([batch])
    assert torch.isfinite(terms["loss"])
    trainer.measure_latent_stats(trainer.ema.module)  # what export() does: on 1-channel images too
    assert trainer.ema.module.has_latent_stats
