"""`tcae` command line: one sub-command per job; each module registers its own parsers."""

from __future__ import annotations

import argparse
import logging
import sys

from tcae.config import ConfigError

# each module adds its sub-commands with register(subparsers)
COMMAND_MODULES = ["models_cmd", "train_cmds", "eval_cmd", "diffusion_cmds", "bench_cmd", "repro_cmd", "interop_cmds"]


def _build_parser() -> argparse.ArgumentParser:
    import importlib

    modules = [importlib.import_module(f"tcae.cli.{name}") for name in COMMAND_MODULES]

    parser = argparse.ArgumentParser(
        prog="tcae", description="Train, evaluate and serve TC-AE tokenizers and latent diffusion models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in modules:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        result = args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        # user errors: the message names the problem; a traceback would only hide it
        if args.verbose:
            raise
        print(f"tcae {args.command}: error: {e}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
