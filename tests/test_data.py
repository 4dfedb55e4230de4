"""Tests of tcae.data: decoding, datasets, specs, transforms, masking, resumable loading, shards."""

from __future__ import annotations

import io
import logging
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tcae.data import (
    IMAGE_EXTENSIONS,
    BlockMaskGenerator,
    ImageFolderDataset,
    MultiCropCollate,
    MultiCropTransform,
    ResumableSampler,
    build_dataset,
    build_loader,
    dataset_num_classes,
    eval_transform,
    load_rgb,
    local_crop_size,
    parse_spec,
    photo_names,
    set_loader_epoch,
    to_rgb,
    write_shards,
)
from tcae.data import shards as shards_module

S = 32  # image size used throughout: small keeps the file fast


def _noise(rng: np.random.Generator, h: int = 40, w: int = 48, c: int = 3) -> np.ndarray:
    shape = (h, w, c) if c > 1 else (h, w)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _check_image(x: torch.Tensor, size: int = S) -> None:
    assert x.shape == (3, size, size) and x.dtype == torch.float32
    assert x.min() >= -1.0 and x.max() <= 1.0


@pytest.fixture
def messy_folder(tmp_path):
    """Two class folders with every format and mode, plus a corrupt file (skipped when the dataset is built)
    and a truncated one (whose header reads: skipped when its pixels fail to decode)."""
    rng = np.random.default_rng(0)
    a, b = tmp_path / "cat", tmp_path / "dog"
    (a / "nested").mkdir(parents=True)
    b.mkdir()
    Image.fromarray(_noise(rng)).save(a / "rgb.png")
    Image.fromarray(_noise(rng)).save(a / "photo.JPG", quality=90)
    Image.fromarray(_noise(rng)).save(a / "nested" / "x.webp")
    Image.fromarray(_noise(rng)).save(b / "y.bmp")
    Image.fromarray(_noise(rng, c=1)).save(b / "gray.png")
    Image.fromarray(_noise(rng, c=4), mode="RGBA").save(b / "rgba.png")
    Image.fromarray(_noise(rng)).convert("P", palette=Image.Palette.ADAPTIVE).save(a / "pal.png")
    Image.fromarray(rng.integers(0, 65536, (40, 48)).astype(np.uint16)).save(b / "deep.png")
    (a / "corrupt.jpg").write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    full = tmp_path / "full.jpg"
    Image.fromarray(_noise(rng, 64, 64)).save(full, quality=95)
    (b / "trunc.jpg").write_bytes(full.read_bytes()[:3000])
    full.unlink()
    (a / "notes.txt").write_text("not an image")
    (a / ".hidden.jpg").write_bytes(b"junk")
    return tmp_path


def test_to_rgb_modes():
    deep = Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.uint16))
    assert deep.mode.startswith("I;16")
    assert np.asarray(to_rgb(deep))[0, :, 0].tolist() == [0, 128, 255]  # scaled, not clipped
    rgba = Image.new("RGBA", (2, 1), (0, 0, 0, 0))  # fully transparent black
    assert np.asarray(to_rgb(rgba)).tolist() == [[[255, 255, 255]] * 2]  # composited on white
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert np.asarray(to_rgb(floats))[0, :, 1].tolist() == [0, 128, 255]
    for mode in ("L", "P", "LA", "CMYK", "1"):
        assert to_rgb(Image.new(mode, (3, 2))).mode == "RGB"


def test_load_rgb_no_extra_copy(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    pixels = _noise(rng, 6, 5)
    path = tmp_path / "x.png"
    Image.fromarray(pixels).save(path)
    data = path.read_bytes()

    def no_copy(self):
        raise AssertionError("load_rgb copied the decoded image")

    monkeypatch.setattr(Image.Image, "copy", no_copy)
    for source in (path, data, io.BytesIO(data)):
        img = load_rgb(source)
        # The pixels outlive the closed file: usable without a copy.
        assert img.mode == "RGB" and np.array_equal(np.asarray(img), pixels)
        assert np.array_equal(np.asarray(img.resize((10, 12))).shape, (12, 10, 3))
    path.unlink()
    assert np.array_equal(np.asarray(img), pixels)


def test_seeded_rng_touches_only_the_cpu_generator(messy_folder, monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: calls.append(seed))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: calls.append(seed))
    ds = build_dataset(str(messy_folder), S, train=True)
    torch.manual_seed(123)
    calls.clear()
    state, py_state = torch.get_rng_state(), random.getstate()
    sample = ds[0]
    assert calls == []  # no device generator is re-seeded (fork_rng would not restore it)
    assert torch.equal(torch.get_rng_state(), state) and random.getstate() == py_state
    assert torch.equal(ds[0]["image"], sample["image"])  # still deterministic per sample


