"""Evaluation: metrics against scikit-image, Fréchet distance against closed forms, DDP-identical
statistics, linear probes, missing-weights errors, evaluate()/diagnose() end to end, the CLI."""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import tcae
from tcae.evaluation import (
    CUSTOM_LABEL,
    Evaluator,
    FeatureNetwork,
    FeatureStats,
    LatentChannelStats,
    MissingWeightsError,
    build_feature_network,
    compare,
    diagnose,
    effective_rank,
    evaluate,
    frechet_distance,
    inception_score,
    latent_channel_stats,
    linear_probe,
    load_stats,
    psnr_per_image,
    results_to_json,
    save_stats,
    ssim_per_image,
    structural_loss,
    weights_available,
)
from tcae.evaluation.features import INCEPTION_FILE, InceptionFeatures
from tcae.evaluation.metrics import MetricSums

SIZE = 32  # tcae-tiny has f=16: 32 px -> a 2x2 latent


# ----------------------------------------------------------------------------- helpers
class SyntheticImages(torch.utils.data.Dataset):
    """n smooth random images (3, SIZE, SIZE) in [-1, 1], fixed by the seed; labels i % 2."""

    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        low = torch.rand(n, 3, 8, 8, generator=g) * 2 - 1
        self.x = nn.functional.interpolate(low, size=(SIZE, SIZE), mode="bilinear", align_corners=False)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "label": i % 2}


def small_feature_net() -> nn.Module:
    """A fixed random conv net (B, 3, H, W) -> (B, 8): stands in for Inception in tests."""
    torch.manual_seed(123)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.GELU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(32, 8))


