"""DC-AE (diffusers' `AutoencoderDC`) presets: the published shapes and tiny CPU ones, as AutoencoderDC kwargs.

A preset is a plain dict of `AutoencoderDC(**kwargs)` arguments (JSON types; diffusers is imported only where a
model is built, in :mod:`tcae.tokenizers`). The compression f is 2^(number of stages - 1): each stage after the
first halves the resolution (pixel-unshuffle down, pixel-shuffle up).
"""

from __future__ import annotations

import copy
from typing import Any

# The published configuration of `mit-han-lab/dc-ae-f32c32-in-1.0-diffusers` (its config.json), as
# written by diffusers' own conversion script, scripts/convert_dcae_to_diffusers.py, `get_ae_config`
# ("dc-ae-f32c32-in-1.0" branch; scaling_factor 0.3189 for the -in- checkpoint, 0.4552 for -mix-).
# Keys not listed there take AutoencoderDC's defaults, which config.json also records:
# attention_head_dim=32, upsample_block_type="pixel_shuffle", downsample_block_type="pixel_unshuffle",
# encoder_out_shortcut / decoder_in_shortcut True, decoder_conv_act_fn="relu".
# The same architecture is efficientvit's `dc_ae_f32c32("dc-ae-f32c32-in-1.0")` (mit-han-lab/efficientvit,
# applications/dc_ae): widths 128-1024, encoder depths [0, 4, 8, 2, 2, 2], decoder [0, 5, 10, 2, 2, 2].
# Measured with tcae.models.flops.flop_counter at 256 px: 1214 GFLOPs encode+decode = 607 GMACs,
# the "607" that the TC-AE paper quotes for DC-AE.
DCAE_F32C32_IN_CONFIG: dict = {
    "in_channels": 3,
    "latent_channels": 32,
    "attention_head_dim": 32,
    "encoder_block_types": ["ResBlock", "ResBlock", "ResBlock",
                            "EfficientViTBlock", "EfficientViTBlock", "EfficientViTBlock"],
    "decoder_block_types": ["ResBlock", "ResBlock", "ResBlock",
                            "EfficientViTBlock", "EfficientViTBlock", "EfficientViTBlock"],
    "encoder_block_out_channels": [128, 256, 512, 512, 1024, 1024],
    "decoder_block_out_channels": [128, 256, 512, 512, 1024, 1024],
    "encoder_layers_per_block": [0, 4, 8, 2, 2, 2],
    "decoder_layers_per_block": [0, 5, 10, 2, 2, 2],
    "encoder_qkv_multiscales": [[], [], [], [], [], []],
    "decoder_qkv_multiscales": [[], [], [], [], [], []],
    "upsample_block_type": "pixel_shuffle",
    "downsample_block_type": "pixel_unshuffle",
    "decoder_norm_types": ["batch_norm", "batch_norm", "batch_norm", "rms_norm", "rms_norm", "rms_norm"],
    "decoder_act_fns": ["relu", "relu", "relu", "silu", "silu", "silu"],
    "encoder_out_shortcut": True,
    "decoder_in_shortcut": True,
    "decoder_conv_act_fn": "relu",
    "scaling_factor": 0.3189,
    "sample_size": 256,
}


def _small(widths: list[int], enc_depths: list[int], dec_depths: list[int], latent_channels: int,
           sample_size: int) -> dict:
    """A scaled-down DC-AE of the published design: ResBlock stages, then EfficientViT stages (the last two),
    RMSNorm throughout (BatchNorm statistics are unreliable at the small batches of CPU runs)."""
    n = len(widths)
    types = ["ResBlock"] * (n - 2) + ["EfficientViTBlock"] * 2
    return {**DCAE_F32C32_IN_CONFIG, "latent_channels": latent_channels, "encoder_block_types": types,
            "decoder_block_types": types, "encoder_block_out_channels": widths, "decoder_block_out_channels": widths,
            "encoder_layers_per_block": enc_depths, "decoder_layers_per_block": dec_depths,
            "encoder_qkv_multiscales": [[]] * n, "decoder_qkv_multiscales": [[]] * n,
            "decoder_norm_types": ["rms_norm"] * n, "decoder_act_fns": ["relu"] * (n - 2) + ["silu"] * 2,
            "scaling_factor": 1.0, "sample_size": sample_size}


