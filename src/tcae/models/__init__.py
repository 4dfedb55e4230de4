"""TC-AE models: the tokenizer, its presets and FLOP counting."""

from tcae.models.checkpoint_io import CheckpointMismatchError, load_state_dict_checked
from tcae.models.flops import FlopsReport, flops
from tcae.models.presets import PRESETS, create_model, list_models, preset_config
from tcae.models.tcae import TCAE, EncoderTokens, TCAEConfig, TCAEOutput

__all__ = [
    "PRESETS", "TCAE", "CheckpointMismatchError", "EncoderTokens", "FlopsReport", "TCAEConfig",
    "TCAEOutput", "create_model", "flops", "list_models", "load_state_dict_checked", "preset_config",
]