def tiny_model() -> tcae.TCAE:
    torch.manual_seed(0)
    return tcae.create_model("tcae-tiny").eval()


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """Point the torch hub cache at an empty directory: no pretrained weights anywhere."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return hub


# ----------------------------------------------------------------------------- PSNR / SSIM
def test_psnr_ssim_match_skimage():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 32, 40, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    psnr, ssim = psnr_per_image(y, x), ssim_per_image(y, x)
    assert psnr.shape == ssim.shape == (4,)
    for i in range(4):
        a = ((x[i] + 1) / 2).permute(1, 2, 0).double().numpy()
        b = ((y[i] + 1) / 2).permute(1, 2, 0).double().numpy()
        assert psnr[i].item() == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), abs=1e-4)
        ref = structural_similarity(a, b, data_range=1.0, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False)
        assert ssim[i].item() == pytest.approx(ref, abs=1e-5)
    assert ssim_per_image(x, x).allclose(torch.ones(4))


# ----------------------------------------------------------------------------- Fréchet distance
def test_frechet_distance_closed_form_diagonal():
    rng = np.random.default_rng(0)
    d = 16
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.2, 3.0, size=d), rng.uniform(0.2, 3.0, size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, np.diag(s1), mu1, np.diag(s1)) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_on_gaussian_samples():
    """Streamed sample statistics -> Fréchet distance close to the true one of the two Gaussians."""
    rng = np.random.default_rng(1)
    d, n = 4, 200_000
    mu1, mu2 = np.zeros(d), np.array([1.0, -0.5, 0.0, 2.0])
    s1, s2 = np.array([1.0, 2.0, 0.5, 1.0]), np.array([0.5, 2.0, 1.5, 3.0])
    truth = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    stats = []
    for mu, s in ((mu1, s1), (mu2, s2)):
        acc = FeatureStats()
        for chunk in np.array_split(rng.normal(mu, np.sqrt(s), size=(n, d)), 7):
            acc.update(torch.from_numpy(chunk))
        stats.append(acc.mean_cov())
    assert frechet_distance(*stats[0], *stats[1]) == pytest.approx(truth, rel=0.02)


def test_feature_stats_match_numpy():
    x = np.random.default_rng(2).normal(size=(103, 6)) * 3 + 1
    acc = FeatureStats()
    for chunk in np.array_split(x, 5):
        acc.update(torch.from_numpy(chunk).float())
    mu, sigma = acc.mean_cov()
    assert acc.count == 103
    np.testing.assert_allclose(mu, x.astype(np.float32).mean(0), rtol=1e-5)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float32), rowvar=False), rtol=1e-4, atol=1e-5)


def test_stats_npz_roundtrip_and_inception_score(tmp_path):
    mu, sigma = np.arange(3.0), np.eye(3) * 2
    save_stats(tmp_path / "ref.npz", mu, sigma)
    mu2, sigma2 = load_stats(tmp_path / "ref.npz")
    np.testing.assert_array_equal(mu, mu2)
    np.testing.assert_array_equal(sigma, sigma2)
    np.savez(tmp_path / "bad.npz", arr_0=np.zeros(3))
    with pytest.raises(ValueError, match="mu"):
        load_stats(tmp_path / "bad.npz")
    # uniform predictions: IS = 1; confident predictions spread evenly over k classes: IS = k
    assert inception_score(torch.zeros(100, 10), splits=2)[0] == pytest.approx(1.0)
    confident = torch.eye(5).repeat(20, 1) * 50
    assert inception_score(confident, splits=2, shuffle=False)[0] == pytest.approx(5.0, rel=1e-6)


# ----------------------------------------------------------------------------- DDP
def _ddp_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        result = evaluate(tiny_model(), SyntheticImages(7), metrics=("psnr", "ssim", "rfid"), batch_size=2,
                          device="cpu", feature_network=small_feature_net())
        stats = FeatureStats()
        net = small_feature_net()
        from tcae.data import eval_loader

        for batch in eval_loader(SyntheticImages(7), 2, distributed=True):
            stats.update(net(batch["image"]))
        stats.all_reduce()
        mu, sigma = stats.mean_cov()
        channels = LatentChannelStats(channels=3)  # rank 1 sees no latents: contributes zeros
        if rank == 0:
            channels.update(torch.arange(24.0).view(2, 3, 2, 2))
        channels.all_reduce()
        if rank == 0:
            np.savez(out_file, mu=mu, sigma=sigma, count=stats.count, metrics=json.dumps(result["metrics"]),
                     num_images=result["num_images"], channel_mean=channels.mean_std()[0].numpy(),
                     channel_images=channels.images)
    finally:
        dist.destroy_process_group()


def test_feature_stats_identical_on_one_and_two_ranks(tmp_path):
    single = evaluate(tiny_model(), SyntheticImages(7), metrics=("psnr", "ssim", "rfid"), batch_size=2,
                      device="cpu", feature_network=small_feature_net())
    net, stats = small_feature_net(), FeatureStats()
    with torch.no_grad():
        stats.update(net(SyntheticImages(7).x))
    mu1, sigma1 = stats.mean_cov()

    out = tmp_path / "ddp.npz"
    # fork: the children skip re-importing torch/tcae (seconds each on 2 cores); they use 1 thread,
    # so no OpenMP pool is touched after the fork. A deadline turns a hang into a failure.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    ctx = mp.start_processes(_ddp_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=False,
                             start_method=method)
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=2):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("2-rank gloo evaluation did not finish within 120 s")
    got = np.load(out)
    assert int(got["count"]) == 7 and int(got["num_images"]) == 7  # 4 + 3 images, none counted twice
    assert int(got["channel_images"]) == 2
    np.testing.assert_allclose(got["channel_mean"], torch.arange(24.0).view(2, 3, 4).mean((0, 2)).numpy())
    np.testing.assert_allclose(got["mu"], mu1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["sigma"], sigma1, rtol=1e-4, atol=1e-6)
    ddp_metrics = json.loads(str(got["metrics"]))
    assert ddp_metrics.keys() == single["metrics"].keys()
    for k, v in single["metrics"].items():
        assert ddp_metrics[k] == pytest.approx(v, rel=1e-4, abs=1e-5), k


# ----------------------------------------------------------------------------- diagnostics
def test_linear_probe_chance_and_separable():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 20))
    y = rng.integers(0, 10, size=1000)
    assert linear_probe(x[:800], y[:800], x[800:], y[800:]) < 0.3  # random labels: ~chance (0.1)

    centers = rng.normal(size=(10, 20)) * 6
    labels = rng.integers(0, 10, size=1000)
    feats = centers[labels] + rng.normal(size=(1000, 20))
    assert linear_probe(feats[:800], labels[:800], feats[800:], labels[800:]) > 0.95
    assert structural_loss(0.8, 0.2) == pytest.approx(0.75)


def test_effective_rank_and_channel_stats():
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(50, 50)))
    x = q[:, :5] * 3.0  # 5 equal singular values (columns orthonormal, zero-mean not needed: center=False)
    assert effective_rank(x, center=False) == pytest.approx(5.0, rel=1e-6)
    assert effective_rank(np.outer(np.arange(10.0), np.ones(4)), center=False) == pytest.approx(1.0)

    z = torch.randn(64, 4, 3, 3) * torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1) + 5
    s = latent_channel_stats(z)
    np.testing.assert_allclose(s["std"], [1, 2, 3, 4], rtol=0.1)
    np.testing.assert_allclose(s["mean"], [5] * 4, atol=0.5)
    assert s["std_spread"] == pytest.approx(np.std([1, 2, 3, 4]), rel=0.1)


def test_diagnose_digits_and_write_stats(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "model")
    result = diagnose(model, "builtin:digits", image_size=SIZE, batch_size=100, device="cpu", max_images=150,
                      write_stats_to=tmp_path / "model")
    assert result["num_images"] == 150 and result["probe"]["train_images"] == 150
    assert result["latent_shape"] == [32, 2, 2]
    assert 1.0 <= result["effective_rank_latents"] <= 128 and 1.0 <= result["effective_rank_tokens"] <= 128
    assert result["probe"]["num_classes"] == 10 and result["probe"]["split"] == "train/val"
    assert 0.0 <= result["probe_acc_latents"] <= 1.0 and 0.2 < result["probe_acc_tokens"] <= 1.0
    assert result["structural_loss"] == pytest.approx(1 - result["probe_acc_latents"] / result["probe_acc_tokens"])
    json.loads(results_to_json(result))
    reloaded = tcae.TCAE.from_pretrained(str(tmp_path / "model"))
    assert reloaded.has_latent_stats
    np.testing.assert_allclose(reloaded.latent_std.numpy(), result["latent_stats"]["std"], rtol=1e-5)


def test_the_probe_reuses_the_diagnosed_split_and_gets_the_same_accuracies(monkeypatch):
    """Diagnosing a probe split whole (here val, where the probe is scored) encodes it once, not twice;
    the accuracies equal those of encoding it again."""
    from tcae.data import build_dataset
    from tcae.evaluation import diagnostics

    model, calls = tiny_model(), []
    encode = diagnostics.encode_dataset
    monkeypatch.setattr(diagnostics, "encode_dataset", lambda *a, **k: calls.append(k.get("desc")) or encode(*a, **k))
    monkeypatch.setattr(diagnostics, "probe_specs", lambda spec: ("builtin:digits:train", "builtin:digits:val"))
    val = build_dataset("builtin:digits:val", SIZE, train=False)
    main = encode(model, diagnostics.eval_loader(val, 100, 0, None, device="cpu"), "cpu", progress=False)
    args = (SIZE, 100, torch.device("cpu"), 400, 0, main, False)  # val (360 images) is not capped
    reused = diagnostics._probe(model, "builtin:digits:val", *args)
    assert calls == ["probe builtin:digits:train"]  # the val split came from `main`
    again = diagnostics._probe(model, "builtin:digits", *args)  # another spec: both splits encoded
    assert calls[1:] == ["probe builtin:digits:train", "probe builtin:digits:val"]
    assert reused == again and reused["probe"]["val_images"] == len(val)


# ----------------------------------------------------------------------------- weights
def test_missing_weights_error_names_file(empty_hub, tmp_path):
    with pytest.raises(MissingWeightsError) as err:
        build_feature_network("inception")
    msg = str(err.value)
    assert INCEPTION_FILE in msg and str(empty_hub / "checkpoints") in msg and "https://" in msg
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_feature_network("inception", weights=tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="resnet18"):
        build_feature_network("torchvision:resnet18")
    assert not weights_available("rfid") and weights_available("psnr")
    # evaluate fails before touching any image
    with pytest.raises(FileNotFoundError, match=INCEPTION_FILE):
        evaluate(tiny_model(), SyntheticImages(2), metrics="psnr,rfid", device="cpu")


def test_inception_network_with_given_weights(tmp_path, monkeypatch):
    """The FID network loads a given file (a random state dict here, made by skipping the download)."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    with monkeypatch.context() as m:  # build torch-fidelity's net once without weights, to get a state dict
        m.setattr(tfi, "load_state_dict_from_url", lambda *a, **k: None)
        m.setattr(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        torch.manual_seed(0)
        raw = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(raw.state_dict(), tmp_path / INCEPTION_FILE)
    net = build_feature_network("inception", weights=tmp_path / INCEPTION_FILE)
    assert net.is_fid and net.dim == 2048
    out = net(torch.rand(2, 3, SIZE, SIZE) * 2 - 1)
    assert out["features"].shape == (2, 2048) and out["logits"].shape == (2, 1008)
    # IS from the direct formula exp(mean_i KL(p_i || mean_j p_j)) on the network's own logits
    p = out["logits"].double().softmax(1)
    direct = torch.exp((p * (p.log() - p.mean(0, keepdim=True).log())).sum(1).mean()).item()
    assert inception_score(out["logits"], splits=1)[0] == pytest.approx(direct, rel=1e-4)


def test_torchvision_network_with_given_weights(tmp_path):
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    net = build_feature_network("torchvision:resnet18", weights=tmp_path / "r18.pth")
    out = net(torch.rand(2, 3, 40, 40) * 2 - 1)
    assert out["features"].shape == (2, 512) and out["logits"].shape == (2, 1000)
    assert not net.is_fid and net.dim == 512


def test_dinov2_network_with_given_weights(tmp_path):
    import timm
    from safetensors.torch import save_file

    name = "vit_small_patch14_dinov2.lvd142m"
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        build_feature_network(f"dinov2:{name}", weights=tmp_path / "model.safetensors")
    torch.manual_seed(0)
    ref = timm.create_model(name, pretrained=False, num_classes=0)  # 518 px positions, like the release
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, tmp_path / "model.safetensors")
    net = build_feature_network(f"dinov2:{name}", weights=tmp_path / "model.safetensors")
    assert torch.equal(net.net.cls_token, ref.cls_token)  # loaded, not random
    assert net(torch.rand(2, 3, SIZE, SIZE) * 2 - 1)["features"].shape == (2, 384)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lpips_per_image_with_given_vgg_file(tmp_path, empty_hub):
    """LPIPS through the project's loader, from a VGG16 file (random trunk here: the numbers only have
    to match lpips' own per-image values); without the file it is a clear error."""
    import lpips
    import torchvision

    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"):
        evaluate(tiny_model(), SyntheticImages(2), metrics="psnr,lpips", device="cpu")
    assert not weights_available("lpips")
    torch.manual_seed(0)
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])  # VGG16 trunk only
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, tmp_path / "vgg16.pth")
    model = tiny_model()
    res = evaluate(model, SyntheticImages(6), metrics="lpips", batch_size=4, device="cpu",
                   lpips_weights=tmp_path / "vgg16.pth")
    x = SyntheticImages(6).x
    with torch.no_grad():
        recon = model.decode(model.encode(x)).clamp(-1, 1)
        ref = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
        trunk = {k: features.state_dict()[k.split(".", 1)[1]] for k in ref.net.state_dict()}
        ref.net.load_state_dict(trunk)
        expected = ref.eval()(recon, x).mean().item()
    assert res["metrics"]["lpips"] == pytest.approx(expected, rel=1e-4)


