"""`tcae train`, `tcae finetune-decoder`, `tcae train-dit`: CONFIG (a YAML path or a shipped config
name) followed by key=value overrides.

The resolved config, the data spec and the image size (divisible by the model's compression f) are all
checked before anything is printed or trained; `--print-config` prints the resolved config and stops.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from tcae.cli._common import add_command

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"  # tcae/configs (tcae.config.CONFIG_DIR)


def _load(args: argparse.Namespace) -> Any:
    """The resolved, validated config of a training command."""
    from tcae.config import load_config

    overrides = list(args.overrides)
    if args.command == "finetune-decoder":
        overrides.insert(0, "phase=decoder")
    if args.no_progress:
        overrides.append("progress=false")
    if args.command == "train-dit":
        from tcae.training.dit import DIT_ALIASES, DiTTrainConfig

        return load_config(DiTTrainConfig, args.config, overrides, DIT_ALIASES)
    from tcae.config import TRAIN_ALIASES, TrainConfig, explicit_keys, inherit_init_data

    cfg = load_config(TrainConfig, args.config, overrides, TRAIN_ALIASES)
    if args.command == "finetune-decoder" and cfg.init:
        # phase 2 trains on the phase-1 run's data unless the user says otherwise
        where = inherit_init_data(cfg, explicit_keys(args.config, list(args.overrides), TRAIN_ALIASES))
        logging.getLogger("tcae.train").info("phase 2 %s", where)
    return cfg


def _init_compression(init: str) -> int | None:
    """The compression f of the phase-1 model `init` names, read from its config.json (None for a Hub id:
    the trainer checks it once downloaded)."""
    from tcae.models import TCAEConfig
    from tcae.models.checkpoint_io import CONFIG_NAME, check_local_model_path, dataclass_from_dict, resolve_run_dir

    path = Path(resolve_run_dir(init))
    try:
        check_local_model_path(str(path), "TC-AE")  # a path that cannot be a Hub id must exist
    except FileNotFoundError as e:
        raise FileNotFoundError(f"init={init}: {e}") from None
    if not path.is_dir():
        return None
    config = path / CONFIG_NAME
    if not config.is_file():
        raise FileNotFoundError(f"init={init}: {config} not found (a model directory holds {CONFIG_NAME}; a "
                                "training run directory holds one in model/)")
    return dataclass_from_dict(TCAEConfig, json.loads(config.read_text()), "TC-AE", str(config)).compression


def check_tokenizer_inputs(cfg: Any) -> None:
    """The data specs name data that is there, and data.image_size suits the model (its compression f)."""
    from tcae.config import model_overrides
    from tcae.data import check_spec
    from tcae.models import preset_config

    check_spec(cfg.data.spec, train=True)
    if cfg.data.val_spec:
        check_spec(cfg.data.val_spec, train=False)
    size = cfg.data.image_size
    if cfg.phase == "decoder":
        if not cfg.init:
            raise ValueError("finetune-decoder needs init=RUN_OR_MODEL_DIR (the phase-1 run or model)")
        f = _init_compression(cfg.init)
    else:
        overrides = model_overrides(cfg.model)
        nominal = overrides.pop("image_size", None)
        f = preset_config(cfg.model.name, **overrides).compression  # also checks the architecture
    if f is not None and size % f:
        lo = max(f, size // f * f)
        raise ValueError(f"data.image_size={size} is not divisible by the model's compression f={f} "
                         f"(nearest valid: {lo} or {lo + f})")
    if cfg.phase != "decoder":
        preset_config(cfg.model.name, **overrides, image_size=nominal or size)


def check_dit_inputs(cfg: Any) -> None:
    from tcae.diffusion.latents import read_latent_meta

    meta = read_latent_meta(cfg.data.latents)  # FileNotFoundError naming meta.json
    if not meta.get("complete"):
        raise ValueError(f"{cfg.data.latents} is an incomplete latent cache; rerun `tcae cache-latents` to finish it")


def _train(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    cfg = _load(args)
    (check_dit_inputs if args.command == "train-dit" else check_tokenizer_inputs)(cfg)
    if args.print_config:
        print(OmegaConf.to_yaml(cfg), end="")
        return 0
    if args.command == "train-dit":
        from tcae.training.dit import train_dit as run
    else:
        from tcae.training.tokenizer import train_tokenizer as run
    run_dir = run(cfg)
    print(f"run directory: {run_dir}  (model: {run_dir / 'model'})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    shipped = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    for name, helptext in (
        ("train", "phase 1: joint reconstruction + iBOT training of a tokenizer"),
        ("finetune-decoder", "phase 2: decoder fine-tuning, encoder frozen (needs init=RUN_OR_MODEL_DIR)"),
        ("train-dit", "train a diffusion transformer on cached latents (latents=DIR from tcae cache-latents)"),
    ):
        p = add_command(sub, name, _train, helptext, key_value_grammar=True,
                        description=f"{helptext[:1].upper()}{helptext[1:]}. Shipped configs: {shipped}. "
                        "Settings are key=value overrides after CONFIG (steps=100, not --steps 100).")
        p.add_argument("config", help="YAML path or shipped config name")
        p.add_argument("overrides", nargs="*", metavar="key=value",
                       help="overrides, e.g. steps=100 lr=1e-4 data=builtin:digits ssl.num_local=6")
        p.add_argument("--print-config", action="store_true",
                       help="print the resolved config (YAML) after checking it, and exit without training")
        p.add_argument("--no-progress", action="store_true", help="no progress bar (same as progress=false)")
