"""A TC-AE as a diffusers autoencoder: ``TCAEAutoencoder`` follows ``AutoencoderDC``'s interface.

    from tcae.integrations.diffusers import TCAEAutoencoder

    vae = TCAEAutoencoder.from_pretrained("export/")          # diffusers' own loader
    z = vae.encode(x).latent                                 # x (B, 3, H, W) in [-1, 1] -> (B, c, H/f, W/f)
    x_hat = vae.decode(z).sample                             # -> (B, 3, H, W)

It is a diffusers ``ModelMixin`` + ``ConfigMixin``: ``save_pretrained`` writes diffusers' layout
(``config.json`` with ``_class_name``, ``diffusion_pytorch_model.safetensors``), ``from_pretrained`` is
diffusers' loader, ``dtype``/``device``/``to`` are ModelMixin's, and it can be the ``vae`` of a diffusers
pipeline. It holds a :class:`tcae.TCAE` (``.tcae``) and only calls its public API (``encode``,
``decode``, ``config``, latent statistics, ``state_dict``), so its outputs equal tcae's bit for bit
(without tiling). Its config is the TCAEConfig fields plus the latent scaling, plus keys derived from them:
``encoder_block_out_channels`` / ``decoder_block_out_channels`` (SANA pipelines take ``2 ** (len - 1)`` as
the spatial factor f) and ``auto_map`` (``diffusers.AutoModel.from_pretrained(folder,
trust_remote_code=True)`` imports the class through the ``tcae_autoencoder.py`` that ``save_pretrained``
writes). ``enable_gradient_checkpointing`` switches TC-AE's own checkpointing; ``device_map="auto"`` keeps
encoder and decoder whole; the latent statistics stay float32 under any ``torch_dtype`` or ``.to(dtype)``.

Latent scaling (from the TC-AE's per-channel statistics, ``tcae diagnose --write-stats`` /
``cache-latents``):

- ``latents_mean``, ``latents_std`` (c floats each): per-channel statistics of the raw latent. A
  pipeline that standardises per channel computes ``(z - latents_mean) / latents_std`` for the diffusion
  model and ``z = z_n * latents_std + latents_mean`` before ``decode`` (what ``tcae train-dit`` /
  ``tcae sample`` do; ``TCAE.normalize``/``denormalize``).
- ``scaling_factor``: 1 / RMS of the raw latent over all channels (DC-AE's convention), for pipelines
  that only scale: ``z * scaling_factor`` into the diffusion model, ``z / scaling_factor`` before
  ``decode`` (DiTPipeline, SANA). Note SDXL-style pipelines that read ``latents_mean``/``latents_std`` also
  multiply by ``scaling_factor``: ``(z - mean) * scaling_factor / std``; the standardised latent is then
  scaled by ``scaling_factor`` again.
- Without measured statistics: ``scaling_factor = 1`` and ``latents_mean = latents_std = None``.

Tiling (``enable_tiling``): the image is cut into overlapping tiles (default: the training size
``config.image_size``, 1/4 overlap), each encoded on its own, and the latent tiles are blended with
linear ramps across each overlap (weights normalised to sum to 1); decoding does the same on latent
tiles with ramps in pixel space. Tiles start on multiples of the compression ``f`` and are spaced evenly,
so every tile is full size and no padding is ever encoded. A ViT encoder sees only its tile: tiled
latents differ from untiled ones wherever global attention would have looked beyond the tile, which
is why tiles default to the size the model was trained at. Memory is one tile's activations plus the
output, whatever the image size.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, EncoderOutput
from diffusers.utils.accelerate_utils import apply_forward_hook

from tcae.models.tcae import TCAE, TCAEConfig
from tcae.models.tiling import blend_tiles, ramp, tile_starts  # noqa: F401 (ramp, tile_starts: re-exported)
from tcae.util import write_text_atomic

_D = TCAEConfig()  # the defaults of every TCAEConfig field

# The TC-AE's latent statistics buffers, and the dtypes they keep under any cast of the weights.
_STATS_DTYPES = {"latent_mean": torch.float32, "latent_std": torch.float32, "latent_stats_count": torch.float64}
# Written beside config.json by save_pretrained and named by its ``auto_map``, so that
# ``diffusers.AutoModel.from_pretrained(folder, trust_remote_code=True)`` finds the class: the "remote code"
# is one import from the installed tcae.
AUTO_MODEL_MODULE = "tcae_autoencoder"
_AUTO_MODEL_SOURCE = '''"""Lets diffusers.AutoModel.from_pretrained(<this folder>, trust_remote_code=True) load this
TC-AE export. The class is the installed tcae's (pip install 'tcae[diffusers]')."""

