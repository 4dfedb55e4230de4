"""One interface for every image tokenizer that tcae's tools run: TC-AE natively, diffusers
autoencoders through one adapter. Tools call :func:`load_tokenizer` with a spec string:

- a tcae model directory, a training run directory or a Hub repo id: :meth:`tcae.TCAE.from_pretrained`;
- ``diffusers:PATH_OR_HUB_ID``: a diffusers autoencoder folder (``config.json`` with ``_class_name``)
  or Hub repo, ``diffusers:owner/name/vae`` for a repo's sub-folder (a local pipeline folder's ``vae/``
  is found by itself). ``AutoencoderKL`` (the SD-VAE family), ``AutoencoderDC`` and any diffusers
  autoencoder whose ``encode`` returns ``.latent`` or ``.latent_dist`` become a
  :class:`DiffusersTokenizer`; a ``TCAEAutoencoder`` export (``tcae export-diffusers``) is the TC-AE it
  holds, the same weights and statistics.

What a tokenizer offers (:class:`Tokenizer`): ``encode`` (images (B, 3, H, W) in [-1, 1] -> raw latent
(B, c, H/f, W/f)), ``decode``, ``normalize``/``denormalize`` with its own latent scaling
(``latent_mean``/``latent_std``), ``config`` (``image_size``, ``in_channels``, ``latent_channels``,
``compression``, ``to_dict()``), ``check_image_size``, ``latent_shape``; and, where the model has encoder
tokens (TC-AE), ``encode_tokens``/``tokens_to_latent`` for the A1 linear probe of ``tcae diagnose``.

A diffusers autoencoder's raw latent is ``encode(x).latent`` or, for a KL autoencoder, the posterior's
mode (``latent_dist.mode()``: deterministic, as reconstruction metrics need). Its own scaling follows
diffusers' SD/SDXL pipelines: ``(z - shift_factor) * scaling_factor``, or with per-channel
``latents_mean``/``latents_std`` in its config ``(z - latents_mean) * scaling_factor / latents_std``;
as a per-channel affine map that is ``latent_mean`` = shift (or latents_mean) and ``latent_std`` =
1 / scaling_factor (or latents_std / scaling_factor). ``tcae cache-latents`` records it as the cache's
normalisation, so ``tcae train-dit`` trains on the latents a diffusers pipeline would feed its model.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

DIFFUSERS_PREFIX = "diffusers:"


@runtime_checkable
class Tokenizer(Protocol):
    """What tcae's tools need from an image tokenizer (a TCAE is one; so is a DiffusersTokenizer)."""

    config: Any  # image_size (int | None), in_channels, latent_channels, compression; to_dict()
    latent_mean: torch.Tensor  # (c,): normalize(z) = (z - latent_mean) / latent_std per channel
    latent_std: torch.Tensor

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...
    def decode(self, z: torch.Tensor) -> torch.Tensor: ...
    def normalize(self, z: torch.Tensor) -> torch.Tensor: ...
    def denormalize(self, z: torch.Tensor) -> torch.Tensor: ...
    def check_image_size(self, height: int, width: int | None = None) -> None: ...
    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]: ...


@runtime_checkable
class TrainableAutoencoder(Tokenizer, Protocol):
    """What `tcae train` / `tcae finetune-decoder` need of an autoencoder (a TCAE is one; so is a
    DiffusersTokenizer around an ``AutoencoderDC``): the trainer takes any model through this, nothing else.

    `encoder`: the modules `encode` uses (frozen in phase 2); `decoder_last_layer`: the weight the adaptive GAN
    weight differentiates; `has_tokens`: whether the encoder has a token sequence ([CLS] + patch tokens, with
    ``encode_tokens``/``tokens_to_latent``/``encoder.tokens``) for iBOT's heads; `set_latent_stats` stores the
    measured per-channel latent mean/std (c,) in the model's own convention; `save_pretrained` writes the
    exported model folder."""

    encoder: nn.Module
    has_tokens: bool
    latent_stats_count: Any

    @property
    def decoder_last_layer(self) -> torch.Tensor: ...
    @property
    def decoder_head(self) -> nn.Module: ...
    def describe(self) -> str: ...
    def set_latent_stats(self, mean: torch.Tensor, std: torch.Tensor, count: int = 1) -> None: ...
    def save_pretrained(self, directory: str | Path, card_info: dict | None = None) -> Any: ...


def is_diffusers_spec(spec: str) -> bool:
    return str(spec).startswith(DIFFUSERS_PREFIX)


