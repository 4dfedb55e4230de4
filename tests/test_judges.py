"""Judges: the digits MLP against scikit-learn, the fashion CNN's training cache, and both as `tcae eval-gen`
feature networks (FD-<data> in their penultimate features, class agreement)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tcae.cli.main import main as cli
from tcae.data import build_dataset
from tcae.evaluation import DigitsJudge, FashionJudge, build_feature_network, frechet_distance
from tcae.evaluation import judges as jd
from tcae.evaluation.npz import save_samples_npz
from tcae.studies.stages import judge_samples


@pytest.fixture
def fashion_env(tmp_path, monkeypatch):
    """Tiny Fashion-MNIST idx files (24 train / 2 test images per class) and a private judge cache."""
    from test_fashion import make_fashion

    from tcae.data import fashion as fm

    make_fashion(tmp_path / "fm", per_class=24)
    monkeypatch.setenv(fm.ENV_FOLDER, str(tmp_path / "fm"))
    monkeypatch.setenv(jd.ENV_CACHE, str(tmp_path / "cache"))
    return tmp_path


def _uint8(ds, n=None) -> tuple[np.ndarray, np.ndarray]:
    items = [ds[i] for i in range(n or len(ds))]
    images = np.stack([((it["image"].permute(1, 2, 0).numpy() + 1) * 127.5).round() for it in items])
    return images.astype(np.uint8), np.array([it["label"] for it in items])


def test_digits_judge_is_sklearns_mlp():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    judge = DigitsJudge()
    d = load_digits()
    xtr, xva, ytr, yva = train_test_split(d.data, d.target, test_size=0.2, random_state=0, stratify=d.target)
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=600, random_state=0).fit(xtr, ytr)
    assert judge.accuracy == pytest.approx(clf.score(xva, yva)) and judge.accuracy > 0.9
    # 8x8 digits (0..16) blown up 4x with nearest neighbours, as [-1, 1] images: pooling gives them back
    x = torch.from_numpy(xva[:50].reshape(-1, 1, 8, 8) / 16.0).float()
    x = torch.nn.functional.interpolate(x, scale_factor=4, mode="nearest") * 2 - 1
    out = judge(x.expand(-1, 3, -1, -1))
    assert out["features"].shape == (50, 64) and out["logits"].shape == (50, 10)
    probs = torch.softmax(out["logits"].double(), 1).numpy()
    np.testing.assert_allclose(probs, clf.predict_proba(xva[:50]), atol=1e-5)
    hidden = np.maximum(xva[:50] @ clf.coefs_[0] + clf.intercepts_[0], 0)
    np.testing.assert_allclose(out["features"].numpy(), hidden, atol=1e-4)


def test_judge_names_and_labels():
    judge = build_feature_network("judge:digits")
    assert judge.metric_key("g") == "gfd_judge_digits" and judge.judges_labels and not judge.is_fid
    assert judge.metric_label("g") == "gFD-digits (penultimate features of the digits judge)"
    with pytest.raises(ValueError, match="unknown judge 'cifar'"):
        build_feature_network("judge:cifar")
    with pytest.raises(ValueError, match="unknown judge"):
        build_feature_network("judge:digits@/x")


def test_fashion_judge_trains_once_and_is_cached(fashion_env, monkeypatch):
    from tcae.data.fashion import load_fashion

    judge = build_feature_network("judge:fashion")
    assert isinstance(judge, FashionJudge) and judge.dim == 128
    info = judge.describe()
    data_hash = load_fashion()["hash"]
    path = FashionJudge.cache_path(data_hash)
    assert path.is_file() and info["file"] == str(path) and info["data_hash"] == data_hash
    assert info["train_images"] == 220 and 0.0 <= info["test_accuracy"] <= 1.0  # 240 minus the carved val
    assert judge.accuracy == info["test_accuracy"] and judge.accuracy_split == "builtin:fashion:test"
    # the reported accuracy is the judge's on the test split
    ds = build_dataset("builtin:fashion:test", 32, train=False)
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    pred = judge(x)["logits"].argmax(1).numpy()
    assert judge.accuracy == pytest.approx(float((pred == np.array([ds[i]["label"] for i in range(len(ds))])).mean()))

    def no_training(*a, **k):
        raise AssertionError("the cached judge was trained again")

    monkeypatch.setattr(jd, "train_fashion_cnn", no_training)
    again = build_feature_network("judge:fashion")
    assert torch.equal(again(x)["features"], judge(x)["features"])
    # an explicit file must fit the data
    other = fashion_env / "other"
    from test_fashion import make_fashion

    make_fashion(other, seed=5, per_class=24)
    with pytest.raises(ValueError, match="trained on other data"):
        FashionJudge.load_or_train(str(other), weights=path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FashionJudge.from_file(fashion_env / "nope.safetensors")
    with pytest.raises(ValueError, match="32x32"):
        judge(torch.zeros(1, 3, 28, 28))


def test_fashion_judge_through_eval_gen(fashion_env, capsys):
    """Samples = real test images with their labels: FD-fashion vs the test split is ~0, the class agreement is
    the judge's test accuracy; other samples: the FD of the judge's features computed by hand."""
    judge = build_feature_network("judge:fashion")
    test = build_dataset("builtin:fashion:test", 32, train=False)
    images, labels = _uint8(test)
    save_samples_npz(images, fashion_env / "real.npz", labels)
    out = fashion_env / "gen"
    assert cli(["eval-gen", "--samples", str(fashion_env / "real.npz"), "--ref", "builtin:fashion:test",
                "--feature-network", "judge:fashion", "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    res = json.loads((out / "eval_gen.json").read_text())
    assert res["feature_network"] == "judge:fashion" and "gfid" not in res["metrics"] and "is" not in res["metrics"]
    assert abs(res["metrics"]["gfd_judge_fashion"]) < 1e-6
    assert res["metrics"]["class_agreement"] == pytest.approx(judge.accuracy)
    assert res["labels"]["gfd_judge_fashion"].startswith("gFD-fashion") and res["judge"]["data_hash"]
    assert sum(res["per_class_total"].values()) == 20

    # other samples (train images, shuffled labels): the FD is that of the judge's features by hand
    train = build_dataset("builtin:fashion:train", 32, train=False)
    fake, fake_labels = _uint8(train, 60)
    rng = np.random.default_rng(0)
    fake_labels = rng.permutation(np.repeat(np.arange(10), 6))  # labels that are not the images' own, balanced
    save_samples_npz(fake, fashion_env / "fake.npz", fake_labels)
    assert cli(["eval-gen", "--samples", str(fashion_env / "fake.npz"), "--ref", "builtin:fashion:test",
                "--feature-network", "judge:fashion", "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    res = json.loads((out / "eval_gen.json").read_text())
    with torch.no_grad():
        f_fake = judge(torch.from_numpy(fake).permute(0, 3, 1, 2).float() / 127.5 - 1)
        f_real = judge(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1)["features"].double().numpy()
    ff = f_fake["features"].double().numpy()
    expected = frechet_distance(ff.mean(0), np.cov(ff, rowvar=False), f_real.mean(0), np.cov(f_real, rowvar=False))
    assert res["metrics"]["gfd_judge_fashion"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    agree = float((f_fake["logits"].argmax(1).numpy() == fake_labels).mean())
    assert res["metrics"]["class_agreement"] == pytest.approx(agree)
    # the pipeline's judging goes through the same code, and a reference cache gives the same numbers
    cache: dict = {}
    first = judge_samples(fake, fake_labels, judge, "builtin:fashion:test", 32, cache)
    again = judge_samples(fake, fake_labels, judge, "builtin:fashion:test", 32, cache)
    assert len(cache) == 1 and first["fd_judge"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert again["fd_judge"] == first["fd_judge"] and first["class_agreement"] == pytest.approx(agree)
    assert first["fd_name"] == "FD-fashion"


def test_eval_gen_weights_flag_mismatch_exits_2(fashion_env, capsys):
    save_samples_npz(np.zeros((4, 32, 32, 3), np.uint8), fashion_env / "s.npz", np.arange(4))
    assert cli(["eval-gen", "--samples", str(fashion_env / "s.npz"), "--ref", "builtin:fashion:test",
                "--feature-network", "judge:fashion", "--inception-weights", "/x.pth"]) == 2
    err = capsys.readouterr().err
    assert "--inception-weights is for the inception network" in err and "Traceback" not in err


def test_missing_fashion_data_through_eval_gen_exits_2(tmp_path, monkeypatch, capsys):
    from tcae.data import fashion as fm

    monkeypatch.delenv(fm.ENV_FOLDER, raising=False)
    monkeypatch.setenv(fm.ENV_DATA_ROOT, str(tmp_path / "empty"))
    monkeypatch.setattr(fm, "DEBIAN_FOLDER", tmp_path / "no-debian")
    monkeypatch.setenv(fm.ENV_NO_DOWNLOAD, "1")
    save_samples_npz(np.zeros((4, 32, 32, 3), np.uint8), tmp_path / "s.npz", np.arange(4))
    assert cli(["eval-gen", "--samples", str(tmp_path / "s.npz"), "--ref", "builtin:fashion:test",
                "--feature-network", "judge:fashion"]) == 2
    err = capsys.readouterr().err
    assert "Fashion-MNIST idx files" in err and "apt-get install dataset-fashion-mnist" in err
    assert fm.ENV_FOLDER in err and "Traceback" not in err


def test_fashion_judges_are_told_apart_by_their_weights(fashion_env):
    """Judges trained on two machines differ (float rounding): a judge's weights fingerprint goes into what it
    reports and into the evaluation folder's name, so values of two judges are never taken for one's."""
    from safetensors.torch import load_file, save_file

    from tcae.studies.cells import eval_dir_name, judge_label
    from tcae.studies.paper import DATA_SCALES

    judge = build_feature_network("judge:fashion")
    path = Path(judge.info["file"])
    state = load_file(str(path))
    assert judge.info["weights_sha256"] == jd.weights_fingerprint(state)
    assert jd.judge_identity(judge.describe()) == "weights:" + judge.info["weights_sha256"][:16]
    # the same metadata, one weight changed: another judge (another identity, another evaluation folder)
    nudged = {k: v.clone() for k, v in state.items()}
    name = sorted(nudged)[0]
    nudged[name].view(-1)[0] += 1e-3
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    save_file(nudged, str(fashion_env / "other-machine.safetensors"), metadata=meta)
    other = build_feature_network("judge:fashion", fashion_env / "other-machine.safetensors")
    assert other.info["weights_sha256"] != judge.info["weights_sha256"]
    assert jd.judge_identity(other.describe()) != jd.judge_identity(judge.describe())
    scale = DATA_SCALES[("tiny", "fashion")]
    assert eval_dir_name(scale, "test", judge_label(judge)) != eval_dir_name(scale, "test", judge_label(other))
    # results from before fingerprints: told apart by what their info says (accuracies differ between machines)
    legacy = {k: v for k, v in judge.describe().items() if k not in ("weights_sha256", "file")}
    assert jd.judge_identity(legacy).startswith("info:")
    assert jd.judge_identity({**legacy, "file": "/elsewhere", "train_seconds": 1.0}) == jd.judge_identity(legacy)
    assert jd.judge_identity({**legacy, "test_accuracy": legacy["test_accuracy"] + 5e-4}) != \
        jd.judge_identity(legacy)
    assert jd.judge_identity(None) is None
