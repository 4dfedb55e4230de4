"""Latent diffusion on TC-AE latents: a flow-matching DiT, its sampler, and the latent cache."""

from tcae.diffusion.dit import DIT_PRESETS, DiT, DiTConfig, create_dit, dit_config, list_dits
from tcae.diffusion.flow import flow_matching_loss, interpolate, sample_timesteps, shift_timesteps
from tcae.diffusion.latents import LatentDataset, cache_latents, read_latent_meta
from tcae.diffusion.sampler import cfg_velocity, sample, time_grid

__all__ = [
    "DIT_PRESETS", "DiT", "DiTConfig", "LatentDataset", "cache_latents", "cfg_velocity",
    "create_dit", "dit_config", "flow_matching_loss", "interpolate", "list_dits",
    "read_latent_meta", "sample", "sample_timesteps", "shift_timesteps", "time_grid",
]
