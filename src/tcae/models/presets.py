"""Named TC-AE presets: a name -> config registry, with overrides checked by name."""

from __future__ import annotations

import dataclasses

from tcae.models.tcae import TCAE, TCAEConfig

# Every preset is a full TCAEConfig; `create_model(name, **overrides)` replaces fields.
PRESETS: dict[str, TCAEConfig] = {
    # CPU tests and demo: 64 px -> 4x4x32 latent; trains in minutes on 2 cores.
    "tcae-tiny": TCAEConfig(
        image_size=64, patch_size=4, compression=16, latent_channels=32,
        fine_width=64, coarse_width=128, fine_depth=2, coarse_depth=2, head_dim=32,
    ),
    # Small GPU runs at 256 px, the paper's latent shape (8x8x128).
    "tcae-s": TCAEConfig(
        image_size=256, patch_size=8, compression=32, latent_channels=128,
        fine_width=256, coarse_width=512, fine_depth=2, coarse_depth=6, head_dim=64,
    ),
    # The paper's regime: 256 px, p=8, f=32, c=128 (8x8x128 latent); 203 GFLOPs = 102 GMACs for
    # encode+decode, under the paper's 164 GMACs (and 0.17x DC-AE-f32c32's 607 GMACs).
    "tcae-b": TCAEConfig(
        image_size=256, patch_size=8, compression=32, latent_channels=128,
        fine_width=512, coarse_width=768, fine_depth=6, coarse_depth=12, head_dim=64,
    ),
}


def list_models() -> list[str]:
    """Names of the shipped presets."""
    return sorted(PRESETS)


def config_from_presets(presets: dict, name: str, what: str, **overrides):
    """presets[name] with `overrides` replaced; an unknown name or field is a ValueError naming it."""
    if name not in presets:
        raise ValueError(f"unknown {what} preset {name!r}; available: {', '.join(sorted(presets))}")
    fields = {f.name for f in dataclasses.fields(presets[name])}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown override(s) {unknown} for {name!r}; valid: {sorted(fields)}")
    return dataclasses.replace(presets[name], **overrides)


def preset_config(name: str, **overrides) -> TCAEConfig:
    """The config of preset `name` with `overrides` applied; unknown names or fields are a ValueError."""
    return config_from_presets(PRESETS, name, "TC-AE", **overrides)


def create_model(name: str, **overrides) -> TCAE:
    """A freshly initialised TC-AE from a preset name, e.g. create_model('tcae-b', staged=False)."""
    return TCAE(preset_config(name, **overrides))
