"""Model directories (config.json + model.safetensors) and loading weights with errors that name
what does not match."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import PyTorchModelHubMixin
from safetensors.torch import load_file, save_file
from torch import nn


class CheckpointMismatchError(ValueError):
    """A checkpoint's tensors do not fit the model it is loaded into (different config)."""


def load_state_dict_checked(module: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load `state` into `module` strictly; on any mismatch raise CheckpointMismatchError listing
    missing keys, unexpected keys and shape differences (expected vs given)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: expected {tuple(own[k].shape)}, given {tuple(state[k].shape)}"
        for k in sorted(set(own) & set(state))
        if own[k].shape != state[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("shape mismatches:\n  " + "\n  ".join(shapes[:20]))
        if missing:
            parts.append(f"missing keys ({len(missing)}): {missing[:10]}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {unexpected[:10]}")
        raise CheckpointMismatchError(
            f"{source} does not match the model (was it saved from a different config?)\n" + "\n".join(parts)
        )
    module.load_state_dict(state, strict=True)


# ---------------------------------------------------------------------- model directories
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


def read_config_json(path: Path, what: str) -> dict[str, Any]:
    """A model directory's config.json as a dict; a damaged file is a ValueError that names it."""
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}): the {what} config is damaged; copy or download the "
                         "model again") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path} holds a JSON {type(raw).__name__}, not a {what} config object")
    return raw


def load_safetensors(path: str | Path, device: str = "cpu", what: str = "weights") -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file``, with a damaged or truncated file (a header past the end of the file,
    a cut-off download) reported as a ValueError that names the file, not a raw SafetensorError."""
    from safetensors import SafetensorError

    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        size = Path(path).stat().st_size if Path(path).is_file() else 0
        raise ValueError(f"{path} ({size} bytes) is not a readable safetensors file ({err}): the {what} are damaged "
                         "or incomplete; copy or download them again") from None


def save_model_dir(model: nn.Module, directory: str | Path, config: dict[str, Any]) -> None:
    """Write `directory`/model.safetensors (the state dict, on CPU) and `directory`/config.json."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2))


def resolve_run_dir(model_id: str) -> str:
    """A training run directory (`runs/NAME`, holding its exported model in `model/`) -> that `model/`;
    anything else unchanged."""
    path = Path(model_id)
    if path.is_dir() and not (path / CONFIG_NAME).is_file() and (path / "model" / CONFIG_NAME).is_file():
        return str(path / "model")
    return model_id


def check_local_model_path(model_id: str, what: str) -> None:
    """Raise FileNotFoundError for a model path that is not a directory and cannot be a Hugging Face
    Hub repo id ('name' or 'owner/name'): an existing file, an absolute or ./ ../ ~ path, a deeper
    path such as runs/tiny/model, or 'dir/name' where dir exists here."""
    path = Path(model_id)
    if path.is_dir():
        return
    if path.exists():
        raise FileNotFoundError(f"{model_id} is a file, not a {what} model directory ({CONFIG_NAME} + "
                                f"{WEIGHTS_NAME}, written by save_pretrained)")
    # 'owner/name' whose 'owner' is a local directory is a local path too (runs/nothere)
    local_parent = len(path.parts) == 2 and path.parent.is_dir()
    if path.is_absolute() or model_id.startswith((".", "~")) or len(path.parts) > 2 or local_parent:
        raise FileNotFoundError(f"{what} model directory {model_id} not found (a model directory holds "
                                f"{CONFIG_NAME} and {WEIGHTS_NAME}, written by save_pretrained)")


def model_files(model_id: str, what: str, **hub_kwargs: Any) -> tuple[Path, Path]:
    """(config.json, model.safetensors) of a local model directory or a Hugging Face Hub repo id."""
    path = Path(model_id)
    if path.is_dir():
        files = path / CONFIG_NAME, path / WEIGHTS_NAME
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(f"{f} not found: a {what} model directory holds {CONFIG_NAME} and "
                                        f"{WEIGHTS_NAME} (written by save_pretrained); a training run "
                                        "directory holds one in model/")
        return files
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:  # already in the local Hub cache: no network needed
        return (Path(hf_hub_download(model_id, CONFIG_NAME, **{**hub_kwargs, "local_files_only": True})),
                Path(hf_hub_download(model_id, WEIGHTS_NAME, **{**hub_kwargs, "local_files_only": True})))
    except LocalEntryNotFoundError:
        if hub_kwargs.get("local_files_only"):
            raise FileNotFoundError(f"{what} model {model_id}: no local directory {path.resolve()} and not in the "
                                    "local Hugging Face cache (local_files_only)") from None
    _check_hub_reachable(model_id, path, what)
    return (Path(hf_hub_download(model_id, CONFIG_NAME, **hub_kwargs)),
            Path(hf_hub_download(model_id, WEIGHTS_NAME, **hub_kwargs)))


