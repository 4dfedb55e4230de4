"""The pinned FID protocol: ADM's center crop, reference statistics files (ADM / clean-fid .npz,
torch-fidelity .pt), class balance, and numbers that name their samples and reference."""

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode

from tcae.cli.main import main as cli
from tcae.evaluation import frechet_distance
from tcae.evaluation.features import FeatureNetwork, InceptionFeatures
from tcae.evaluation.fid_protocol import (
    PROTOCOL,
    center_crop_arr,
    load_reference,
    reference_statistics,
    save_reference,
)
from tcae.evaluation.gen_eval import evaluate_samples
from tcae.evaluation.npz import save_samples_npz

ODD_SIZES = [(517, 333), (333, 517), (65, 64), (97, 130), (255, 129), (64, 31), (1001, 999)]


def adm_crop_reference(img: Image.Image, size: int) -> np.ndarray:
    """ADM's center crop re-derived with torchvision: track the size of each BOX halving explicitly, then one
    BICUBIC resize to short side `size`, then a crop whose offsets are floor((side - size) / 2)."""
    w, h = img.size
    while min(w, h) >= 2 * size:
        w, h = w // 2, h // 2
        img = TF.resize(img, [h, w], interpolation=InterpolationMode.BOX)
    scale = size / min(w, h)
    img = TF.resize(img, [int(np.floor(h * scale + 0.5)), int(np.floor(w * scale + 0.5))],
                    interpolation=InterpolationMode.BICUBIC)
    top, left = (img.height - size) // 2, (img.width - size) // 2
    return np.asarray(TF.crop(img, top, left, size, size))


def random_photo(w: int, h: int, seed: int) -> Image.Image:
    """A smooth random RGB image (resampling differences show up, unlike on flat colours)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    noise = rng.integers(0, 40, (h, w, 3))
    base = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR)).astype(int)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("size", [32, 64])
def test_adm_center_crop_equals_an_independent_implementation_on_odd_sizes(size):
    for k, (w, h) in enumerate(ODD_SIZES):
        img = random_photo(w, h, k)
        ours = center_crop_arr(img, size)
        assert ours.shape == (size, size, 3) and ours.dtype == np.uint8
        np.testing.assert_array_equal(ours, adm_crop_reference(img, size), err_msg=f"{w}x{h} at {size}")


def test_adm_crop_is_not_torchvisions_center_crop():
    """torchvision rounds the crop offset ((side - S) / 2 rounded) where ADM floors it, and resizes once:
    on odd sizes the two pipelines give different pixels, which is why the protocol pins ADM's."""
    img = random_photo(333, 517, 0)
    tv = np.asarray(TF.center_crop(TF.resize(img, 64, interpolation=InterpolationMode.BICUBIC), [64, 64]))
    assert not np.array_equal(center_crop_arr(img, 64), tv)


class StandInInception(InceptionFeatures):
    """The FID network's role (is_fid) with a small fixed net instead of InceptionV3 (no weights file)."""

    name, dim = "stand-in", 6

    def __init__(self) -> None:
        FeatureNetwork.__init__(self)
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> dict:
        self.seen.append(x.clone())
        return {"features": self.net(x), "logits": self.net(x)}


def _folder(root, sizes):
    for k, (w, h) in enumerate(sizes):
        (root / f"c{k % 2}").mkdir(parents=True, exist_ok=True)
        random_photo(w, h, 100 + k).save(root / f"c{k % 2}" / f"{k}.png")
    return root


