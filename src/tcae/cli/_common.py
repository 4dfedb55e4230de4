"""What every `tcae` command shares: its common flags, and which install extra a missing package is in.

Command modules import only the standard library at module level (their work is imported inside the
handlers), so that building the parser, `tcae --help` included, does not load torch.
"""

from __future__ import annotations

import argparse

# the package an ImportError names -> the pip extra that provides it
EXTRA_OF = {
    "omegaconf": "train", "tensorboard": "train", "webdataset": "train", "skimage": "train", "sklearn": "train",
    "matplotlib": "train", "lpips": "train", "torchvision": "train", "torchmetrics": "eval",
    "torch_fidelity": "eval", "scipy": "eval", "timm": "eval", "diffusers": "diffusers",
}

DEVICE_HELP = "auto (cuda if available), cpu, cuda, cuda:1, ..."


def add_command(sub: argparse._SubParsersAction, name: str, func, help: str, description: str | None = None,
                key_value_grammar: bool = False, **kwargs) -> argparse.ArgumentParser:
    """A sub-command parser whose namespace knows its handler, its parser (for usage errors) and its grammar."""
    p = sub.add_parser(name, help=help, description=description or help[:1].upper() + help[1:] + ".", **kwargs)
    p.set_defaults(func=func, parser=p, key_value_grammar=key_value_grammar)
    return p


def add_no_progress(p: argparse.ArgumentParser, what: str = "progress bars") -> None:
    p.add_argument("--no-progress", action="store_true", help=f"no {what}")


def add_device(p: argparse.ArgumentParser, default: str = "auto") -> None:
    p.add_argument("--device", default=default, help=DEVICE_HELP)


def model_arg(p: argparse.ArgumentParser, required: bool = True, **kwargs) -> None:
    """`--model`: a tokenizer, always spelt the same."""
    kwargs.setdefault("help", "tokenizer: model directory (save_pretrained), training run directory, Hub repo id, or "
                              "diffusers:PATH_OR_HUB_ID (AutoencoderKL, AutoencoderDC, a tcae export-diffusers folder)")
    p.add_argument("--model", required=required, metavar="MODEL", **kwargs)


def out_dir_arg(p: argparse.ArgumentParser, required: bool = True, what: str = "output directory") -> None:
    """`--out`: always a directory."""
    p.add_argument("--out", required=required, default=None, metavar="DIR", help=what)
