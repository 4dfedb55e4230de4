"""Where training scalars and images go besides `scalars.jsonl`: TensorBoard (default), Weights & Biases
(`logger=wandb`, when installed) or nowhere (`logger=none`)."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

LOGGERS = ("tensorboard", "wandb", "none")


class NullLogger:
    def log(self, scalars: dict[str, float], step: int) -> None:
        pass

    def image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """image: float (3, H, W) in [0, 1]."""

    def close(self) -> None:
        pass


class TensorBoardLogger(NullLogger):
    def __init__(self, log_dir: Path, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: events a killed run wrote after the checkpoint it resumes from are dropped
        self.writer = SummaryWriter(str(log_dir), purge_step=start_step + 1 if start_step else None)

    def log(self, scalars: dict[str, float], step: int) -> None:
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, step)

    def image(self, tag: str, image: torch.Tensor, step: int) -> None:
        self.writer.add_image(tag, image, step)

    def close(self) -> None:
        self.writer.close()


class WandbLogger(NullLogger):
    def __init__(self, run_dir: Path, cfg: DictConfig) -> None:
        import wandb

        # resume="allow" with the run name as id: a resumed run continues the same wandb run
        self.run = wandb.init(project="tcae", name=str(cfg.name), id=str(cfg.name), dir=str(run_dir),
                              resume="allow", config=OmegaConf.to_container(cfg))

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def image(self, tag: str, image: torch.Tensor, step: int) -> None:
        import wandb

        self.run.log({tag: wandb.Image(image.permute(1, 2, 0).cpu().numpy())}, step=step)

    def close(self) -> None:
        self.run.finish()


def build_logger(kind: str, run_dir: Path, cfg: DictConfig, start_step: int) -> NullLogger:
    if kind == "tensorboard":
        return TensorBoardLogger(run_dir / "tb", start_step)
    if kind == "wandb":
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ValueError("logger=wandb needs the wandb package (pip install wandb); "
                             "or use logger=tensorboard|none") from None
        return WandbLogger(run_dir, cfg)
    if kind == "none":
        return NullLogger()
    raise ValueError(f"logger must be one of {', '.join(LOGGERS)}, got {kind!r}")
