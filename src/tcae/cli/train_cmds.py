"""`tcae train`, `tcae finetune-decoder`, `tcae train-dit`: CONFIG (a YAML path or a shipped config
name) followed by key=value overrides."""

from __future__ import annotations

import argparse

from tcae.config import TRAIN_ALIASES, TrainConfig, list_configs, load_config


def _train(args: argparse.Namespace) -> int:
    from tcae.training.tokenizer import train_tokenizer

    overrides = list(args.overrides)
    if args.command == "finetune-decoder":
        overrides.insert(0, "phase=decoder")
    cfg = load_config(TrainConfig, args.config, overrides, TRAIN_ALIASES)
    run_dir = train_tokenizer(cfg)
    print(f"run directory: {run_dir}  (model: {run_dir / 'model'})")
    return 0


def _train_dit(args: argparse.Namespace) -> int:
    from tcae.training.dit import DIT_ALIASES, DiTTrainConfig, train_dit

    cfg = load_config(DiTTrainConfig, args.config, list(args.overrides), DIT_ALIASES)
    run_dir = train_dit(cfg)
    print(f"run directory: {run_dir}  (model: {run_dir / 'model'})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    shipped = ", ".join(list_configs())
    for name, helptext, func in (
        ("train", "phase 1: joint reconstruction + iBOT training of a tokenizer", _train),
        ("finetune-decoder", "phase 2: decoder fine-tuning, encoder frozen (needs init=RUN_OR_MODEL_DIR)", _train),
        ("train-dit", "train a diffusion transformer on cached latents", _train_dit),
    ):
        p = sub.add_parser(name, help=helptext, description=f"{helptext}. Shipped configs: {shipped}.")
        p.add_argument("config", help="YAML path or shipped config name")
        p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. steps=100 lr=1e-4 data=builtin:digits")
        p.set_defaults(func=func)