def test_reference_statistics_see_adms_uint8_crops(tmp_path):
    """fid-ref's images: each file's ADM crop, exactly (uint8 round trip), in the features and in the
    optional ADM reference batch; the statistics are those of the features, with the count."""
    root = _folder(tmp_path / "data", ODD_SIZES)
    net = StandInInception()
    mu, sigma, n = reference_statistics(str(root), 32, feature_network=net, batch_size=3,
                                        images_out=tmp_path / "batch.npz", progress=False)
    assert n == len(ODD_SIZES)
    seen = torch.cat(net.seen)
    files = sorted(root.rglob("*.png"))  # the folder dataset's order: sorted paths
    expected = np.stack([center_crop_arr(Image.open(f).convert("RGB"), 32) for f in files])
    np.testing.assert_array_equal(((seen + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy(), expected)
    with np.load(tmp_path / "batch.npz") as batch:
        np.testing.assert_array_equal(batch["arr_0"], expected)
        assert batch["arr_1"].tolist() == [int(f.parent.name[1]) for f in files]
    with torch.no_grad():
        feats = net.net(seen).double().numpy()
    np.testing.assert_allclose(mu, feats.mean(0), rtol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False), rtol=1e-5, atol=1e-9)


def test_reference_npz_round_trips_through_adms_layout(tmp_path):
    rng = np.random.default_rng(0)
    mu, a = rng.normal(size=5), rng.normal(size=(5, 5))
    sigma = a @ a.T
    path = save_reference(tmp_path / "ref.npz", mu, sigma, 1234, data="builtin:digits", image_size=32)
    with np.load(path) as raw:  # what ADM's / clean-fid's readers see
        assert raw["mu"].dtype == np.float64 and raw["sigma"].shape == (5, 5)
        np.testing.assert_array_equal(raw["mu"], mu)
        np.testing.assert_array_equal(raw["sigma"], sigma)
        assert int(raw["num_images"]) == 1234 and str(raw["protocol"]) == PROTOCOL
    ref = load_reference(path)
    np.testing.assert_array_equal(ref.mu, mu)
    np.testing.assert_array_equal(ref.sigma, sigma)
    assert ref.num_images == 1234 and ref.describe() == "ref.npz (1234 images, builtin:digits at 32 px)"

    # ADM's published reference batch layout (VIRTUAL_imagenet256_labeled.npz): images, mu/sigma, spatial stats
    images = rng.integers(0, 256, (7, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "VIRTUAL_tiny_labeled.npz", arr_0=images, mu=mu, sigma=sigma, mu_s=mu[:2],
             sigma_s=sigma[:2, :2])
    adm = load_reference(tmp_path / "VIRTUAL_tiny_labeled.npz")
    np.testing.assert_array_equal(adm.mu, mu)  # read as is, never recomputed from arr_0
    assert adm.num_images is None and "arr_0 holds 7 images" in adm.describe()


def test_torch_fidelity_statistics_round_trip(tmp_path):
    """.pt statistics in torch-fidelity's layout: its own FID function accepts them next to statistics it
    computed (it asserts equal dtypes), and the distance equals tcae's."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    rng = np.random.default_rng(1)
    f1, f2 = rng.normal(size=(50, 4)).astype(np.float32), rng.normal(1.0, 1.0, size=(60, 4)).astype(np.float32)
    theirs = fid_features_to_statistics(torch.from_numpy(f1))
    save_reference(tmp_path / "ref.pt", f2.mean(0), np.cov(f2, rowvar=False), 60)
    ours = torch.load(tmp_path / "ref.pt", weights_only=False)
    assert {k: v.dtype for k, v in ours.items()} == {k: v.dtype for k, v in theirs.items()}
    fid = fid_statistics_to_metric(theirs, ours, verbose=False)["frechet_inception_distance"]
    back = load_reference(tmp_path / "ref.pt")
    assert fid == pytest.approx(frechet_distance(theirs["mu"], theirs["sigma"], back.mu, back.sigma), rel=1e-4)


def test_gen_numbers_name_samples_and_reference_and_need_balance(tmp_path, capsys):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    save_samples_npz(images, tmp_path / "balanced.npz", np.arange(40) % 4)
    save_samples_npz(images, tmp_path / "unbalanced.npz", np.r_[np.zeros(30), np.arange(10) % 3 + 1])
    net = StandInInception()
    with torch.no_grad():
        feats = torch.cat([net.net(torch.from_numpy(images[i:i + 20]).permute(0, 3, 1, 2).float() / 127.5 - 1)
                           for i in (0, 20)]).double().numpy()
    save_reference(tmp_path / "ref.npz", feats.mean(0), np.cov(feats, rowvar=False), 40, data="D", image_size=16)

    res = evaluate_samples(tmp_path / "balanced.npz", tmp_path / "ref.npz", feature_network=net, progress=False)
    assert res["metrics"]["gfid"] == pytest.approx(0.0, abs=1e-6)
    assert res["class_balance"] == {"balanced": True, "per_class": 10, "num_classes": 4, "min": 10, "max": 10}
    for text in (res["labels"]["gfid"], res["summary"]):
        assert "40 samples, 10 per class x 4 classes vs ref.npz (40 images, D at 16 px)" in text
    assert res["protocol"] == PROTOCOL

    with pytest.raises(ValueError, match="unbalanced: 3-30 per class"):
        evaluate_samples(tmp_path / "unbalanced.npz", tmp_path / "ref.npz", feature_network=net, progress=False)
    res = evaluate_samples(tmp_path / "unbalanced.npz", tmp_path / "ref.npz", feature_network=net, progress=False,
                           allow_unbalanced=True)
    assert "unbalanced" in res["labels"]["gfid"]
    # the command line refuses them too, before any network is needed
    assert cli(["eval-gen", "--samples", str(tmp_path / "unbalanced.npz"), "--ref", str(tmp_path / "ref.npz")]) == 2
    assert "--allow-unbalanced" in capsys.readouterr().err


def test_fid_ref_cli_needs_inception_weights(tmp_path, capsys):
    assert cli(["fid-ref", "--data", "builtin:digits", "--image-size", "32", "--out", str(tmp_path / "ref")]) == 2
    assert "weights-inception-2015-12-05-6726825d.pth" in capsys.readouterr().err
    assert not (tmp_path / "ref" / "fid_stats.npz").exists()
    (tmp_path / "file").write_text("")
    assert cli(["fid-ref", "--data", "builtin:digits", "--image-size", "32", "--out", str(tmp_path / "file")]) == 2
    assert "--out is a directory" in capsys.readouterr().err
