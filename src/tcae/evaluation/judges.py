"""Judges: small classifiers of one data set's own classes that stand in for Inception on it.

A :class:`Judge` is a :class:`~tcae.evaluation.features.FeatureNetwork` (feature network name
``judge:<data>``), so ``tcae eval-gen --feature-network judge:fashion`` and ``tcae eval --metrics
fd:judge:fashion`` use it like any other network: the Fréchet distance in its penultimate features
("FD-fashion", key ``gfd_judge_fashion``; never called FID) and, because its logits are over the
data's own label ids (``judges_labels``), the class agreement of class-conditional samples (the
share the judge assigns to the class they were generated for).

- ``judge:digits``: :class:`DigitsJudge`, scikit-learn's MLP (64 ReLU units) on the 8x8 digits,
  fitted in a second on ``builtin:digits:train`` (scored on its val split); images are turned gray
  and area-downsampled to 8x8 first.
- ``judge:fashion`` (``judge:fashion@DIR`` for an explicit idx folder): :class:`FashionJudge`, a
  small CNN on the 32x32 padded Fashion-MNIST, trained once on ``builtin:fashion:train`` (seed 0,
  :data:`FASHION_EPOCHS` epochs, about two minutes of one CPU core) and cached as safetensors under
  ``$TCAE_CACHE_DIR/judges/`` (default ``~/.cache/tcae``), the file named and its metadata keyed
  by a hash of the data; its test-split accuracy is logged and kept in the metadata.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tcae.evaluation.features import FeatureNetwork, MissingWeightsError
from tcae.util import atomic_path, file_lock

logger = logging.getLogger(__name__)

FASHION_ARCH = "fashion-cnn-v1"
FASHION_EPOCHS = 3
FASHION_BATCH = 128
FASHION_LR = 3e-3
ENV_CACHE = "TCAE_CACHE_DIR"


def judge_dir() -> Path:
    """Where trained judges are cached: ``$TCAE_CACHE_DIR/judges`` (default ``~/.cache/tcae/judges``)."""
    return Path(os.environ.get(ENV_CACHE) or "~/.cache/tcae").expanduser() / "judges"


class Judge(FeatureNetwork):
    """A classifier of one data set's classes: images (B, C, H, W) in [-1, 1] (C 1 or 3; colour is
    averaged to gray) -> {"features": (B, D) penultimate activations, "logits": (B, K) over the
    data's label ids}.

    Attributes: ``data`` (the data set's name), ``num_classes`` (K), ``accuracy`` (held-out accuracy
    of the judge, in [0, 1]) and ``accuracy_split`` (where it was measured), ``info`` (JSON-ready
    provenance: training data hash, seed, epochs, ...).
    """

    kind = "judge"
    judges_labels = True
    data: str = ""
    num_classes: int = 0
    accuracy: float = float("nan")
    accuracy_split: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.info: dict[str, Any] = {}

    @property
    def label(self) -> str:  # type: ignore[override]
        return f"FD-{self.data} (penultimate features of the {self.data} judge)"

    def describe(self) -> dict[str, Any]:
        """What a report needs to say about the judge."""
        return {"network": self.name, "accuracy": self.accuracy, "accuracy_split": self.accuracy_split, **self.info}

    def net_forward(self, gray: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, H, W) gray in [-1, 1] -> (features, logits)."""
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"the {self.data} judge takes images (B, 1 or 3, H, W), got shape {tuple(x.shape)}")
        feats, logits = self.net_forward(x.float().clamp(-1, 1).mean(1, keepdim=True))
        return {"features": feats.float(), "logits": logits.float()}


# ---------------------------------------------------------------------------- digits
class DigitsJudge(Judge):
    """scikit-learn's ``MLPClassifier(hidden_layer_sizes=(64,))`` on the 8x8 digits (0..16), as torch
    layers; fitted on ``builtin:digits:train`` (the stratified 80% of scikit-learn's digits), scored
    on ``builtin:digits:val``. Images are area-downsampled to 8x8 and scaled to 0..16 first."""

    data, num_classes, dim, accuracy_split = "digits", 10, 64, "builtin:digits:val"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        from sklearn.neural_network import MLPClassifier

        d = load_digits()  # the split of builtin:digits (tcae.data.builtin)
        xtr, xva, ytr, yva = train_test_split(d.data, d.target, test_size=0.2, random_state=0, stratify=d.target)
        clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=600, random_state=seed).fit(xtr, ytr)
        self.hidden, self.out = nn.Linear(64, 64), nn.Linear(64, 10)
        with torch.no_grad():
            for layer, w, b in ((self.hidden, clf.coefs_[0], clf.intercepts_[0]),
                                (self.out, clf.coefs_[1], clf.intercepts_[1])):
                layer.weight.copy_(torch.from_numpy(w.T.copy()))
                layer.bias.copy_(torch.from_numpy(b.copy()))
        self.requires_grad_(False).eval()
        self.name = "judge:digits"
        self.accuracy = float(clf.score(xva, yva))
        self.info = {"arch": "sklearn MLP 64-64-10", "seed": seed, "trained_on": "builtin:digits:train"}

    @staticmethod
    def to_digits_space(gray: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) in [-1, 1] -> (B, 64) on the digits' 0..16 scale (area-downsampled to 8x8)."""
        return (F.adaptive_avg_pool2d((gray + 1) / 2, 8).flatten(1) * 16).float()

    def net_forward(self, gray: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.hidden(self.to_digits_space(gray)))
        return h, self.out(h)