def load_tokenizer(spec: str | Path, device: torch.device | str = "cpu") -> Tokenizer:
    """The tokenizer a spec names (module docstring: a model directory, a training run directory, a Hub
    repo id, or ``diffusers:PATH_OR_HUB_ID``), in eval mode on `device`. The one place tcae loads a
    tokenizer."""
    spec = str(spec)
    if is_diffusers_spec(spec):
        return load_diffusers_tokenizer(spec[len(DIFFUSERS_PREFIX):], source=spec).to(device).eval()
    folder = diffusers_folder(spec)
    if folder is not None:  # a DC-AE trained by tcae: its run directory or model/ holds a diffusers folder
        return load_diffusers_tokenizer(folder, source=f"{DIFFUSERS_PREFIX}{folder}").to(device).eval()
    from tcae.models import TCAE

    return TCAE.from_pretrained(spec).to(device).eval()


def diffusers_folder(spec: str | Path) -> str | None:
    """The diffusers autoencoder folder a local run or model directory holds (its config.json names a
    ``_class_name``: a DC-AE that `tcae train` exported), else None."""
    from tcae.models.checkpoint_io import resolve_run_dir

    path = Path(resolve_run_dir(str(spec)))
    config = path / "config.json"
    if not config.is_file():
        return None
    try:
        raw = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # TCAE.from_pretrained reports the damaged file
    return str(path) if isinstance(raw, dict) and raw.get("_class_name") else None


# ---------------------------------------------------------------------- diffusers autoencoders
@dataclass
class DiffusersTokenizerConfig:
    """What tcae knows of a diffusers autoencoder. `image_size`: its nominal (training) size, from
    ``config.sample_size`` (None when the config has none: pass an image size explicitly);
    `autoencoder`: its diffusers config (JSON types)."""

    source: str
    class_name: str
    image_size: int | None
    in_channels: int
    latent_channels: int
    compression: int
    latent_scaling: str
    autoencoder: dict

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))


