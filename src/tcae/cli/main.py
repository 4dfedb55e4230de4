"""`tcae` command line: one sub-command per job; each module registers its own parsers.

Grammar: the training commands (`train`, `finetune-decoder`, `train-dit`) take `CONFIG key=value ...`;
every other command takes flags. `--model` is always a tokenizer, `--out` always a directory, and every
command accepts `--no-progress`. Exit codes: 0 done, 2 usage or bad input (the message names the
problem; no traceback), 3 a training run stopped on a non-finite loss, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from tcae.cli._common import EXTRA_OF

# each module adds its sub-commands with register(subparsers); none imports torch at module level
# (module: its commands) models: models; train: train, finetune-decoder, train-dit; evaluate: eval, diagnose,
# eval-gen, fid-ref; reconstruct: reconstruct, encode, decode; diffusion: cache-latents, sample; export: push,
# export-diffusers; bench: bench; studies: demo, repro, score
COMMAND_MODULES = ["models", "train", "evaluate", "reconstruct", "diffusion", "export", "bench", "studies"]

EXIT_OK, EXIT_USAGE, EXIT_NONFINITE, EXIT_INTERRUPTED = 0, 2, 3, 130


def _version() -> str:
    from tcae import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tcae", description="Train, evaluate and serve TC-AE tokenizers and latent diffusion models.",
        epilog="Training commands take CONFIG key=value overrides; every other command takes flags. "
               "Exit codes: 0 done, 2 usage or bad input, 3 stopped on a non-finite loss.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging; tracebacks for errors")
    parser.add_argument("--version", action="version", version=f"tcae {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"tcae.cli.{name}").register(sub)
    return parser


def _unknown_options(args: argparse.Namespace, argv: list[str], unknown: list[str]) -> str:
    """The error for arguments the command does not take; training commands get the key=value spelling."""
    if not getattr(args, "key_value_grammar", False):
        return f"unrecognized arguments: {' '.join(unknown)}"
    hints = []
    for i, token in enumerate(argv):
        if token not in unknown or not token.startswith("--"):
            continue
        key, sep, value = token[2:].partition("=")
        if not sep:
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            value = nxt if nxt is not None and not nxt.startswith("-") else "VALUE"
        hints.append(f"{key.replace('-', '_')}={value}")
    if not hints:
        return f"unrecognized arguments: {' '.join(unknown)}"
    flags = [t for t in unknown if t.startswith("--")]
    what = f"{flags[0]} is not an option" if len(flags) == 1 else f"{', '.join(flags)} are not options"
    return (f"{what} of `tcae {args.command}`: training commands take key=value overrides after CONFIG; "
            f"write {' '.join(hints)}")


def _user_error(err: BaseException) -> tuple[int, str] | None:
    """(exit code, message) for errors that are the user's to fix, None for bugs (shown with a traceback)."""
    loop = sys.modules.get("tcae.training.loop")  # only loaded, and only raised, when a run trained
    if loop is not None and isinstance(err, loop.NonFiniteLossError):
        return EXIT_NONFINITE, f"stopped: {err}"
    if isinstance(err, ModuleNotFoundError) and err.name:
        top = err.name.split(".")[0]
        if top in EXTRA_OF:
            extra = EXTRA_OF[top]
            return EXIT_USAGE, (f"error: this command needs the package {top!r}, which `pip install tcae` does not "
                                f"include: pip install 'tcae[{extra}]'")
        return None
    pil = sys.modules.get("PIL")
    if pil is not None and isinstance(err, pil.UnidentifiedImageError):
        return EXIT_USAGE, f"error: {err}"
    if isinstance(err, (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)):
        return EXIT_USAGE, f"error: {err}"  # ConfigError, CheckpointMismatchError, MissingWeightsError included
    ckpt = sys.modules.get("tcae.training.checkpoint")
    if ckpt is not None and isinstance(err, ckpt.CheckpointWriteError):  # disk full: the message says what is kept
        return EXIT_USAGE, f"error: {err}"
    return None


def main(argv: list[str] | None = None) -> int:
    """Run `tcae ARGV`; returns the exit code (argparse's exits included, so callers never see SystemExit)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            args.parser.error(_unknown_options(args, argv, unknown))
    except SystemExit as e:  # --help, --version, usage errors (argparse prints them)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print(f"tcae {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        known = _user_error(e)
        if known is None or args.verbose:
            raise
        code, message = known
        print(f"tcae {args.command}: {message}", file=sys.stderr)
        return code
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