# ---------------------------------------------------------------------------- fashion
class FashionCNN(nn.Module):
    """(B, 1, 32, 32) in [-1, 1] -> 128 penultimate features -> 10 logits: three conv-BN-ReLU-pool
    stages (16, 32, 64 channels; 32 -> 16 -> 8 -> 4) and a 1024 -> 128 ReLU layer."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in ((1, 16), (16, 32), (32, 64)):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Linear(64 * 4 * 4, 128)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = F.relu(self.fc(self.conv(x).flatten(1)))
        return feats, self.head(self.drop(feats))


def _fashion_arrays(root: str | None, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 1, 32, 32) in [-1, 1], labels (N,) int64) of a Fashion-MNIST split."""
    from tcae.data.fashion import FashionMNISTDataset

    ds = FashionMNISTDataset(split, 32, root=root)
    x = torch.from_numpy(ds.images[ds.indices]).float() / 127.5 - 1.0
    return F.pad(x, (2, 2, 2, 2), value=-1.0)[:, None], torch.from_numpy(ds.labels[ds.indices])


@torch.no_grad()
def _accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    net.eval()
    pred = torch.cat([net(x[i:i + batch])[1].argmax(1) for i in range(0, len(x), batch)])
    return float((pred == y).float().mean())


def train_fashion_cnn(root: str | None = None, seed: int = 0, epochs: int = FASHION_EPOCHS
                      ) -> tuple[FashionCNN, dict[str, Any]]:
    """Train :class:`FashionCNN` on ``builtin:fashion:train`` (AdamW, one-cycle lr, batch 128, epochs
    over a seeded permutation); returns it (eval mode) and its accuracies on val and test."""
    from tcae.data.fashion import load_fashion

    xtr, ytr = _fashion_arrays(root, "train")
    torch.manual_seed(seed)
    net = FashionCNN()
    per_epoch = -(-len(xtr) // FASHION_BATCH)
    opt = torch.optim.AdamW(net.parameters(), FASHION_LR, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, FASHION_LR, total_steps=epochs * per_epoch)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(xtr), generator=gen)
        for i in range(per_epoch):
            b = order[i * FASHION_BATCH:(i + 1) * FASHION_BATCH]
            loss = F.cross_entropy(net(xtr[b])[1], ytr[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        logger.info("fashion judge: epoch %d/%d, loss %.4f, %.0f s", epoch + 1, epochs, float(loss.detach()),
                    time.perf_counter() - t0)
    info = {"arch": FASHION_ARCH, "seed": seed, "epochs": epochs, "train_images": len(xtr),
            "train_seconds": round(time.perf_counter() - t0, 1), "data_hash": load_fashion(root)["hash"],
            "trained_on": "builtin:fashion:train"}
    for split in ("val", "test"):
        info[f"{split}_accuracy"] = _accuracy(net, *_fashion_arrays(root, split))
    return net.eval(), info


class FashionJudge(Judge):
    """:class:`FashionCNN` trained on Fashion-MNIST's train split; accuracy on its test split. Takes
    32x32 images (the padded size)."""

    data, num_classes, dim = "fashion", 10, 128
    accuracy_split = "builtin:fashion:test"

    def __init__(self, net: FashionCNN, info: dict[str, Any]) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.name = "judge:fashion"
        self.info = dict(info)
        self.accuracy = float(info["test_accuracy"])

    def net_forward(self, gray: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if gray.shape[-2:] != (32, 32):
            raise ValueError(f"the fashion judge takes 32x32 images (Fashion-MNIST padded), got "
                             f"{gray.shape[-2]}x{gray.shape[-1]}")
        return self.net(gray)

    @staticmethod
    def cache_path(data_hash: str, seed: int = 0, epochs: int = FASHION_EPOCHS) -> Path:
        return judge_dir() / f"{FASHION_ARCH}-e{epochs}-s{seed}-{data_hash[:16]}.safetensors"

    @classmethod
    def from_file(cls, path: str | os.PathLike, data_hash: str | None = None) -> FashionJudge:
        """Load a judge file; with ``data_hash`` it must have been trained on that data."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(path).expanduser()
        if not path.is_file():
            raise MissingWeightsError(f"fashion judge file {str(path)!r} does not exist")
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        info = json.loads(meta.get("info", "{}"))
        if info.get("arch") != FASHION_ARCH:
            raise ValueError(f"{path} is not a {FASHION_ARCH} judge (metadata arch: {info.get('arch')!r})")
        if data_hash is not None and info.get("data_hash") != data_hash:
            raise ValueError(f"fashion judge {path} was trained on other data (hash {info.get('data_hash')}, "
                             f"this data {data_hash}); delete it or pass the matching data folder")
        net = FashionCNN()
        state = load_file(str(path))
        net.load_state_dict(state)
        # a judge is trained on the machine that first needs it, and float rounding differs between CPUs: two
        # machines' judges differ (FD-fashion by 5-11% on the same samples), so results name the weights they used
        info["weights_sha256"] = weights_fingerprint(state)
        return cls(net, info)

    @classmethod
    def load_or_train(cls, root: str | None = None, weights: str | os.PathLike | None = None, seed: int = 0,
                      epochs: int = FASHION_EPOCHS) -> FashionJudge:
        """The cached judge of this data (trained and cached first if there is none); ``weights``: an
        explicit judge file instead of the cache."""
        from tcae.data.fashion import load_fashion

        data_hash = load_fashion(root)["hash"]
        if weights is not None:
            return cls.from_file(weights, data_hash)
        path = cls.cache_path(data_hash, seed, epochs)
        path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(path.with_suffix(".lock")):  # concurrent runs train it once
            if not path.is_file():
                logger.info("training the fashion judge (once; cached at %s)", path)
                net, info = train_fashion_cnn(root, seed, epochs)
                _save_atomic(net, info, path)
                logger.info("fashion judge: test accuracy %.4f, val accuracy %.4f (%s s)", info["test_accuracy"],
                            info["val_accuracy"], info["train_seconds"])
                if info["test_accuracy"] < 0.9 and info["train_images"] >= 50000:
                    logger.warning("the fashion judge's test accuracy %.4f is below 0.90", info["test_accuracy"])
            judge = cls.from_file(path, data_hash)
        judge.info["file"] = str(path)
        return judge


def weights_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's tensors (names, dtypes, shapes, values): equal fingerprints, the same network."""
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def judge_identity(info: dict[str, Any] | None) -> str | None:
    """Which network measured a result, from the judge info it records (``describe()``): its weights'
    fingerprint, or for results from before fingerprints were recorded, a hash of what the info says of
    the training run and its accuracies (two machines' judges differ in their accuracies' last digits)."""
    if not info:
        return None
    if info.get("weights_sha256"):
        return "weights:" + info["weights_sha256"][:16]
    keys = ("network", "arch", "data_hash", "seed", "epochs", "test_accuracy", "val_accuracy", "accuracy")
    blob = json.dumps({k: info.get(k) for k in keys}, sort_keys=True)
    return "info:" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def _save_atomic(net: nn.Module, info: dict[str, Any], path: Path) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp),
                  metadata={"info": json.dumps(info)})


# ---------------------------------------------------------------------------- registry
JUDGES = ("digits", "fashion")


def _parse_judge(arg: str) -> tuple[str, str | None]:
    data, _, root = arg.partition("@")
    if data not in JUDGES or (root and data != "fashion"):
        raise ValueError(f"unknown judge {arg!r}; expected one of {', '.join(JUDGES)} (fashion@DIR for an "
                         "explicit idx folder)")
    return data, root or None


def judge_weights_path(arg: str, weights: str | os.PathLike | None = None) -> Path:
    """The file a judge loads: ``weights``, else the cache file of the data's judge (which may not
    exist yet: judges are trained on first use, so this never raises MissingWeightsError for a
    missing cache file). The digits judge has no file (fitted in a second): its data's module."""
    data, root = _parse_judge(arg)
    if weights is not None:
        return Path(weights).expanduser()
    if data == "digits":
        from sklearn import datasets

        return Path(datasets.__file__)
    from tcae.data.fashion import load_fashion

    return FashionJudge.cache_path(load_fashion(root)["hash"])


def build_judge(arg: str, weights: str | os.PathLike | None = None) -> Judge:
    """``"digits"`` or ``"fashion[@DIR]"`` -> the judge (see the module docstring)."""
    data, root = _parse_judge(arg)
    if data == "digits":
        if weights is not None:
            raise ValueError("the digits judge is fitted on the fly and takes no weights file")
        return DigitsJudge()
    return FashionJudge.load_or_train(root, weights)


def judge_for_data(spec: str) -> str | None:
    """The judge network name for a data spec (``judge:digits``, ``judge:fashion[@DIR]``), or None."""
    from tcae.data import parse_spec

    parsed = parse_spec(spec)
    if parsed.kind == "digits":
        return "judge:digits"
    if parsed.kind == "fashion":
        return "judge:fashion" + (f"@{parsed.root}" if parsed.root else "")
    return None


def class_agreement(logits: torch.Tensor, labels: np.ndarray | torch.Tensor) -> dict[str, Any]:
    """Share of samples whose argmax class equals their label, overall and per class (counts)."""
    pred = logits.argmax(1).cpu().numpy()
    labels = np.asarray(labels).astype(np.int64)
    classes = np.unique(labels)
    return {"class_agreement": float((pred == labels).mean()),
            "class_agreement_per_class": {int(c): int(((pred == c) & (labels == c)).sum()) for c in classes},
            "per_class_total": {int(c): int((labels == c).sum()) for c in classes}}