def test_image_folder_skips_bad_files(messy_folder, caplog):
    with caplog.at_level(logging.WARNING, logger="tcae.data.folder"):
        ds = build_dataset(str(messy_folder), S, train=True)
    assert len(ds) == 9  # 8 good + truncated; corrupt, .txt (named) and hidden files (silently) left out
    assert ds.skipped == {"not an image": ["cat/notes.txt"], "too small": [],
                          "undecodable": ["cat/corrupt.jpg (no image format PIL reads)"]}
    assert "corrupt.jpg" in caplog.text and "notes.txt" in caplog.text and "hidden" not in caplog.text
    assert ds.classes == ["cat", "dog"] and dataset_num_classes(str(messy_folder)) == 2
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tcae.data.folder"):
        samples = [ds[i] for i in range(len(ds))]
    assert ds.num_skipped == 1
    assert "trunc.jpg" in caplog.text
    for s in samples:
        _check_image(s["image"])
    labels = [s["label"] for s in samples]
    assert set(labels) == {0, 1}
    # Deterministic per (seed, epoch, index); another epoch gives other crops.
    assert torch.equal(ds[0]["image"], samples[0]["image"])
    ds.set_epoch(1)
    assert not torch.equal(ds[0]["image"], samples[0]["image"])
    # The evaluation transform has no randomness: its crops do not follow the epoch.
    ev = build_dataset(str(messy_folder), S, train=False)
    first = ev[1]["image"]
    ev.set_epoch(5)
    assert torch.equal(ev[1]["image"], first)
    # Labels can be switched off: same files, every label -1, no classes.
    unlabelled = ImageFolderDataset(messy_folder, eval_transform(S), with_labels=False)
    assert len(unlabelled) == len(ds) and unlabelled.classes == [] and unlabelled.num_classes == 0
    assert {unlabelled[i]["label"] for i in range(len(unlabelled))} == {-1}


def test_image_folder_skip_count_across_workers(messy_folder):
    ds = build_dataset(str(messy_folder), S, train=False)
    loader = build_loader(ds, batch_size=5, train=False, num_workers=2, drop_last=False, distributed=False)
    batches = list(loader)
    assert sum(len(b["label"]) for b in batches) == 9
    assert ds.num_skipped == 1  # flagged by the workers, visible here


def test_image_folder_all_bad_and_empty(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="no images found.*skipped 1 undecodable: bad.png"):
        build_dataset(str(tmp_path), S)
    full = tmp_path / "full.jpg"
    Image.fromarray(_noise(np.random.default_rng(0), 64, 64)).save(full, quality=95)
    (tmp_path / "bad.png").write_bytes(full.read_bytes()[:3000])  # the header reads, the pixels do not
    full.unlink()
    ds = build_dataset(str(tmp_path), S)
    assert ds.classes == []
    with pytest.raises(RuntimeError, match="could be decoded"):
        ds[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"no images.*empty.*\.jpg"):
        build_dataset(str(empty), S)


def test_folder_splits_and_unlabelled(tmp_path):
    rng = np.random.default_rng(1)
    for split, n in (("train", 3), ("val", 2)):
        (tmp_path / split).mkdir()
        for i in range(n):
            Image.fromarray(_noise(rng)).save(tmp_path / split / f"{i}.png")
    assert len(build_dataset(str(tmp_path), S, train=True)) == 3
    assert len(build_dataset(str(tmp_path), S, train=False)) == 2
    val = build_dataset(f"{tmp_path}:val", S, train=True)
    assert len(val) == 2 and val[0]["label"] == -1 and val.num_classes == 0


def test_bad_specs(tmp_path):
    with pytest.raises(ValueError, match="accepted data specs"):
        build_dataset("builtin:nope", S)
    with pytest.raises(ValueError, match="unknown split"):
        parse_spec("builtin:photos:test")
    with pytest.raises(FileNotFoundError, match="no/such/folder"):
        build_dataset("no/such/folder", S)
    with pytest.raises(FileNotFoundError, match="shard"):
        build_dataset(str(tmp_path / "s-{000..001}.tar"), S)
    assert parse_spec("x/s-{000..127}.tar").kind == "shards"
    assert parse_spec("builtin:digits:val").split == "val"