# name -> AutoencoderDC kwargs. `dc-ae-tiny`: f=16, c=8, the latent shape of the Fashion-MNIST TC-AE cells
# (2x2x8 at 32 px); 5 stages of widths 32..256 (attention head dim 32), one block per stage: 273 MFLOPs
# encode+decode at 32 px (5.7M params) against that TC-AE's 70 MFLOPs (1.5M), so TC-AE costs 0.26x, the
# paper's 0.27x (measured with tcae.models.flops; the dcae repro report states both).
DCAE_PRESETS: dict[str, dict] = {
    "dc-ae-f32c32": DCAE_F32C32_IN_CONFIG,
    "dc-ae-tiny": _small([32, 64, 128, 128, 256], [0, 1, 1, 1, 1], [0, 1, 1, 1, 1], latent_channels=8,
                         sample_size=32),
}

# model.* settings a DC-AE preset takes; compression is a check (the stages fix it), the other TC-AE fields
# have no meaning for a convolutional autoencoder
DCAE_OVERRIDES = ("image_size", "in_channels", "latent_channels")


def is_dcae_name(name: str | None) -> bool:
    """Whether `model.name` names a DC-AE preset (`dc-ae-...`)."""
    return bool(name) and str(name).startswith("dc-ae")


def dcae_compression(config: dict) -> int:
    """Spatial compression f of an AutoencoderDC config: one 2x down-sampling per stage after the first."""
    return 2 ** (len(config["encoder_block_out_channels"]) - 1)


def dcae_preset_config(name: str, **overrides: Any) -> dict:
    """AutoencoderDC kwargs of preset `name` with model.* `overrides` (TC-AE field names: image_size ->
    sample_size; latent_channels, in_channels). `compression` must equal the preset's; any other TC-AE field is
    a ValueError saying it does not apply."""
    if name not in DCAE_PRESETS:
        raise ValueError(f"unknown DC-AE preset {name!r}; available: {', '.join(sorted(DCAE_PRESETS))}")
    cfg = copy.deepcopy(DCAE_PRESETS[name])
    f = dcae_compression(cfg)
    if "compression" in overrides and int(overrides.pop("compression")) != f:
        raise ValueError(f"model.compression cannot change a DC-AE's compression: {name} has f={f}, fixed by its "
                         f"{len(cfg['encoder_block_out_channels'])} stages (drop model.compression, or pick a preset "
                         "with that f)")
    if overrides.pop("grad_checkpointing", False):
        raise ValueError("model.grad_checkpointing=true: diffusers' AutoencoderDC does not support gradient "
                         "checkpointing")
    other = sorted(set(overrides) - set(DCAE_OVERRIDES))
    if other:
        raise ValueError(f"{', '.join(f'model.{k}' for k in other)}: TC-AE architecture settings, which do not "
                         f"apply to the DC-AE preset {name} (a DC-AE takes model.{', model.'.join(DCAE_OVERRIDES)}); "
                         "drop them")
    if "image_size" in overrides:
        cfg["sample_size"] = int(overrides.pop("image_size"))
    cfg.update(overrides)
    if cfg["sample_size"] % f:
        raise ValueError(f"image_size={cfg['sample_size']} is not divisible by the DC-AE's compression f={f}")
    return cfg


def as_diffusers_kwargs(config: dict) -> dict:
    """A preset dict with tuples where AutoencoderDC expects them (its qkv_multiscales are tuples of tuples)."""
    out = {}
    for key, value in config.items():
        if key.endswith("qkv_multiscales"):
            value = tuple(tuple(s) for s in value)
        elif isinstance(value, list):
            value = tuple(value)
        out[key] = value
    return out