# ----------------------------------------------------------------------------- end to end
def test_evaluate_end_to_end_and_compare(tmp_path):
    model = tiny_model()
    res = evaluate(model, SyntheticImages(10), metrics="psnr,ssim,rfid", batch_size=4, device="cpu",
                   feature_network=small_feature_net(), grid_path=tmp_path / "grid.png", model_name="tiny")
    assert res["num_images"] == 10
    assert list(res["metrics"]) == ["psnr", "ssim", "rfd_custom"] and "rfid" not in res["metrics"]
    assert res["labels"]["rfd_custom"] == CUSTOM_LABEL
    assert res["metrics"]["rfd_custom"] > 0 and -1 <= res["metrics"]["ssim"] <= 1
    assert res["model"]["config"]["latent_channels"] == 32 and res["versions"]["torch"]
    assert (tmp_path / "grid.png").stat().st_size > 0
    from PIL import Image

    w, h = Image.open(tmp_path / "grid.png").size
    assert h == 3 * SIZE + 4 * 2 and w == 8 * SIZE + 9 * 2  # originals, reconstructions, latent PCA view; padding 2

    # psnr matches a direct per-image mean over the model's (clamped) reconstructions
    x = SyntheticImages(10).x
    with torch.no_grad():
        recon = model.decode(model.encode(x)).clamp(-1, 1)
    assert res["metrics"]["psnr"] == pytest.approx(psnr_per_image(recon, x).mean().item(), rel=1e-5)

    res2 = evaluate(model, SyntheticImages(10), metrics="psnr,ssim", device="cpu", max_images=6)
    assert res2["num_images"] == 6
    md = compare([res, res2], ["a", "b"], tmp_path / "cmp.md", tmp_path / "cmp.png")
    assert "| a |" in md and "| b |" in md and CUSTOM_LABEL in md
    assert (tmp_path / "cmp.png").stat().st_size > 0
    json.loads(results_to_json([res, res2], tmp_path / "r.json"))