class DiffusersTokenizer(nn.Module):
    """A diffusers autoencoder (``.autoencoder``) as a tcae :class:`Tokenizer` (module docstring)."""

    def __init__(self, autoencoder: nn.Module, source: str = "", image_size: int | None = None) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        cfg = dict(autoencoder.config)
        c = int(cfg["latent_channels"])
        size = cfg.get("sample_size") or image_size  # AutoencoderDC has no sample_size: tcae's model card's
        size = size[0] if isinstance(size, (list, tuple)) else size
        mean, std, how = _own_scaling(cfg, c)
        self.config = DiffusersTokenizerConfig(
            source=source, class_name=type(autoencoder).__name__, image_size=int(size) if size else None,
            in_channels=int(cfg.get("in_channels", 3)), latent_channels=c, compression=_compression(autoencoder),
            latent_scaling=how, autoencoder=json.loads(json.dumps(cfg, default=str)))
        self.register_buffer("latent_mean", mean, persistent=False)
        self.register_buffer("latent_std", std, persistent=False)

    has_latent_stats = True  # the autoencoder's own scaling (its config) is always defined
    has_tokens = False  # no token sequence: no iBOT heads, no A1 probe
    latent_stats_count = 0  # images the scaling was measured on by tcae (0: the config's own)

    @property
    def model_kind(self) -> str:
        return self.config.class_name

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> raw latent (B, c, H/f, W/f) (a KL posterior's mode)."""
        self.check_image_size(x.shape[-2], x.shape[-1])
        out = self.autoencoder.encode(x)
        dist = getattr(out, "latent_dist", None)
        return dist.mode() if dist is not None else out.latent

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latent (B, c, h, w) -> images (B, 3, h*f, w*f), roughly in [-1, 1] (not clamped)."""
        return self.autoencoder.decode(z).sample

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.latent_mean.view(1, -1, 1, 1)) / self.latent_std.view(1, -1, 1, 1)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.latent_std.view(1, -1, 1, 1) + self.latent_mean.view(1, -1, 1, 1)

    def check_image_size(self, height: int | None, width: int | None = None) -> None:
        if height is None:
            raise ValueError(f"{self.config.source or self.config.class_name} has no nominal image size "
                             "(no sample_size in its config): pass the image size (--image-size)")
        from tcae.models.tcae import check_divisible

        check_divisible(height, height if width is None else width, self.config.compression, "image size")

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        f = self.config.compression
        return self.config.latent_channels, height // f, width // f

    @property
    def encoder(self) -> nn.Module:
        """The modules `encode` depends on (the encoder and, for KL autoencoders, quant_conv): what
        fingerprints a latent cache (a view, not registered: the weights stay under `autoencoder.`)."""
        parts = [getattr(self.autoencoder, n, None) for n in ("encoder", "quant_conv")]
        return nn.ModuleList([m for m in parts if isinstance(m, nn.Module)])

    # ------------------------------------------------------------------ training (tcae.training.tokenizer)
    def describe(self) -> str:
        c = self.config
        params = sum(p.numel() for p in self.parameters()) / 1e6
        return f"{c.class_name} {c.source} f={c.compression} c={c.latent_channels} ({params:.1f}M params)"

    @property
    def decoder_head(self) -> nn.Module:
        """The decoder's highest-resolution stage and output layers (AutoencoderDC: ``up_blocks[0]``, applied
        last, ``norm_out``, ``conv_out``): DC-AE's "head", what `decoder_part=head` trains."""
        dec = self.autoencoder.decoder
        parts = [dec.up_blocks[0], getattr(dec, "norm_out", None), getattr(dec, "conv_out", None)]
        return nn.ModuleList([m for m in parts if isinstance(m, nn.Module)])

    @property
    def decoder_last_layer(self) -> torch.Tensor:
        """Weight of the decoder's last layer (the GAN loss's adaptive weight): its last matrix or kernel."""
        return [p for p in self.autoencoder.decoder.parameters() if p.ndim > 1][-1]

    @torch.no_grad()
    def set_latent_stats(self, mean: torch.Tensor, std: torch.Tensor, count: int = 1) -> None:
        """Store measured per-channel latent statistics (each (c,)) as the autoencoder's own convention, a
        single ``scaling_factor`` (DC-AE's, used by diffusers' pipelines as ``z * scaling_factor``, no shift):
        1 / the latent's RMS over all channels, so the scaled latent has unit second moment."""
        mean, std = torch.as_tensor(mean).float().flatten(), torch.as_tensor(std).float().flatten()
        c = self.config.latent_channels
        if mean.shape != (c,) or std.shape != (c,):
            raise ValueError(f"latent stats must have shape ({c},), got mean {tuple(mean.shape)}, "
                             f"std {tuple(std.shape)}")
        rms = float((std.pow(2) + mean.pow(2)).mean().sqrt())
        if not rms > 0:
            raise ValueError("the latent is zero everywhere: no scaling_factor can normalise it")
        self.autoencoder.register_to_config(scaling_factor=1.0 / rms)
        cfg = dict(self.autoencoder.config)
        new_mean, new_std, self.config.latent_scaling = _own_scaling(cfg, c)
        self.latent_mean.copy_(new_mean)
        self.latent_std.copy_(new_std)
        self.config.autoencoder = json.loads(json.dumps(cfg, default=str))
        self.latent_stats_count = int(count)

    def save_pretrained(self, directory: str | Path, card_info: dict | None = None) -> None:
        """`directory` as a diffusers model folder (config.json, diffusion_pytorch_model.safetensors: what
        ``AutoencoderDC.from_pretrained`` loads) plus tcae's model card (README.md: training data, steps, image
        size, read back by :func:`load_tokenizer` for the nominal image size)."""
        from huggingface_hub import ModelCard, ModelCardData

        from tcae.models.card import CARD_KEY, check_card_info

        directory = Path(directory)
        self.autoencoder.save_pretrained(str(directory))
        info = check_card_info({"image_size": self.config.image_size, **(card_info or {})})
        c, cls = self.config, self.config.class_name
        data = ModelCardData(library_name="diffusers", license="apache-2.0", tags=["tcae", cls.lower()],
                             **{CARD_KEY: info})
        body = (f"# {info.get('name') or cls}\n\nA diffusers `{cls}` (f={c.compression}, "
                f"c={c.latent_channels}) trained with `tcae train` on `{info.get('training_data', '?')}` for "
                f"{info.get('steps', '?')} steps at {info.get('image_size')} px.\n\n```python\n"
                f"from diffusers import {cls}\n\nae = {cls}.from_pretrained(\"{directory.name}\")\n```\n\n"
                f"```bash\ntcae eval --model {directory} --data images/\n```\n")
        ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}").save(directory / "README.md")


def _compression(ae: nn.Module) -> int:
    ratio = getattr(ae, "spatial_compression_ratio", None)  # AutoencoderDC, TCAEAutoencoder
    if ratio:
        return int(ratio)
    blocks = ae.config.get("block_out_channels")  # AutoencoderKL: one 2x downsample between blocks
    if blocks:
        return 2 ** (len(blocks) - 1)
    raise ValueError(f"cannot tell the spatial compression of {type(ae).__name__} (no spatial_compression_ratio, "
                     "no block_out_channels)")


