"""Latent diffusion: flow matching + samplers on toy data, the DiT, CFG, sample files, the latent cache."""

from __future__ import annotations

import argparse
import json
import math
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import Dataset, IterableDataset

from tcae.diffusion import (
    DiT,
    LatentDataset,
    cache_latents,
    create_dit,
    dit_config,
    flow_matching_loss,
    list_dits,
    sample,
    sample_timesteps,
)
from tcae.evaluation.npz import NpzSampleWriter, load_samples_npz, save_samples_npz
from tcae.models import create_model
from tcae.util import to_uint8_hwc as to_uint8

# ---------------------------------------------------------------------- toy 2D flow matching
MEANS = torch.tensor([[2.0, 0.0], [-1.0, 1.5], [0.0, -2.0]])
STDS = torch.tensor([[0.3, 0.6], [0.5, 0.2], [0.4, 0.4]])


class ToyVelocity(nn.Module):
    """MLP velocity model v(x (B, 2), t (B,), y (B,)) with a null class (index 3) for CFG."""

    def __init__(self, num_classes: int = 3, width: int = 128) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.emb = nn.Embedding(num_classes + 1, width)
        self.inp = nn.Linear(2 + 16, width)
        self.net = nn.Sequential(nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width),
                                 nn.SiLU(), nn.Linear(width, 2))

    def forward(self, x, t, y, drop_labels=None):
        if drop_labels is not None:
            y = torch.where(drop_labels, self.num_classes, y)
        a = t[:, None] * math.pi / 2 * 2.0 ** torch.arange(8.0)[None]
        return self.net(self.inp(torch.cat([x, a.sin(), a.cos()], dim=1)) + self.emb(y))