class StandInInception(InceptionFeatures):
    """Test double for the FID network (an InceptionFeatures with a small random net instead of
    InceptionV3, no weights file): exercises the rfid / reference-statistics mechanics."""

    name, dim = "stand-in", 8

    def __init__(self) -> None:
        FeatureNetwork.__init__(self)  # skip InceptionFeatures' weights loading
        self.net = small_feature_net()

    def forward(self, x: torch.Tensor) -> dict:
        return {"features": self.net(x)}


def test_rfid_against_saved_reference_stats(tmp_path):
    model, data = tiny_model(), SyntheticImages(10)
    first = evaluate(model, data, metrics="rfid", device="cpu", feature_network=StandInInception(),
                     save_fid_stats=tmp_path / "ref.npz")
    mu, sigma = load_stats(tmp_path / "ref.npz")
    assert mu.shape == (8,) and sigma.shape == (8, 8)
    again = evaluate(model, data, metrics="rfid", device="cpu", feature_network=StandInInception(),
                     fid_stats=tmp_path / "ref.npz")
    assert again["metrics"]["rfid"] == pytest.approx(first["metrics"]["rfid"], rel=1e-6)
    assert again["feature_networks"]["rfid"]["reference"] == str(tmp_path / "ref.npz")
    with pytest.raises(ValueError, match="rfid"):
        evaluate(model, data, metrics="psnr", device="cpu", fid_stats=tmp_path / "ref.npz")