def _in_hub_cache(model_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(model_id, CONFIG_NAME), str)
    except Exception:  # not a valid repo id: the Hub call reports it
        return False


def _check_hub_reachable(model_id: str, path: Path, what: str, timeout: float = 5.0) -> None:
    """Fail at once, naming the local path looked for, when the Hub cannot be reached: huggingface_hub's
    own retries take tens of seconds offline and end in a message about the connection."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        reason = "HF_HUB_OFFLINE is set"
    else:
        url = urlparse(constants.ENDPOINT)
        try:
            socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                     timeout=timeout).close()
            return
        except OSError as e:
            reason = f"{url.hostname} cannot be reached: {e}"
    raise FileNotFoundError(f"{what} model {model_id}: no local directory {path.resolve()}, and it cannot be "
                            f"fetched from the Hugging Face Hub ({reason})")


def dataclass_from_dict(cls: type, raw: dict[str, Any], what: str, source: str = "config") -> Any:
    """`cls(**raw)`, rejecting unknown keys by name (a mixin-style {"config": {...}} wrapper is unwrapped)."""
    raw = raw.get("config", raw)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{source}: unknown {what} config key(s) {unknown}; valid keys: {sorted(known)}")
    return cls(**raw)


class DataclassHubMixin(PyTorchModelHubMixin):
    """save_pretrained / from_pretrained for a module built as `Model(config)` from a dataclass
    `config_class`: config.json + model.safetensors, loaded strictly with named mismatches."""

    config_class: type
    model_kind: str = "model"

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Load from a model directory, a training run directory (its `model/`) or a Hub repo id."""
        model_id = resolve_run_dir(str(pretrained_model_name_or_path))
        # a path that cannot be a Hub repo id is named as a missing directory, not a repo-id error
        check_local_model_path(model_id, cls.model_kind)
        if not Path(model_id).is_dir() and not kwargs.get("local_files_only") and not _in_hub_cache(model_id):
            _check_hub_reachable(model_id, Path(model_id), cls.model_kind)
        if (Path(model_id) / CONFIG_NAME).is_file():  # huggingface_hub parses it first, naming no file
            read_config_json(Path(model_id) / CONFIG_NAME, cls.model_kind)
        return super().from_pretrained(model_id, *args, **kwargs)

    def save_pretrained(self, save_directory: str | Path, *, card_info: dict[str, Any] | None = None,
                        **kwargs: Any) -> str | None:
        """Write config.json, model.safetensors and README.md, a model card (`tcae.models.card`: what the
        model is, the paper, license, latent shape, training data and steps, metrics, usage).

        `card_info` (keys in `tcae.models.card.CARD_INFO_KEYS`, e.g. ``{"training_data": "builtin:digits",
        "steps": 400, "metrics": {"psnr": 24.1}}``) is merged over what the card already in
        `save_directory` recorded, so re-saving a model keeps its training information. Other keyword
        arguments go to huggingface_hub's `save_pretrained` (`push_to_hub=True`, `repo_id=`, ...)."""
        from tcae.models.card import check_card_info, read_card_info

        card = Path(save_directory) / "README.md"
        passed = dict((kwargs.pop("model_card_kwargs", None) or {}).get("card_info") or {})
        info = check_card_info({**read_card_info(card), **passed, **(card_info or {})})
        card.unlink(missing_ok=True)  # huggingface_hub keeps an existing card; this one describes these weights
        return super().save_pretrained(save_directory, model_card_kwargs={"card_info": info}, **kwargs)

    def generate_model_card(self, *args: Any, card_info: dict[str, Any] | None = None, **kwargs: Any):
        """The model card huggingface_hub writes on save / push (`tcae.models.card.build_model_card`)."""
        from tcae.models.card import build_model_card

        return build_model_card(self, card_info)

    def _save_pretrained(self, save_directory: Path) -> None:
        save_model_dir(self, save_directory, dataclasses.asdict(self.config))

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision=None, cache_dir=None, force_download=False,
                         proxies=None, resume_download=None, local_files_only=False, token=None,
                         map_location: str = "cpu", strict: bool = True, **model_kwargs):
        config_file, weights_file = model_files(
            model_id, cls.model_kind, revision=revision, cache_dir=cache_dir, force_download=force_download,
            token=token, local_files_only=local_files_only)
        config = dataclass_from_dict(cls.config_class, read_config_json(config_file, cls.model_kind), cls.model_kind,
                                     str(config_file))
        model = cls(config)
        state = load_safetensors(weights_file, device=str(map_location), what=f"{cls.model_kind} weights")
        upgrade = getattr(cls, "upgrade_state_dict", None)  # older key layouts of the same model
        load_state_dict_checked(model, upgrade(state) if upgrade else state, source=str(weights_file))
        return model
