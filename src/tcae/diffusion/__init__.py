"""Latent diffusion on TC-AE latents: a flow-matching DiT, its sampler, and the latent cache."""

from tcae.diffusion.dit import DIT_PRESETS, DiT, DiTConfig, create_dit, dit_config, list_dits
from tcae.diffusion.flow import flow_matching_loss, interpolate, sample_timesteps, shift_timesteps
from tcae.diffusion.latents import LatentDataset, cache_latents, read_latent_meta
from tcae.diffusion.npz import NpzSampleWriter, load_samples_npz, save_samples_npz, to_uint8
from tcae.diffusion.sampler import cfg_velocity, sample, time_grid

__all__ = [
    "DIT_PRESETS", "DiT", "DiTConfig", "LatentDataset", "NpzSampleWriter", "cache_latents", "cfg_velocity",
    "create_dit", "dit_config", "flow_matching_loss", "interpolate", "list_dits", "load_samples_npz",
    "read_latent_meta", "sample", "sample_timesteps", "save_samples_npz", "shift_timesteps", "time_grid",
    "to_uint8",
]