class _CountingInception(StandInInception):
    def __init__(self) -> None:
        super().__init__()
        self.images_seen = 0

    def forward(self, x: torch.Tensor) -> dict:
        self.images_seen += x.shape[0]
        return super().forward(x)


def test_originals_statistics_are_computed_once_for_several_models():
    models = [tiny_model()]
    torch.manual_seed(5)
    models.append(tcae.create_model("tcae-tiny").eval())  # different weights
    kw = {"metrics": "rfid", "device": "cpu", "max_images": 12, "batch_size": 4, "image_size": SIZE}
    alone = []
    for m in models:
        net = _CountingInception()
        alone.append(evaluate(m, "builtin:digits:val", feature_network=net, **kw)["metrics"]["rfid"])
        assert net.images_seen == 24  # originals + reconstructions
    net = _CountingInception()
    evaluator = Evaluator("builtin:digits:val", feature_network=net, **kw)
    shared = [evaluator.run(m)["metrics"]["rfid"] for m in models]
    assert net.images_seen == 24 + 12  # the second model's originals come from the first run
    assert shared == pytest.approx(alone, rel=1e-9) and alone[0] != pytest.approx(alone[1])


class _NamedNetwork(FeatureNetwork):
    """A non-Inception feature network with a name that needs sanitising, returning logits too."""

    kind, name, dim = "torchvision", "dinov2:vit_large_patch14_dinov2.lvd142m", 8
    label = "FD (DINOv2 vit_large_patch14_dinov2.lvd142m)"

    def __init__(self) -> None:
        super().__init__()
        self.net = small_feature_net()

    def forward(self, x: torch.Tensor) -> dict:
        f = self.net(x)
        return {"features": f, "logits": f}


