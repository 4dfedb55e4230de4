"""DC-AE-f32c32 (diffusers' `AutoencoderDC`) with random weights, the baseline of `tcae bench`.

Cost (FLOPs, time, memory) does not depend on the weights, so the published architecture with random
weights measures the same as the released checkpoint, without network access. The configuration itself is
:data:`tcae.models.dcae.DCAE_F32C32_IN_CONFIG` (the `dc-ae-f32c32` training preset).
"""

from __future__ import annotations

from tcae.models.dcae import DCAE_F32C32_IN_CONFIG, as_diffusers_kwargs

__all__ = ["DCAE_COMPRESSION", "DCAE_F32C32_IN_CONFIG", "DCAE_HUB_ID", "DCAE_NAME", "build_dcae", "dcae_config"]

DCAE_NAME = "dc-ae-f32c32"
DCAE_HUB_ID = "mit-han-lab/dc-ae-f32c32-in-1.0-diffusers"
DCAE_COMPRESSION = 32


def dcae_config() -> dict:
    """A copy of the published dc-ae-f32c32-in-1.0 configuration (tuples where diffusers expects them)."""
    cfg = as_diffusers_kwargs(DCAE_F32C32_IN_CONFIG)
    cfg.pop("sample_size")  # the bench builds the architecture only
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