def draw(y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return MEANS[y] + STDS[y] * torch.randn(len(y), 2, generator=g)


@pytest.fixture(scope="module")
def toy_model() -> ToyVelocity:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = ToyVelocity()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 800)
    for step in range(800):
        y = torch.randint(0, 3, (512,), generator=g)
        kind = "uniform" if step % 2 else "logit_normal"
        loss = flow_matching_loss(model, draw(y, g), y, timestep_kind=kind, generator=g, class_dropout=0.2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@pytest.mark.parametrize("sampler,steps", [("euler", 40), ("heun", 20)])
def test_flow_matching_reaches_target(toy_model, sampler, steps):
    g = torch.Generator().manual_seed(1)
    y = torch.arange(3).repeat_interleave(2000)
    x = sample(toy_model, torch.randn(len(y), 2, generator=g), y, steps=steps, sampler=sampler)
    for c in range(3):
        xs = x[y == c]
        cov = torch.cov(xs.T)
        assert torch.allclose(xs.mean(0), MEANS[c], atol=0.12), (c, xs.mean(0))
        assert torch.allclose(cov.diagonal().sqrt(), STDS[c], rtol=0.2), (c, cov)
        assert abs(cov[0, 1]) / (STDS[c, 0] * STDS[c, 1]) < 0.2  # components are independent


def test_null_class_learns_the_mixture(toy_model):
    """Label dropout (class_dropout in the loss) trains the null class on the whole mixture."""
    g = torch.Generator().manual_seed(2)
    x = sample(toy_model, torch.randn(3000, 2, generator=g), torch.full((3000,), 3), steps=20, sampler="heun")
    nearest = torch.cdist(x, MEANS).argmin(1)
    shares = torch.bincount(nearest, minlength=3).float() / len(x)
    assert torch.allclose(shares, torch.full((3,), 1 / 3), atol=0.08), shares


def gaussian_velocity(mu: float, s: float):
    """Exact E[noise - x0 | x_t] for x0 ~ N(mu, s^2), noise ~ N(0, 1) under our interpolant."""
    def v(x, t, y):
        t = t.view(-1, *([1] * (x.ndim - 1)))
        var = (1 - t) ** 2 * s**2 + t**2
        return -mu + (t - (1 - t) * s**2) / var * (x - (1 - t) * mu)
    return v


def test_samplers_integrate_the_exact_ode():
    """The flow ODE maps noise n to mu + s n exactly; euler converges at order 1, heun at order 2."""
    mu, s = 1.5, 0.3
    noise = torch.tensor([[-1.0], [0.0], [2.0]])
    target = mu + s * noise
    y = torch.zeros(3, dtype=torch.long)
    err = {(k, n): (sample(gaussian_velocity(mu, s), noise, y, steps=n, sampler=k) - target).abs().max().item()
           for k in ("euler", "heun") for n in (20, 40)}
    assert err["heun", 40] < 3e-3 and err["euler", 40] < 0.04, err
    assert 1.7 < err["euler", 20] / err["euler", 40] < 2.3, err
    assert 3.4 < err["heun", 20] / err["heun", 40] < 4.6, err


def test_sampler_evaluation_counts_and_direction():
    calls = []

    def v(x, t, y):
        calls.append(float(t[0]))
        return torch.zeros_like(x)

    sample(v, torch.zeros(2, 1), torch.zeros(2, dtype=torch.long), steps=4, sampler="heun")
    # heun: 2 evaluations per step except the last (euler) step; time runs from 1 (noise) to 0
    assert calls == [1.0, 0.75, 0.75, 0.5, 0.5, 0.25, 0.25]
    with pytest.raises(ValueError, match="sampler"):
        sample(v, torch.zeros(1, 1), torch.zeros(1, dtype=torch.long), sampler="rk4")


def test_sample_timesteps():
    g = torch.Generator().manual_seed(0)
    for kind in ("logit_normal", "uniform"):
        t = sample_timesteps(20000, kind, generator=g)
        assert t.shape == (20000,) and t.min() > 0 and t.max() < 1
        assert abs(t.median().item() - 0.5) < 0.02
    ln, un = sample_timesteps(20000, "logit_normal", generator=g), sample_timesteps(20000, "uniform", generator=g)
    assert ln.std() < un.std()  # logit-normal concentrates on the middle
    assert sample_timesteps(20000, "uniform", generator=g, shift=3.0).mean() > 0.6  # shift moves towards noise
    with pytest.raises(ValueError, match="timestep kind"):
        sample_timesteps(4, "cosine")


# ---------------------------------------------------------------------- CFG
def test_cfg_scale_one_is_the_conditional_model():
    model = create_dit("dit-tiny", in_channels=4, num_classes=5).eval()
    _randomize_zero_init(model)
    g = torch.Generator().manual_seed(0)
    noise, y = torch.randn(3, 4, 4, 4, generator=g), torch.tensor([0, 2, 4])
    batches = []

    def counting(x, t, y_):
        batches.append(x.shape[0])
        return model(x, t, y_)

    cond = sample(model, noise, y, steps=5, sampler="heun")
    guided_1 = sample(counting, noise, y, steps=5, sampler="heun", cfg_scale=1.0, null_class=5)
    assert torch.equal(cond, guided_1)
    assert set(batches) == {3}  # the unconditional pass was skipped
    assert not torch.allclose(sample(model, noise, y, steps=5, cfg_scale=3.0), cond, atol=1e-4)


def test_cfg_interval_is_honoured():
    model = create_dit("dit-tiny", in_channels=4, num_classes=5).eval()
    _randomize_zero_init(model)
    noise, y = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([1, 3])
    seen = []

    def recording(x, t, y_):
        seen.append((round(float(t[0]), 4), x.shape[0]))
        return model(x, t, y_)

    # steps=4 evaluates at t = 1, .75, .5, .25: guidance (a doubled batch) only at .5 and .75
    sample(recording, noise, y, steps=4, cfg_scale=4.0, cfg_interval=(0.4, 0.8), null_class=5)
    assert seen == [(1.0, 2), (0.75, 4), (0.5, 4), (0.25, 2)]
    # an interval that contains no evaluation time gives exactly the conditional samples
    outside = sample(model, noise, y, steps=4, cfg_scale=4.0, cfg_interval=(0.3, 0.4))
    assert torch.equal(outside, sample(model, noise, y, steps=4))
    with pytest.raises(ValueError, match="cfg_interval"):
        sample(model, noise, y, cfg_scale=2.0, cfg_interval=(0.8, 0.2))


# ---------------------------------------------------------------------- DiT
def _randomize_zero_init(model: DiT) -> None:
    """Give the adaLN-zero layers non-zero weights (a 'trained' model) so every path matters."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaLN_modulation" in name or "final_layer.linear" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("patch,shape", [(1, (4, 4)), (1, (3, 5)), (2, (4, 6)), (2, (8, 4))])
def test_dit_shapes(patch, shape):
    model = create_dit("dit-tiny", in_channels=6, patch_size=patch, input_size=4)
    x = torch.randn(2, 6, *shape)
    out = model(x, torch.rand(2), torch.tensor([0, 3]))
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # adaLN-zero: a new DiT predicts exactly 0
    out = model(x, torch.tensor(0.5), torch.tensor([0, 3]))  # scalar t broadcasts
    assert out.shape == x.shape


def test_dit_input_errors():
    model = create_dit("dit-tiny", in_channels=6, patch_size=2)
    with pytest.raises(ValueError, match="divisible by the DiT patch size 2"):
        model(torch.randn(1, 6, 5, 4), torch.rand(1), torch.tensor([0]))
    with pytest.raises(ValueError, match="expected a latent"):
        model(torch.randn(1, 5, 4, 4), torch.rand(1), torch.tensor([0]))


def test_dit_gradients_reach_every_parameter():
    model = create_dit("dit-tiny", in_channels=4, num_classes=3, class_dropout=0.5).train()
    _randomize_zero_init(model)
    x0, y = torch.randn(8, 4, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    loss = flow_matching_loss(model, x0, y, generator=torch.Generator().manual_seed(0),
                              class_dropout=model.config.class_dropout)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, no_grad


def test_dit_label_dropout():
    model = create_dit("dit-tiny", in_channels=4, num_classes=3, class_dropout=0.5)
    _randomize_zero_init(model)
    x, t, y = torch.randn(4, 4, 4, 4), torch.rand(4), torch.tensor([0, 1, 2, 0])
    null = torch.full_like(y, 3)
    model.eval()
    assert torch.equal(model(x, t, y, drop_labels=torch.ones(4, dtype=torch.bool)), model(x, t, null))
    # the model never drops labels by itself, in training mode neither (no global-RNG draws)
    xs, ts, ys = x.repeat(8, 1, 1, 1), t.repeat(8), y.repeat(8)
    cond, uncond = model(xs, ts, ys), model(xs, ts, torch.full_like(ys, 3))
    model.train()
    rng = torch.get_rng_state()
    assert torch.equal(model(xs, ts, ys), cond)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(model(x, t, y, drop_labels=torch.zeros(4, dtype=torch.bool)), model.eval()(x, t, y))
    # the loss draws the mask from its generator: each label kept or replaced by the null class, both happen
    seen = []

    def recording(x_t, t_, y_, drop_labels=None):
        seen.append(drop_labels)
        return model(x_t, t_, y_, drop_labels=drop_labels)

    model.train()
    losses = [flow_matching_loss(recording, xs, ys, generator=torch.Generator().manual_seed(5),
                                 class_dropout=model.config.class_dropout) for _ in range(2)]
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(losses[0], losses[1]) and torch.equal(seen[0], seen[1])
    assert seen[0].dtype == torch.bool and 0 < seen[0].sum() < 32
    out = model(xs, ts, ys, drop_labels=seen[0])
    dropped = (out - uncond).flatten(1).abs().amax(1) < 1e-6
    kept = (out - cond).flatten(1).abs().amax(1) < 1e-6
    assert torch.all(dropped ^ kept) and torch.equal(dropped, seen[0])


def test_dit_save_load_roundtrip(tmp_path):
    model = create_dit("dit-tiny", in_channels=4, num_classes=7, patch_size=2).eval()
    _randomize_zero_init(model)
    model.save_pretrained(tmp_path / "dit")
    assert {"config.json", "model.safetensors"} <= set(os.listdir(tmp_path / "dit"))
    loaded = DiT.from_pretrained(str(tmp_path / "dit")).eval()
    assert loaded.config == model.config
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    x, t, y = torch.randn(2, 4, 4, 4), torch.rand(2), torch.tensor([1, 6])
    assert torch.equal(model(x, t, y), loaded(x, t, y))


def test_dit_presets_and_overrides():
    assert list_dits() == ["dit-b", "dit-l", "dit-s", "dit-tiny", "dit-xl"]
    cfg = dit_config("dit-xl")
    assert (cfg.hidden_size, cfg.depth, cfg.num_heads) == (1152, 28, 16)
    assert dit_config("dit-s", patch_size=2).patch_size == 2
    with pytest.raises(ValueError, match="unknown DiT preset 'dit-m'"):
        create_dit("dit-m")
    with pytest.raises(ValueError, match="hiden_size"):
        create_dit("dit-tiny", hiden_size=64)
    with pytest.raises(ValueError, match="divisible"):
        create_dit("dit-tiny", input_size=5, patch_size=2)


# ---------------------------------------------------------------------- sample files
def test_to_uint8_and_npz_layout(tmp_path):
    x = torch.tensor([-1.0, -0.999, 0.0, 0.5, 1.0, 1.7]).view(1, 1, 1, 6).expand(2, 3, 1, 6)
    u8 = to_uint8(x)
    assert u8.dtype == torch.uint8 and u8.shape == (2, 1, 6, 3)
    assert u8[0, 0, :, 0].tolist() == [0, 0, 128, 191, 255, 255]  # round((x + 1) * 127.5), clipped
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 6, 3), dtype=np.uint8)
    save_samples_npz(images, tmp_path / "a.npz", labels=np.arange(5))
    with np.load(tmp_path / "a.npz") as data:
        assert data["arr_0"].dtype == np.uint8 and data["arr_0"].shape == (5, 8, 6, 3)
        assert np.array_equal(data["arr_0"], images) and data["arr_1"].tolist() == [0, 1, 2, 3, 4]
    writer = NpzSampleWriter(tmp_path / "b.npz", 5, 8, 6)
    writer.write(images[:3])
    writer.write(torch.from_numpy(images[3:]))
    writer.close(labels=torch.arange(5))
    assert np.array_equal(load_samples_npz(tmp_path / "b.npz"), images)
    assert sorted(os.listdir(tmp_path)) == ["a.npz", "b.npz"]  # no temporary files left
    with pytest.raises(ValueError, match="uint8"):
        save_samples_npz(images.astype(np.float32), tmp_path / "c.npz")


# ---------------------------------------------------------------------- latent cache
class TinyImages(Dataset):
    """In-memory dataset of {"image": (3, 32, 32) in [-1, 1], "label"}; counts reads; can fail."""

    def __init__(self, n: int = 10, fail_at: int | None = None) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 3, 32, 32, generator=g) * 2 - 1
        self.labels = [i % 3 for i in range(n)]
        self.fail_at, self.reads = fail_at, []

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        if self.fail_at is not None and i >= self.fail_at:
            raise RuntimeError("simulated kill")
        self.reads.append(i)
        return {"image": self.images[i], "label": self.labels[i], "seed": i}


class TinyStream(IterableDataset):
    def __init__(self, base: TinyImages) -> None:
        self.base = base

    def __iter__(self):
        return (self.base[i] for i in range(len(self.base)))


@pytest.fixture(scope="module")
def tokenizer():
    torch.manual_seed(0)
    return create_model("tcae-tiny", image_size=32).eval()


def _shards(out):
    return sorted(p for p in os.listdir(out) if p.startswith("shard-"))


def test_cache_latents_resume(tmp_path, tokenizer):
    kw = dict(batch_size=2, flip=True, shard_size=3, progress=False, data_spec="tiny", image_size=32)
    ref = cache_latents(tokenizer, TinyImages(), tmp_path / "oneshot", **kw)
    assert ref["num_samples"] == 10 and ref["num_latents"] == 20 and ref["num_shards"] == 4
    assert ref["latent_shape"] == [32, 2, 2] and ref["num_classes"] == 3

    out = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="simulated kill"):  # killed while encoding shard 2
        cache_latents(tokenizer, TinyImages(fail_at=7), out, **kw)
    assert _shards(out) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    assert not json.loads((out / "meta.json").read_text())["complete"]
    os.remove(out / "shard-00000.safetensors")  # and a shard lost as well
    data = TinyImages()
    summary = cache_latents(tokenizer, data, out, **kw)
    assert summary["resumed_shards"] == 1 and summary["encoded_shards"] == 3
    assert sorted(set(data.reads)) == [0, 1, 2, 6, 7, 8, 9]  # shard 1 (samples 3..5) was not re-read

    indices = []
    for name in _shards(out):
        a, b = load_file(out / name), load_file(tmp_path / "oneshot" / name)
        for key in ("latents", "labels", "indices", "flipped"):
            assert torch.equal(a[key], b[key]), (name, key)
        indices += a["indices"][~a["flipped"]].tolist()
        assert a["latents"].dtype == torch.float32 and a["labels"].dtype == torch.int64
    assert indices == list(range(10))  # unique and complete
    assert summary["mean"] == ref["mean"] and summary["std"] == ref["std"]
    # flipped copies are the encodings of the mirrored images
    a = load_file(out / "shard-00000.safetensors")
    flipped = tokenizer.encode(TinyImages().images[:1].flip(-1))
    assert a["flipped"].tolist() == [False, True] * 3
    assert torch.allclose(a["latents"][1], flipped[0], atol=1e-5)

    # a finished cache is left alone; other settings are refused
    again = TinyImages()
    assert cache_latents(tokenizer, again, out, **kw)["encoded_shards"] == 0 and again.reads == []
    with pytest.raises(ValueError, match="flip"):
        cache_latents(tokenizer, TinyImages(), out, **{**kw, "flip": False})


def test_cache_latents_discards_corrupt_shard_and_streams(tmp_path, tokenizer):
    kw = dict(batch_size=4, shard_size=4, progress=False)
    ref = cache_latents(tokenizer, TinyImages(), tmp_path / "a", **kw)
    (tmp_path / "a" / "shard-00001.safetensors").write_bytes(b"truncated")
    fixed = cache_latents(tokenizer, TinyImages(), tmp_path / "a", **kw)
    assert fixed["encoded_shards"] == 1 and fixed["mean"] == ref["mean"]
    streamed = cache_latents(tokenizer, TinyStream(TinyImages()), tmp_path / "b", **kw)
    assert streamed["num_samples"] == 10 and streamed["num_shards"] == 3
    for name in _shards(tmp_path / "a"):
        assert torch.equal(load_file(tmp_path / "a" / name)["latents"], load_file(tmp_path / "b" / name)["latents"])


def test_latent_dataset(tmp_path, tokenizer):
    cache_latents(tokenizer, TinyImages(), tmp_path, batch_size=4, flip=True, shard_size=4, progress=False)
    ds = LatentDataset(tmp_path)
    assert len(ds) == 20 and ds.num_classes == 3 and ds.latent_shape == (32, 2, 2)
    z = torch.stack([ds[i][0] for i in range(len(ds))])
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(32), atol=1e-4)
    assert torch.allclose(z.std(dim=(0, 2, 3), unbiased=False), torch.ones(32), atol=1e-3)
    assert [ds[i][1] for i in range(4)] == [0, 0, 1, 1]
    raw = LatentDataset(tmp_path, normalize=False, include_flipped=False)
    assert len(raw) == 10
    assert torch.allclose(raw[1][0], tokenizer.encode(TinyImages().images[1:2])[0], atol=1e-5)
    loader = torch.utils.data.DataLoader(ds, batch_size=8)
    x, y = next(iter(loader))
    assert x.shape == (8, 32, 2, 2) and y.dtype == torch.int64


# ---------------------------------------------------------------------- CLI
def _cli(argv: list[str]) -> int:
    from tcae.cli import diffusion as diffusion_cmds

    parser = argparse.ArgumentParser()
    diffusion_cmds.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_sample_cli(tmp_path, tokenizer):
    tok_dir, dit_dir = tmp_path / "tok", tmp_path / "dit"
    tokenizer.save_pretrained(tok_dir)  # no latent stats stored: the DiT's own are used
    dit = create_dit("dit-tiny", in_channels=32, input_size=2, num_classes=4)
    _randomize_zero_init(dit)
    c = 32
    dit.set_latent_stats(torch.full((c,), 0.1), torch.full((c,), 2.0))
    dit.save_pretrained(dit_dir)
    argv = ["sample", "--dit", str(dit_dir), "--model", str(tok_dir), "--num", "3", "--classes", "0,2",
            "3", "--cfg", "2.0", "--cfg-interval", "0.2,0.9", "--steps", "3", "--sampler", "heun",
            "--batch-size", "4", "--device", "cpu", "--out", str(tmp_path / "out"), "--no-progress", "--pngs"]
    assert _cli(argv) == 0
    with np.load(tmp_path / "out" / "samples.npz") as data:
        assert data["arr_0"].dtype == np.uint8 and data["arr_0"].shape == (9, 32, 32, 3)
        assert data["arr_1"].tolist() == [0, 0, 0, 2, 2, 2, 3, 3, 3]
    assert (tmp_path / "out" / "grid.png").is_file() and len(os.listdir(tmp_path / "out" / "samples")) == 9
    info = json.loads((tmp_path / "out" / "sample_config.json").read_text())
    assert info["latent_stats"] == "dit"
    # the same seed gives the same samples whatever the batch size (up to float rounding)
    _cli([*argv[:-4], "--batch-size", "2", "--out", str(tmp_path / "out2"), "--no-progress"])
    a, b = (load_samples_npz(tmp_path / d / "samples.npz").astype(int) for d in ("out", "out2"))
    assert np.abs(a - b).max() <= 1


def test_evaluate_samples_with_custom_network(tmp_path):
    from tcae.evaluation.gen_eval import evaluate_samples

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    save_samples_npz(a, tmp_path / "a.npz")
    save_samples_npz(b, tmp_path / "b.npz")
    net = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten())  # 12-d features, no weights needed
    same = evaluate_samples(tmp_path / "a.npz", tmp_path / "a.npz", feature_network=net, progress=False)
    other = evaluate_samples(tmp_path / "a.npz", tmp_path / "b.npz", feature_network=net, progress=False)
    assert abs(same["metrics"]["gfd_custom"]) < 1e-6 < other["metrics"]["gfd_custom"]
    assert same["num_samples"] == 40 and "gfid" not in same["metrics"]


def test_cache_latents_records_the_tokenizer_and_the_dit_card_names_it(tmp_path, tokenizer, monkeypatch):
    """`tcae cache-latents --model ./tok` records the tokenizer as an absolute path (a DiT trained from another
    folder still finds it); the DiT's model card names it and its sample command uses it."""
    from tcae.cli.main import main as cli
    from tcae.diffusion.latents import read_latent_meta, tokenizer_source

    tokenizer.save_pretrained(tmp_path / "tok")
    monkeypatch.chdir(tmp_path)
    assert cli(["cache-latents", "--model", "./tok", "--data", "builtin:digits:val", "--out", "lat",
                "--device", "cpu", "--no-progress"]) == 0
    recorded = read_latent_meta(tmp_path / "lat")["tokenizer_path"]
    assert recorded == str((tmp_path / "tok").resolve())
    assert cli(["train-dit", "dit-tiny", "latents=lat", "run_dir=runs", "name=d", "steps=1", "batch_size=2",
                "progress=false", "device=cpu"]) == 0
    card = (tmp_path / "runs" / "d" / "model" / "README.md").read_text()
    assert f"| tokenizer | `{recorded}` |" in card and f"--model {recorded} " in card
    # Hub ids and missing paths are kept as given; a local diffusers folder keeps its prefix
    assert tokenizer_source("org/tcae-b") == "org/tcae-b"
    assert tokenizer_source("diffusers:tok") == f"diffusers:{(tmp_path / 'tok').resolve()}"