class _ImpostorInception(_NamedNetwork):
    """Claims to be the FID network by its attributes only."""

    kind, name, label = "inception", "inception", "FID (InceptionV3)"


class _StandInInceptionWithLogits(StandInInception):
    def forward(self, x: torch.Tensor) -> dict:
        f = self.net(x)
        return {"features": f, "logits": f}


def test_metric_keys_and_labels_shared_and_never_fid_for_other_networks():
    net = _NamedNetwork()
    assert net.metric_key("r") == "rfd_dinov2_vit_large_patch14_dinov2_lvd142m"
    assert net.metric_key("g") == "gfd_dinov2_vit_large_patch14_dinov2_lvd142m"
    assert net.metric_label("g") == "gFD (DINOv2 vit_large_patch14_dinov2.lvd142m)"
    impostor = _ImpostorInception()
    assert not impostor.is_fid and impostor.metric_key("r") == "rfd_inception"
    assert impostor.metric_label("r") == CUSTOM_LABEL
    assert StandInInception().is_fid and StandInInception().metric_key("g") == "gfid"
    assert build_feature_network(small_feature_net()).metric_key("r") == "rfd_custom"
    res = evaluate(tiny_model(), SyntheticImages(4), metrics="rfid", device="cpu", feature_network=_NamedNetwork())
    assert list(res["metrics"]) == ["rfd_dinov2_vit_large_patch14_dinov2_lvd142m"]


def test_gen_eval_inception_score_only_from_inception(tmp_path):
    from tcae.evaluation.gen_eval import evaluate_samples
    from tcae.evaluation.npz import save_samples_npz

    images = np.random.default_rng(0).integers(0, 256, (30, 16, 16, 3), dtype=np.uint8)
    save_samples_npz(images, tmp_path / "a.npz")
    for net in (_NamedNetwork(), _ImpostorInception(), small_feature_net()):
        res = evaluate_samples(tmp_path / "a.npz", tmp_path / "a.npz", feature_network=net, progress=False)
        assert len(res["metrics"]) == 1 and not {"gfid", "is", "is_std"} & set(res["metrics"])
        assert not any("FID" in v or "Inception" in v for v in res["labels"].values())
    assert "gfd_dinov2_vit_large_patch14_dinov2_lvd142m" in evaluate_samples(
        tmp_path / "a.npz", tmp_path / "a.npz", feature_network=_NamedNetwork(), progress=False)["metrics"]

    net = _StandInInceptionWithLogits()
    res = evaluate_samples(tmp_path / "a.npz", tmp_path / "a.npz", feature_network=net, progress=False)
    assert set(res["metrics"]) == {"gfid", "is", "is_std"} and abs(res["metrics"]["gfid"]) < 1e-6
    with torch.no_grad():
        logits = net(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1)["logits"]
    assert res["metrics"]["is"] == pytest.approx(inception_score(logits)[0], rel=1e-6)