def _own_scaling(cfg: dict, channels: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(latent_mean (c,), latent_std (c,), description) of a diffusers config's latent scaling."""
    sf = float(cfg.get("scaling_factor") or 1.0)
    if cfg.get("latents_mean") is not None and cfg.get("latents_std") is not None:
        mean = torch.tensor(cfg["latents_mean"], dtype=torch.float32).flatten()
        std = torch.tensor(cfg["latents_std"], dtype=torch.float32).flatten() / sf
        how = f"(z - latents_mean) * {sf:g} / latents_std"
    else:
        shift = float(cfg.get("shift_factor") or 0.0)
        mean, std = torch.full((channels,), shift), torch.full((channels,), 1.0 / sf)
        how = f"(z - {shift:g}) * {sf:g}" if shift else f"z * {sf:g}"
    if mean.numel() != channels or std.numel() != channels:
        raise ValueError(f"latents_mean/latents_std have {mean.numel()}/{std.numel()} values for {channels} "
                         "latent channels")
    return mean, std, how


def _resolve(target: str) -> tuple[str, str | None, dict]:
    """(local folder or Hub repo id, Hub sub-folder, config.json) of a diffusers model spec."""
    path = Path(target).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file() and (path / "vae" / "config.json").is_file():
            path = path / "vae"  # a saved pipeline: its autoencoder
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}/config.json not found: a diffusers model folder holds config.json "
                                    "and diffusion_pytorch_model.safetensors (save_pretrained)")
        return str(path), None, json.loads((path / "config.json").read_text())
    parts = target.split("/")
    if path.exists() or path.is_absolute() or target.startswith((".", "~")) or len(parts) < 2 or not all(parts):
        raise FileNotFoundError(f"diffusers model folder {target} not found (and it is not a Hub repo id "
                                "'owner/name[/subfolder]')")
    repo, sub = "/".join(parts[:2]), "/".join(parts[2:]) or None
    from huggingface_hub import hf_hub_download

    try:
        config = Path(hf_hub_download(repo, "config.json", subfolder=sub))
    except Exception as err:  # offline, unknown repo, no such file: all the same to the user
        raise FileNotFoundError(f"could not fetch config.json of Hub repo {repo}"
                                f"{f' (sub-folder {sub})' if sub else ''}: {type(err).__name__}: {err}") from None
    return repo, sub, json.loads(config.read_text())


def load_diffusers_autoencoder(target: str) -> nn.Module:
    """A diffusers autoencoder from a folder or Hub repo id (``owner/name[/subfolder]``), loaded with
    diffusers' own ``from_pretrained``, in eval mode."""
    try:
        import diffusers
    except ImportError:
        raise ValueError("diffusers is not installed: pip install 'tcae[diffusers]'") from None
    where, sub, config = _resolve(target)
    name = config.get("_class_name")
    if name == "TCAEAutoencoder":
        from tcae.integrations.diffusers import TCAEAutoencoder as cls
    else:
        cls = getattr(diffusers, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin) and hasattr(cls, "encode")
            and hasattr(cls, "decode")):
        raise ValueError(f"{target}: _class_name {name!r} is not a diffusers autoencoder (supported: AutoencoderKL, "
                         "AutoencoderDC, TCAEAutoencoder and other diffusers classes with encode/decode)")
    kwargs: dict[str, Any] = {"subfolder": sub} if sub else {}
    if importlib.util.find_spec("accelerate") is None:
        kwargs["low_cpu_mem_usage"] = False  # what diffusers falls back to anyway, minus its warning
    return cls.from_pretrained(where, **kwargs).eval()


def load_diffusers_tokenizer(target: str, source: str | None = None) -> Tokenizer:
    """``diffusers:TARGET`` as a tokenizer: a TCAEAutoencoder export as its TC-AE, any other autoencoder
    through :class:`DiffusersTokenizer` (a local folder's tcae model card gives the nominal image size
    where the diffusers config has no sample_size)."""
    ae = load_diffusers_autoencoder(target)
    if type(ae).__name__ == "TCAEAutoencoder":
        return ae.tcae.eval()
    from tcae.models.card import read_card_info

    size = read_card_info(Path(target).expanduser() / "README.md").get("image_size") \
        if Path(target).expanduser().is_dir() else None
    return DiffusersTokenizer(ae, source or f"{DIFFUSERS_PREFIX}{target}", image_size=size).eval()


def create_dcae(name: str, **overrides: Any) -> DiffusersTokenizer:
    """A freshly initialised DC-AE (diffusers ``AutoencoderDC``) from a preset of
    :data:`tcae.models.dcae.DCAE_PRESETS` with model.* overrides (image_size, latent_channels, in_channels), in
    train mode, as the tokenizer tcae trains."""
    try:
        from diffusers import AutoencoderDC
    except ImportError:
        raise ValueError(f"model.name={name} is a diffusers AutoencoderDC: pip install 'tcae[diffusers]'") from None
    from tcae.models.dcae import as_diffusers_kwargs, dcae_preset_config

    cfg = dcae_preset_config(name, **overrides)
    size = cfg.pop("sample_size")
    return DiffusersTokenizer(AutoencoderDC(**as_diffusers_kwargs(cfg)), source=name, image_size=size).train()
