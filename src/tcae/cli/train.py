"""`tcae train`, `tcae finetune-decoder`, `tcae train-dit`: CONFIG (a YAML path or a shipped config
name) followed by key=value overrides.

The resolved config, the data spec and the image size (divisible by the model's compression f) are all
checked before anything is printed or trained; `--print-config` prints the resolved config and stops.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from tcae.cli._common import add_command


def _load(args: argparse.Namespace) -> Any:
    """The resolved, validated config of a training command."""
    from tcae.config import load_config

    overrides = list(args.overrides)
    if args.command == "finetune-decoder":
        overrides.insert(0, "phase=decoder")
    if args.no_progress:
        overrides.append("progress=false")
    if args.command == "train-dit":
        from tcae.config import DIT_ALIASES, DiTTrainConfig

        return load_config(DiTTrainConfig, args.config, overrides, DIT_ALIASES)
    from tcae.config import TRAIN_ALIASES, TrainConfig, explicit_keys, inherit_init_data

    cfg = load_config(TrainConfig, args.config, overrides, TRAIN_ALIASES)
    if cfg.phase == "decoder" and cfg.init:
        # phase 2 trains on the phase-1 run's data unless the user says otherwise
        where = inherit_init_data(cfg, explicit_keys(args.config, list(args.overrides), TRAIN_ALIASES))
        logging.getLogger("tcae.train").info("phase 2 %s", where)
    return cfg


def _train(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    cfg = _load(args)
    from tcae.config import check_dit_inputs, check_tokenizer_inputs

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
    from tcae.configs import list_configs

    shipped = ", ".join(list_configs())
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
