"""Model directories (config.json + model.safetensors), as the TC-AE tokenizer writes them.

A minimal local copy of what `tcae.models.tcae.TCAE._save_pretrained/_from_pretrained` do, kept
generic (any dataclass config) so that it can move into `tcae.models.checkpoint_io` and serve both.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tcae.models.checkpoint_io import load_state_dict_checked

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


def save_model_dir(model: nn.Module, directory: str | Path, config: dict[str, Any]) -> None:
    """Write `directory`/model.safetensors (the state dict, on CPU) and `directory`/config.json."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2))


def model_files(model_id: str, what: str, **hub_kwargs: Any) -> tuple[Path, Path]:
    """(config.json, model.safetensors) of a local model directory or a Hugging Face Hub repo id."""
    path = Path(model_id)
    if path.is_dir():
        files = path / CONFIG_NAME, path / WEIGHTS_NAME
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(f"{f} not found: a {what} directory holds {CONFIG_NAME} and "
                                        f"{WEIGHTS_NAME} (written by save_pretrained)")
        return files
    from huggingface_hub import hf_hub_download

    return (Path(hf_hub_download(model_id, CONFIG_NAME, **hub_kwargs)),
            Path(hf_hub_download(model_id, WEIGHTS_NAME, **hub_kwargs)))


def dataclass_from_dict(cls: type, raw: dict[str, Any], what: str, source: str = "config") -> Any:
    """`cls(**raw)`, rejecting unknown keys by name (a mixin-style {"config": {...}} wrapper is unwrapped)."""
    raw = raw.get("config", raw)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{source}: unknown {what} config key(s) {unknown}; valid keys: {sorted(known)}")
    return cls(**raw)


def load_weights(model: nn.Module, weights_file: Path, map_location: str | torch.device = "cpu") -> None:
    """Load model.safetensors strictly, with errors that name mismatching keys and shapes."""
    load_state_dict_checked(model, load_file(str(weights_file), device=str(map_location)),
                            source=str(weights_file))