def test_builtin_photos():
    train, val = photo_names("train"), photo_names("val")
    assert not set(train) & set(val) and len(train) + len(val) >= 15
    ds = build_dataset("builtin:photos", S, train=True, seed=3, epoch_size=20)
    assert len(ds) == 20 and ds.names == train and dataset_num_classes("builtin:photos") == 0
    s = ds[7]
    _check_image(s["image"])
    assert s["label"] == -1 and torch.equal(ds[7]["image"], s["image"])
    ds.set_epoch(1)
    assert not torch.equal(ds[7]["image"], s["image"])
    v1 = build_dataset("builtin:photos:val", S, train=False, seed=0)
    v2 = build_dataset("builtin:photos", S, train=False, seed=123)
    assert v1.names == val and len(v1) == 16 * len(val)
    for i in (0, 5, len(v1) - 1):  # val crops do not depend on the training seed
        assert torch.equal(v1[i]["image"], v2[i]["image"])


def test_builtin_digits():
    tr = build_dataset("builtin:digits", S, train=True)
    va = build_dataset("builtin:digits", S, train=False)
    assert len(tr) + len(va) == 1797 and len(va) == 360
    assert not set(tr.indices) & set(va.indices)
    s = va[0]
    _check_image(s["image"])
    assert torch.equal(s["image"][0], s["image"][2])  # gray replicated
    assert sorted({va[i]["label"] for i in range(len(va))}) == list(range(10))
    assert dataset_num_classes("builtin:digits") == 10