def test_metric_sums_exact_means():
    sums = MetricSums(["a", "b"])
    sums.add("a", torch.tensor([1.0, 2.0, 3.0]))
    sums.add("a", torch.tensor([4.0], dtype=torch.float16))
    sums.add("c", torch.tensor([0.5, 1.5]))
    assert sums.means() == {"a": 2.5, "c": 1.0}  # "b" saw no image: no mean
    assert sums.counts == {"a": 4, "b": 0, "c": 2} and sums.sums() == {"a": 10.0, "b": 0.0, "c": 2.0}


def test_latent_channel_stats_preallocated():
    acc = LatentChannelStats(channels=3)
    with pytest.raises(ValueError, match="no latents"):
        acc.mean_std()
    with pytest.raises(ValueError, match="channels"):
        acc.update(torch.zeros(1, 4, 2, 2))
    acc.update(torch.ones(2, 3, 2, 2))
    assert acc.images == 2 and acc.mean_std()[0].tolist() == [1.0, 1.0, 1.0]


def test_weights_available_builds_no_network(empty_hub, monkeypatch):
    import torchvision

    from tcae.evaluation import features

    def no_build(*args, **kwargs):
        raise AssertionError("weights_available built a network")

    for cls in (features.InceptionFeatures, features.DinoV2Features, features.TorchvisionFeatures):
        monkeypatch.setattr(cls, "__init__", no_build)
    assert not weights_available("fd:torchvision:resnet18")
    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    target = empty_hub / "checkpoints" / url.rsplit("/", 1)[-1]
    target.parent.mkdir(parents=True)
    target.write_bytes(b"")
    assert weights_available("fd:torchvision:resnet18")
    assert isinstance(weights_available("fd:dinov2:vit_small_patch14_dinov2.lvd142m"), bool)
    with pytest.raises(ValueError, match="unknown feature network"):
        weights_available("fd:nope")


def _parser() -> argparse.ArgumentParser:
    from tcae.cli import evaluate as eval_cmd

    parser = argparse.ArgumentParser(prog="tcae")
    eval_cmd.register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_eval_psnr_ssim_without_weights_and_missing_weights(tmp_path, empty_hub, capsys):
    model_dir = tmp_path / "run" / "model"
    tiny_model().save_pretrained(model_dir)
    parser = _parser()
    args = parser.parse_args(["eval", "--model", str(model_dir), "--data", "builtin:digits", "--image-size",
                              str(SIZE), "--metrics", "psnr,ssim", "--max-images", "8", "--device", "cpu",
                              "--out", str(tmp_path / "r")])
    assert args.func(args) == 0
    out = json.loads((tmp_path / "r" / "eval.json").read_text())["results"][0]
    assert out["num_images"] == 8 and set(out["metrics"]) == {"psnr", "ssim"} and out["data"] == "builtin:digits"
    assert "PSNR" in capsys.readouterr().out

    bad = ["eval", "--model", str(model_dir), "--data", "builtin:digits", "--image-size", str(SIZE),
           "--metrics", "psnr,rfid", "--device", "cpu"]
    args = parser.parse_args(bad)
    with pytest.raises(FileNotFoundError, match=INCEPTION_FILE):
        args.func(args)
    from tcae.cli.main import main

    assert main(bad) == 2
    err = capsys.readouterr().err
    assert INCEPTION_FILE in err and "Traceback" not in err
