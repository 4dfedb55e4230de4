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
(without tiling). Its config is the TCAEConfig fields plus the latent scaling.

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

from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, EncoderOutput
from diffusers.utils.accelerate_utils import apply_forward_hook

from tcae.models.tcae import TCAE, TCAEConfig
from tcae.models.tiling import blend_tiles, ramp, tile_starts  # noqa: F401 (ramp, tile_starts: re-exported)

_D = TCAEConfig()  # the defaults of every TCAEConfig field


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

    _supports_gradient_checkpointing = False
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
        if latents_mean is not None:  # the weights file holds the same values in the TC-AE's buffers
            self.tcae.set_latent_stats(torch.tensor(latents_mean), torch.tensor(latents_std))
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