def test_multicrop_and_collate():
    L = local_crop_size(S, 8)
    assert L == 16 and local_crop_size(256, 16) == 96 and local_crop_size(256, 32) == 96  # floor: 2 strides
    mc = MultiCropTransform(S, L, num_global=2, num_local=3, color_augment=True)
    ds = build_dataset("builtin:photos", S, transform=mc, epoch_size=8)
    samples = [ds[i] for i in range(4)]
    assert len(samples[0]["global_crops"]) == 2 and samples[0]["local_crops"][0].shape == (3, L, L)
    assert torch.equal(samples[0]["image"], samples[0]["global_crops"][0])
    batch = MultiCropCollate((S // 8, S // 8))(samples)
    assert batch["global_crops"].shape == (8, 3, S, S) and batch["local_crops"].shape == (12, 3, L, L)
    assert batch["masks"].shape == (8, 4, 4) and batch["masks"].dtype == torch.bool
    assert torch.equal(batch["image"], torch.stack([s["global_crops"][0] for s in samples]))
    assert torch.equal(batch["global_crops"][5], samples[1]["global_crops"][1])  # crop-major
    assert batch["label"].tolist() == [-1] * 4 and not batch["masks"][:4].any()
    for t in (batch["global_crops"], batch["local_crops"]):
        assert t.min() >= -1 and t.max() <= 1
    # Same samples -> same masks (drawn from the samples' seeds).
    assert torch.equal(MultiCropCollate((4, 4))(samples)["masks"], batch["masks"])


def test_block_masks_ratio_range():
    gen = BlockMaskGenerator((16, 16))
    for n in (0, 3, 30, 128, 256):
        assert gen(n, rng=random.Random(n)).sum() == n  # exact count, even below min_num_patches
    B, grid = 16, (16, 16)
    samples = [{"global_crops": [torch.zeros(3, 4, 4)] * 3, "label": i, "seed": i} for i in range(B)]
    for prob in (1.0, 0.5):
        masks = MultiCropCollate(grid, mask_ratio=(0.1, 0.5), mask_sample_prob=prob)(samples)["masks"]
        assert masks.shape == (3 * B, 16, 16) and not masks[:B].any()  # crop 0 never masked
        ratios = masks[B:].float().mean((1, 2))
        masked = ratios[ratios > 0]
        assert len(masked) == int(2 * B * prob)
        assert masked.min() >= 0.1 and masked.max() <= 0.5
        assert masked.max() - masked.min() > 0.25  # spread over the range, DINOv2 style


def test_resumable_sampler_partition_and_skip():
    ranks = [ResumableSampler(11, seed=5, rank=r, world_size=2) for r in range(2)]
    for s in ranks:
        s.set_epoch(3)
    a, b = list(ranks[0]), list(ranks[1])
    assert len(a) == len(b) == 6 and set(a) | set(b) == set(range(11))
    assert len(set(a) & set(b)) <= 1  # only the wrap-around pad repeats
    even = [list(ResumableSampler(10, seed=5, rank=r, world_size=2)) for r in range(2)]
    assert not set(even[0]) & set(even[1]) and sorted(even[0] + even[1]) == list(range(10))
    s = ResumableSampler(10, seed=1)
    s.set_epoch(2)
    full = list(s)
    s.set_start_index(4)
    assert list(s) == full[4:] and len(s) == 6
    s.set_epoch(2)
    assert list(s) == full  # set_epoch resets the start
    s.set_epoch(3)
    assert list(s) != full and sorted(s) == list(range(10))


class _EpochCounter(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.calls = []

    def set_epoch(self, epoch: int) -> None:
        self.calls.append(epoch)

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> int:
        return index


def test_set_loader_epoch_sets_dataset_epoch_once():
    ds = _EpochCounter()
    loader = build_loader(ds, batch_size=2, train=True, distributed=False)
    assert set_loader_epoch(loader, 3, start_batch=1) == 0
    assert ds.calls == [3] and loader.sampler.epoch == 3 and loader.sampler.start_index == 2
    # A sampler that does not forward to this dataset: the dataset is still set, once.
    other = DataLoader(ds, batch_size=2, sampler=ResumableSampler(4))
    set_loader_epoch(other, 4)
    assert ds.calls == [3, 4] and other.sampler.epoch == 4


def test_loader_resume_reproduces_batches():
    ds = build_dataset("builtin:photos", 16, train=True, seed=7, epoch_size=24)
    loader = build_loader(ds, batch_size=4, train=True, num_workers=0, seed=7, distributed=False)
    set_loader_epoch(loader, 2)
    full = [b["image"] for b in loader]
    assert len(full) == 6
    ds2 = build_dataset("builtin:photos", 16, train=True, seed=7, epoch_size=24)
    # Other worker count, same batches: crops are seeded per sample, not per worker.
    resumed_loader = build_loader(ds2, batch_size=4, train=True, num_workers=2, seed=7, distributed=False)
    assert set_loader_epoch(resumed_loader, 2, start_batch=3) == 0
    resumed = [b["image"] for b in resumed_loader]
    assert len(resumed) == 3 and all(torch.equal(x, y) for x, y in zip(full[3:], resumed))
    loader.sampler.set_epoch(3)  # the sampler forwards the epoch to the dataset's crops
    assert ds.epoch == 3


def test_shards_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    items = [(Image.fromarray(_noise(rng, 24, 24)), i % 3) for i in range(10)]
    spec = write_shards(items, str(tmp_path / "sh" / "train-%04d.tar"), maxcount=5)
    assert spec == str(tmp_path / "sh" / "train-{0000..0001}.tar")
    assert (tmp_path / "sh" / "train-0001.tar").is_file() and dataset_num_classes(spec) == 3
    ev = build_dataset(spec, S, train=False)
    assert len(ev) == 10
    samples = list(ev)
    assert [s["label"] for s in samples] == [i % 3 for i in range(10)]
    for s in samples:
        _check_image(s["image"])
    # Training stream: shuffled, fixed length per epoch, split between 2 workers without overlap.
    tr = build_dataset(spec, S, train=True, epoch_size=8)
    loader = build_loader(tr, batch_size=2, train=True, num_workers=2, drop_last=False)
    set_loader_epoch(loader, 0)
    seeds = torch.cat([b["seed"] for b in loader]).tolist()
    assert len(seeds) == 8 and len(set(seeds)) == 8
    set_loader_epoch(loader, 1)  # the persistent workers must see the new epoch
    assert not set(torch.cat([b["seed"] for b in loader]).tolist()) & set(seeds)
    single = ev.urls[:1]
    assert len(list(build_dataset(single[0], S, train=False))) == 5  # a plain .tar spec


def test_shards_eval_one_pass_unequal_shards(tmp_path, monkeypatch):
    assert shards_module.IMAGE_KEYS == tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)
    rng = np.random.default_rng(4)
    items = [(Image.fromarray(_noise(rng, 8, 8)), i) for i in range(12)]
    spec = write_shards(items, str(tmp_path / "sh" / "val-%04d.tar"), maxcount=5)  # shards of 5, 5, 2
    ev = build_dataset(spec, 8, train=False)  # meta.json: num_samples 12
    assert len(ev) == 12
    for workers in (0, 2):
        loader = DataLoader(ev, batch_size=4, num_workers=workers)
        labels = torch.cat([b["label"] for b in loader]).tolist()
        assert sorted(labels) == list(range(12)), workers  # every sample exactly once
    capped = build_dataset(spec, 8, train=False, epoch_size=7)  # epoch_size does not cut evaluation short
    assert len(capped) == 12 and sorted(s["label"] for s in capped) == list(range(12))
    # DDP ranks x workers: whole shards per reader (2 x 1) or every k-th sample (2 x 2 > 3 shards).
    for world, num_workers in ((2, 1), (2, 2), (3, 1)):
        labels = []
        for rank in range(world):
            for worker in range(num_workers):
                info = (rank, world, worker, num_workers)
                monkeypatch.setattr(shards_module, "_worker_info", lambda info=info: info)
                labels += [s["label"] for s in ev]
        assert sorted(labels) == list(range(12)), (world, num_workers)
