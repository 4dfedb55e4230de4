"""DC-AE-f32c32 (diffusers' `AutoencoderDC`) with random weights, the baseline of `tcae bench`.

Cost (FLOPs, time, memory) does not depend on the weights, so the published architecture with random
weights measures the same as the released checkpoint, without network access.
"""

from __future__ import annotations

import copy

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
}

DCAE_NAME = "dc-ae-f32c32"
DCAE_HUB_ID = "mit-han-lab/dc-ae-f32c32-in-1.0-diffusers"
DCAE_COMPRESSION = 32


def dcae_config() -> dict:
    """A copy of the published dc-ae-f32c32-in-1.0 configuration (tuples where diffusers expects them)."""
    cfg = copy.deepcopy(DCAE_F32C32_IN_CONFIG)
    for key in ("encoder_qkv_multiscales", "decoder_qkv_multiscales"):
        cfg[key] = tuple(tuple(s) for s in cfg[key])
    for key, value in cfg.items():
        if isinstance(value, list):
            cfg[key] = tuple(value)
    return cfg


def build_dcae(**overrides):
    """`diffusers.AutoencoderDC` from the published dc-ae-f32c32-in-1.0 config, random weights, eval mode."""
    try:
        from diffusers import AutoencoderDC
    except ImportError as e:  # pragma: no cover - diffusers is an optional dependency
        raise ImportError("the DC-AE baseline needs diffusers: pip install diffusers") from e
    cfg = dcae_config()
    cfg.update(overrides)
    return AutoencoderDC(**cfg).eval()