from tcae.integrations.diffusers import TCAEAutoencoder

__all__ = ["TCAEAutoencoder"]
'''
# config keys computed from the others (what SANA pipelines read, AutoModel's hint): recomputed on load
_DERIVED_CONFIG_KEYS = ("encoder_block_out_channels", "decoder_block_out_channels", "auto_map")


def sana_block_out_channels(config: TCAEConfig) -> list[int] | None:
    """AutoencoderDC's ``encoder_block_out_channels`` for a TC-AE: one entry per 2x downsampling plus one,
    so that ``2 ** (len(...) - 1)`` (how SANA pipelines compute the spatial factor) is the compression f.
    Entries: the fine width up to the patch grid, the coarse width after it, the latent channels last (the
    pipelines read only the length). None when f is not a power of 2: no such list exists."""
    f = config.compression
    if f & (f - 1):
        return None
    widths = [config.fine_width if 2 ** k < config.patch_size else config.coarse_width
              for k in range(f.bit_length() - 1)]
    return widths + [config.latent_channels]


def latent_scaling(model: TCAE) -> dict:
    """The diffusers latent-scaling config of a TC-AE: ``scaling_factor`` (1 / RMS of the raw latent),
    ``latents_mean`` and ``latents_std`` (per-channel lists); 1.0 / None / None without statistics."""
    if not model.has_latent_stats:
        return {"scaling_factor": 1.0, "latents_mean": None, "latents_std": None}
    mean, std = model.latent_mean.detach().cpu(), model.latent_std.detach().cpu()
    rms = float((std.double() ** 2 + mean.double() ** 2).mean().sqrt())
    return {"scaling_factor": 1.0 / rms, "latents_mean": mean.float().tolist(), "latents_std": std.float().tolist()}


class TCAEAutoencoder(ModelMixin, ConfigMixin):
    r"""A TC-AE tokenizer (ViT autoencoder with staged token compression) with diffusers' autoencoder
    interface (that of ``AutoencoderDC``).

    Parameters: every field of :class:`tcae.TCAEConfig` (same names, same defaults), then
        scaling_factor (`float`, defaults to 1.0): 1 / RMS of the raw latents (module docstring).
        latents_mean (`list[float]`, *optional*): per-channel mean of the raw latents (c values).
        latents_std (`list[float]`, *optional*): per-channel std of the raw latents (c values).

    ``encode``: float (B, 3, H, W) in [-1, 1], H and W divisible by ``spatial_compression_ratio`` (f)
    -> ``EncoderOutput(latent=(B, c, H/f, W/f))``. ``decode``: (B, c, h, w) ->
    ``DecoderOutput(sample=(B, 3, h*f, w*f))``, roughly in [-1, 1] (not clamped).
    """

    # TC-AE's own checkpointing (torch.utils.checkpoint around each transformer block), switched by
    # enable_gradient_checkpointing / disable_gradient_checkpointing
    _supports_gradient_checkpointing = True
    # device_map="auto" keeps the encoder and the decoder each on one device: a transformer block adds its
    # input to its attention / MLP outputs and the encoder mixes its own cls / mask tokens into its
    # submodules' outputs, so neither may be cut across devices.
    _no_split_modules = ["TCAEEncoder", "TCAEDecoder"]
    # diffusers copies the loaded weights into the module's own memory instead of assigning the tensors of
    # the safetensors file mapping, which are not 64-byte aligned: CPU kernels round differently (1 ulp) on
    # misaligned weights, and the outputs would no longer equal a TCAE loaded by tcae bit for bit. (With
    # accelerate installed, from_pretrained's default low_cpu_mem_usage=True path assigns them anyway:
    # pass low_cpu_mem_usage=False where bit-equality matters.)
    _supports_param_buffer_assignment = False

    @register_to_config
    def __init__(
        self,
        image_size: int = _D.image_size,
        in_channels: int = _D.in_channels,
        patch_size: int = _D.patch_size,
        compression: int = _D.compression,
        latent_channels: int = _D.latent_channels,
        staged: bool = _D.staged,
        fine_width: int = _D.fine_width,
        coarse_width: int = _D.coarse_width,
        fine_depth: int = _D.fine_depth,
        coarse_depth: int = _D.coarse_depth,
        decoder_fine_depth: int | None = _D.decoder_fine_depth,
        decoder_coarse_depth: int | None = _D.decoder_coarse_depth,
        head_dim: int = _D.head_dim,
        mlp_ratio: float = _D.mlp_ratio,
        mlp: str = _D.mlp,
        norm: str = _D.norm,
        qk_norm: bool = _D.qk_norm,
        rope_theta: float = _D.rope_theta,
        bottleneck_hidden: int | None = _D.bottleneck_hidden,
        grad_checkpointing: bool = _D.grad_checkpointing,
        scaling_factor: float = 1.0,
        latents_mean: Sequence[float] | None = None,
        latents_std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.tcae = TCAE(TCAEConfig(
            image_size=image_size, in_channels=in_channels, patch_size=patch_size, compression=compression,
            latent_channels=latent_channels, staged=staged, fine_width=fine_width, coarse_width=coarse_width,
            fine_depth=fine_depth, coarse_depth=coarse_depth, decoder_fine_depth=decoder_fine_depth,
            decoder_coarse_depth=decoder_coarse_depth, head_dim=head_dim, mlp_ratio=mlp_ratio, mlp=mlp, norm=norm,
            qk_norm=qk_norm, rope_theta=rope_theta, bottleneck_hidden=bottleneck_hidden,
            grad_checkpointing=grad_checkpointing))
        if (latents_mean is None) != (latents_std is None):
            raise ValueError("latents_mean and latents_std must be given together")
        self._stats_to_own_dtypes()  # built under from_pretrained(torch_dtype=...)'s default dtype
        if latents_mean is not None:  # the weights file holds the same values in the TC-AE's buffers
            self.tcae.set_latent_stats(torch.tensor(latents_mean, dtype=torch.float32),
                                       torch.tensor(latents_std, dtype=torch.float32))
        # what SANA pipelines read (spatial factor 2 ** (len - 1) = f), and diffusers.AutoModel's hint
        blocks = sana_block_out_channels(self.tcae.config)
        if blocks is not None:
            self.register_to_config(encoder_block_out_channels=blocks, decoder_block_out_channels=blocks)
        self.register_to_config(auto_map={"AutoModel": f"{AUTO_MODEL_MODULE}.{type(self).__name__}"})
        self.spatial_compression_ratio = compression
        self.use_slicing = False
        self.use_tiling = False
        self._set_tiles(image_size, image_size, None, None)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_tcae(cls, model: TCAE) -> TCAEAutoencoder:
        """Wrap a copy of `model`'s weights (and latent statistics) in a TCAEAutoencoder."""
        ae = cls(**model.config.to_dict(), **latent_scaling(model))
        ae.tcae.load_state_dict(model.state_dict())
        p = next(model.parameters())
        ae = ae.to(p.device)
        return ae if p.dtype == torch.float32 else ae.to(p.dtype)

    def set_latent_stats(self, mean: torch.Tensor, std: torch.Tensor, count: int = 1) -> None:
        """Store per-channel latent statistics (each (c,)) in the TC-AE and the config's scaling."""
        self.tcae.set_latent_stats(mean, std, count)
        self.register_to_config(**latent_scaling(self.tcae))

    # ------------------------------------------------------------------ diffusers loading / saving
    @classmethod
    def extract_init_dict(cls, config_dict: dict, **kwargs):  # noqa: ANN206 (diffusers' signature)
        # __init__ recomputes the derived keys; dropping them here keeps diffusers from warning that they
        # "are not expected and will be ignored"
        config_dict = {k: v for k, v in config_dict.items() if k not in _DERIVED_CONFIG_KEYS}
        return super().extract_init_dict(config_dict, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):  # noqa: ANN206
        """diffusers' ``ModelMixin.from_pretrained`` (all its arguments), then two repairs of what its
        accelerate path (``low_cpu_mem_usage=True``, ``device_map``) does: it casts every float tensor to
        ``torch_dtype``, the latent statistics included, and keeps the tensors of the safetensors mapping,
        which are not 64-byte aligned (CPU kernels then round 1 ulp differently from a TCAE loaded by tcae).
        The statistics are set back to the config's fp32 values, misaligned CPU tensors copied to aligned
        memory."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True
        model._repair_after_load()
        return loaded

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """diffusers' ``save_pretrained``, plus the one-import module that ``config.json``'s ``auto_map``
        names (for ``diffusers.AutoModel.from_pretrained(folder, trust_remote_code=True)``)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if os.path.isdir(save_directory):  # diffusers logs an error and writes nothing for a file path
            write_text_atomic(Path(save_directory) / f"{AUTO_MODEL_MODULE}.py", _AUTO_MODEL_SOURCE)

    # ------------------------------------------------------------------ dtypes of the latent statistics
    def _stats_to_own_dtypes(self) -> None:
        """Latent mean / std to float32, the count to float64 (each value kept)."""
        for name, dtype in _STATS_DTYPES.items():
            buf = getattr(self.tcae, name)
            if buf.dtype != dtype and buf.device.type != "meta":
                setattr(self.tcae, name, buf.to(dtype))

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> TCAEAutoencoder:
        # .to(dtype) / .half() / .bfloat16() cast the weights only: the statistics keep their fp32 values
        # (the config's latents_mean / latents_std), so a latent is normalised the same way at any dtype
        before = {name: getattr(self.tcae, name) for name in _STATS_DTYPES}
        super()._apply(fn, recurse)
        for name, old in before.items():
            new = getattr(self.tcae, name)
            if new.dtype != old.dtype and old.device.type != "meta":
                setattr(self.tcae, name, old.to(new.device))
        return self

    def _repair_after_load(self) -> None:
        if self.config.latents_mean is not None:
            device = self.tcae.latent_mean.device
            self.tcae.latent_mean = torch.tensor(self.config.latents_mean, dtype=torch.float32, device=device)
            self.tcae.latent_std = torch.tensor(self.config.latents_std, dtype=torch.float32, device=device)
        self._stats_to_own_dtypes()
        for t in (*self.parameters(), *self.buffers()):
            if t.device.type == "cpu" and t.data_ptr() % 64:
                t.data = t.data.clone()

    # ------------------------------------------------------------------ gradient checkpointing
    def enable_gradient_checkpointing(self, gradient_checkpointing_func: Callable | None = None) -> None:
        """Switch on TC-AE's own gradient checkpointing: each transformer block's activations are recomputed
        in backward (``torch.utils.checkpoint``, non-reentrant), in training mode with grad enabled."""
        if gradient_checkpointing_func is not None:
            raise ValueError("TCAEAutoencoder checkpoints each transformer block with torch.utils.checkpoint; "
                             "a custom gradient_checkpointing_func is not supported")
        self.tcae.set_grad_checkpointing(True)

    def disable_gradient_checkpointing(self) -> None:
        self.tcae.set_grad_checkpointing(False)

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func: Callable | None = None
                                    ) -> None:
        self.tcae.set_grad_checkpointing(enable)

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(m, "grad_checkpointing", False) for m in self.tcae.modules())

    # ------------------------------------------------------------------ slicing / tiling switches
    def enable_slicing(self) -> None:
        """Encode/decode a batch one image at a time (less memory for large batches)."""
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    def enable_tiling(
        self,
        tile_sample_min_height: int | None = None,
        tile_sample_min_width: int | None = None,
        tile_sample_stride_height: int | None = None,
        tile_sample_stride_width: int | None = None,
    ) -> None:
        """Encode/decode images larger than a tile in overlapping, blended tiles (module docstring).

        tile_sample_min_height/width: tile size in pixels (default ``config.image_size``, the training
        size); tile_sample_stride_height/width: the largest distance between tile starts (default: tile
        minus a quarter, at least f of overlap). All multiples of f; a stride equal to the tile size
        gives abutting tiles without blending.
        """
        self.use_tiling = True
        self._set_tiles(tile_sample_min_height or self.tile_sample_min_height,
                        tile_sample_min_width or self.tile_sample_min_width,
                        tile_sample_stride_height, tile_sample_stride_width)

    def disable_tiling(self) -> None:
        self.use_tiling = False

    def _set_tiles(self, tile_h: int, tile_w: int, stride_h: int | None, stride_w: int | None) -> None:
        f = self.spatial_compression_ratio

        def default_stride(tile: int) -> int:
            overlap = min(max(f, tile // 4 // f * f), tile // 2 // f * f)
            return tile - overlap

        stride_h = stride_h or default_stride(tile_h)
        stride_w = stride_w or default_stride(tile_w)
        for name, v in (("tile_sample_min_height", tile_h), ("tile_sample_min_width", tile_w),
                        ("tile_sample_stride_height", stride_h), ("tile_sample_stride_width", stride_w)):
            if v <= 0 or v % f:
                raise ValueError(f"{name}={v} must be a positive multiple of the compression f={f}")
        if stride_h > tile_h or stride_w > tile_w:
            raise ValueError(f"tile strides ({stride_h}, {stride_w}) must not exceed the tile size "
                             f"({tile_h}, {tile_w}): tiles would leave gaps")
        self.tile_sample_min_height, self.tile_sample_min_width = tile_h, tile_w
        self.tile_sample_stride_height, self.tile_sample_stride_width = stride_h, stride_w
        self.tile_latent_min_height, self.tile_latent_min_width = tile_h // f, tile_w // f

    # ------------------------------------------------------------------ encode / decode
    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_tiling and (x.shape[-2] > self.tile_sample_min_height or x.shape[-1] > self.tile_sample_min_width):
            return self.tiled_encode(x, return_dict=False)[0]
        return self.tcae.encode(x)

    @apply_forward_hook
    def encode(self, x: torch.Tensor, return_dict: bool = True) -> EncoderOutput | tuple[torch.Tensor]:
        """Images (B, 3, H, W) in [-1, 1] -> ``EncoderOutput(latent=(B, c, H/f, W/f))`` (raw latent)."""
        if self.use_slicing and x.shape[0] > 1:
            z = torch.cat([self._encode(s) for s in x.split(1)])
        else:
            z = self._encode(x)
        return EncoderOutput(latent=z) if return_dict else (z,)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.use_tiling and (z.shape[-2] > self.tile_latent_min_height or z.shape[-1] > self.tile_latent_min_width):
            return self.tiled_decode(z, return_dict=False)[0]
        return self.tcae.decode(z)

    @apply_forward_hook
    def decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple[torch.Tensor]:
        """Raw latent (B, c, h, w) -> ``DecoderOutput(sample=(B, 3, h*f, w*f))``."""
        if self.use_slicing and z.shape[0] > 1:
            x = torch.cat([self._decode(s) for s in z.split(1)])
        else:
            x = self._decode(z)
        return DecoderOutput(sample=x) if return_dict else (x,)

    def tiled_encode(self, x: torch.Tensor, return_dict: bool = True) -> EncoderOutput | tuple[torch.Tensor]:
        """Encode in overlapping tiles of ``tile_sample_min_*`` pixels, latents blended across overlaps."""
        self.tcae.check_image_size(x.shape[-2], x.shape[-1])
        f = self.spatial_compression_ratio
        z = blend_tiles(x, self.tcae.encode, unit_in=f, unit_out=1,
                        tile=(self.tile_latent_min_height, self.tile_latent_min_width),
                        stride=(self.tile_sample_stride_height // f, self.tile_sample_stride_width // f))
        return EncoderOutput(latent=z) if return_dict else (z,)

    def tiled_decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple[torch.Tensor]:
        """Decode in overlapping latent tiles, images blended across the overlaps in pixel space."""
        f = self.spatial_compression_ratio
        x = blend_tiles(z, self.tcae.decode, unit_in=1, unit_out=f,
                        tile=(self.tile_latent_min_height, self.tile_latent_min_width),
                        stride=(self.tile_sample_stride_height // f, self.tile_sample_stride_width // f))
        return DecoderOutput(sample=x) if return_dict else (x,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple[torch.Tensor]:
        """Reconstruct: ``decode(encode(sample))``."""
        x = self.decode(self.encode(sample).latent).sample
        return DecoderOutput(sample=x) if return_dict else (x,)


def export_diffusers(model: TCAE, out_dir: str | Path) -> Path:
    """Write `model` as a diffusers model folder (``config.json`` with ``_class_name: TCAEAutoencoder``,
    ``diffusion_pytorch_model.safetensors``); load it with ``TCAEAutoencoder.from_pretrained(out_dir)``."""
    out = Path(out_dir)
    TCAEAutoencoder.from_tcae(model).save_pretrained(out, safe_serialization=True)
    return out
