"""The training loop every `tcae` trainer shares: run directory, seeding, mixed precision, DDP + compile,
gradient accumulation, exact resume from atomic checkpoints, a device-side non-finite guard, and logging.

A trainer subclasses `TrainLoop` and fills in `build` (models, optimizers via `add_optimizer`, `self.loader`),
`forward_backward` (one micro-batch: losses, `self.backward(...)`), `after_step` (EMA / teacher updates,
gated by the step's `ok` flag), `state_extra` / `load_extra`, and `export` (what goes in `runs/NAME/model/`).

The step touches the host only at log and checkpoint steps (torchtitan's rule): loss terms stay on the
device and are summed there; whether a step was finite is a device tensor that gates the optimizers
(fused AdamW's `found_inf`, GradScaler's mechanism), the EMA and any guarded buffer, so a step with a
non-finite loss or gradient changes nothing, and the run stops at the next log step with the message.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import sys
import time
from contextlib import ExitStack, nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from tcae import dist
from tcae.config import save_config
from tcae.data import set_loader_epoch
from tcae.training.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from tcae.training.loggers import build_logger
from tcae.training.schedule import warmup_cosine
from tcae.util import LockBusy, file_lock, write_text_atomic

log = logging.getLogger("tcae.train")

# Config keys a resumed run may change: how long it runs (`steps` extends it), how it is logged and
# checkpointed, and where and how fast it executes (device, compile, workers, gradient accumulation, which
# splits the same global batch). Every other key (data, model, loss, optimiser, schedule, EMA, seed,
# precision, phase, init) shapes the weights: resuming a checkpoint with a different value is refused.
RESUMABLE_KEYS = frozenset({
    "name", "run_dir", "steps", "resume", "progress", "logger", "log_every", "image_every", "checkpoint_every",
    "checkpoint_at", "keep_last", "device", "compile", "grad_accum", "data.num_workers", "latent_stats_images",
})
# what `resume=never` deletes before starting over: everything the loop itself writes into a run directory
RUN_OUTPUTS = ("checkpoints", "model", "tb", "scalars.jsonl")


class NonFiniteLossError(RuntimeError):
    """A loss or gradient became NaN/inf; the run stops and the last good checkpoint is left as it was."""


class RunDirectoryBusy(ValueError):
    """Another process is training in this run directory."""


class RunConfigChanged(ValueError):
    """The run directory's checkpoint was trained with a config that differs in keys that shape the weights."""


def _flat(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> plain value of a (nested) config."""
    container = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
    out: dict[str, Any] = {}
    for k, v in container.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


# config keys that name files or folders: compared as the paths they resolve to where they exist here
PATH_KEYS = ("init", "data.spec", "data.val_spec", "data.latents")


def config_changes(saved_yaml: str, cfg: DictConfig) -> list[str]:
    """`key: old -> new` for every key outside :data:`RESUMABLE_KEYS` where the config saved in a checkpoint
    (YAML text) and `cfg` differ. Keys added to the schema since the checkpoint was written take their
    defaults (what that older run used)."""
    saved = OmegaConf.create(saved_yaml)
    schema = OmegaConf.get_type(cfg)
    if schema is not None and schema is not dict:
        try:
            saved = OmegaConf.merge(OmegaConf.structured(schema), saved)
        except Exception:  # a key the schema no longer has: compare what was saved as it is
            pass
    old, new = _flat(saved), _flat(cfg)
    for flat in (old, new):  # `data=dir/` and `data=dir`, relative or absolute: the same folder is no change
        for k in PATH_KEYS:
            if isinstance(flat.get(k), str) and os.path.exists(flat[k]):
                flat[k] = os.path.realpath(flat[k])
    absent = "(absent)"
    return [f"{k}: {old.get(k, absent)} -> {new.get(k, absent)}" for k in sorted(old.keys() | new.keys())
            if k not in RESUMABLE_KEYS and old.get(k, absent) != new.get(k, absent)]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Python, numpy and torch RNG states as tensors and plain lists (loadable with weights_only=True)."""
    version, keys, gauss = random.getstate()
    np_state = np.random.get_state()
    return {"python": [version, list(keys), gauss],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
            "torch": torch.get_rng_state(),
            # this rank's own device only: a resume on a machine with fewer GPUs must not index missing ones
            "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"][0])


class TrainLoop:
    """Shared loop. Subclasses set `self.loader`, add optimizers with `add_optimizer` (each stepped with the
    same warm-up + cosine schedule) and implement the hooks below."""

    data_noun = "training images"  # what one sample of `self.loader` is, for messages

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.dist = dist.init_distributed(cfg.device)
        self.device = self.dist.device
        self.run_dir = Path(cfg.run_dir) / cfg.name
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.step = 0
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.opt_params: dict[str, list[nn.Parameter]] = {}
        self.base_lrs: dict[str, list[float]] = {}
        self.guarded_buffers: list[torch.Tensor] = []
        self.ddp_modules: list[DDP] = []
        # the first non-finite step and its loss terms, kept on the device until a log step reads them
        self._fatal_step = torch.full((), -1, dtype=torch.long, device=self.device)
        self._fatal_terms: dict[str, torch.Tensor] = {}  # restored after a non-finite step (iBOT centers, ...)
        self.amp_dtype = self._amp_dtype(cfg.precision)
        # fp16 needs loss scaling; GradScaler with a fused optimizer skips steps on the device
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None
        self.logger = None
        # every model is built from `seed` alone, so each rank starts from identical weights (EMA copies
        # and the iBOT teacher included, which DDP's broadcast of the student would not reach) ...
        seed_everything(cfg.seed)
        self.build()
        # ... and only then does per-rank randomness begin
        seed_everything(cfg.seed + 1_000_003 * (self.dist.rank + 1))

    # ------------------------------------------------------------------ hooks for subclasses
    def build(self) -> None:
        raise NotImplementedError

    def forward_backward(self, batch: Any, loss_scale: float) -> dict[str, torch.Tensor]:
        """One micro-batch: compute the losses, call `self.backward(loss * loss_scale, name)` once per
        optimizer, return the terms to log (0-dim tensors, on the device; 'loss' is the total)."""
        raise NotImplementedError

    def after_step(self, ok: torch.Tensor) -> None:
        """After the optimizers stepped (`ok`: 0-dim bool tensor, False if the step was skipped)."""

    def state_extra(self) -> dict:
        return {}

    def load_extra(self, state: dict) -> None:
        pass

    def export(self) -> None:
        """Write the deliverable model (rank 0 only)."""

    def on_log_images(self) -> None:
        """Write image grids to the logger (rank 0 only)."""

    def model_signature(self) -> dict:
        """What must match for a checkpoint to be resumable into this run (e.g. the model config)."""
        return {}

    def summary(self) -> str:
        """One line for the console about what is being trained."""
        return ""

    # ------------------------------------------------------------------ helpers
    def _amp_dtype(self, precision: str) -> torch.dtype | None:
        if precision == "auto":
            return torch.bfloat16 if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else None
        choices = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
        if precision not in choices:
            raise ValueError(f"precision must be auto, bf16, fp16 or fp32, got {precision!r}")
        return choices[precision]

    def autocast(self):
        """Mixed-precision autocast when enabled (weights and optimizer stay fp32)."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def step_generator(self, salt: int = 0) -> torch.Generator:
        """A generator seeded by (seed, rank, step): per-step randomness that resume reproduces exactly."""
        g = torch.Generator(device=self.device)
        g.manual_seed(hash((self.cfg.seed, self.dist.rank, self.step, salt)) % 2**62)
        return g

    def wrap(self, module: nn.Module) -> nn.Module:
        """The module a trainer calls: DDP over ranks when distributed, then torch.compile when asked."""
        out = module
        if self.dist.enabled:
            out = DDP(module)
            self.ddp_modules.append(out)
        return torch.compile(out) if self.cfg.compile else out

    def add_optimizer(self, name: str, module: nn.Module, lr: float, weight_decay: float) -> None:
        """AdamW over `module`'s trainable parameters (no decay on biases, norms and tokens). Fused: one
        kernel per step, and it honours `found_inf`, so a skipped step needs no host sync."""
        from tcae.training.optim import param_groups

        groups = param_groups(module, weight_decay, lr)
        opt = torch.optim.AdamW(groups, betas=tuple(self.cfg.optim.betas), fused=True)
        self.optimizers[name] = opt
        self.opt_params[name] = [p for g in groups for p in g["params"]]
        self.base_lrs[name] = [g["lr"] for g in opt.param_groups]

    def backward(self, loss: torch.Tensor, name: str = "model") -> None:
        """Backward of one optimizer's (scaled) loss. The loss's finiteness is recorded for the guard."""
        self._losses_finite = self._losses_finite & torch.isfinite(loss.detach())
        if self.scaler is not None:
            # a non-finite loss must skip the step even if its gradients came out finite: poison them
            loss = loss * torch.where(torch.isfinite(loss.detach()), 1.0, float("nan"))
            loss = self.scaler.scale(loss)
        loss.backward()

    def set_lr(self) -> float:
        o = self.cfg.optim
        mult = warmup_cosine(self.step, self.cfg.steps, o.warmup_steps, o.min_lr_ratio)
        for name, opt in self.optimizers.items():
            for g, base in zip(opt.param_groups, self.base_lrs[name]):
                g["lr"] = base * mult
        return mult

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    # ------------------------------------------------------------------ one optimisation step
    def train_step(self, micro_batches: list) -> dict[str, torch.Tensor]:
        """Forward/backward over the micro-batches (gradients summed; DDP syncs on the last one only), then
        unscale, clip, the finite guard and every optimizer's step. No host sync.

        In bf16/fp32 a step is all or nothing. In fp16 GradScaler skips each optimizer on its own overflow,
        while the EMA, teacher and guarded buffers follow `ok` (every loss and gradient finite)."""
        n = len(micro_batches)
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        saved = [b.clone() for b in self.guarded_buffers]
        self._losses_finite = torch.ones((), dtype=torch.bool, device=self.device)
        sums: dict[str, torch.Tensor] = {}
        for i, batch in enumerate(micro_batches):
            sync = nullcontext() if i == n - 1 or not self.dist.enabled else self._no_sync()
            with sync:
                terms = self.forward_backward(batch, 1.0 / n)
            for k, v in terms.items():
                v = v.detach().float() / n
                sums[k] = sums[k] + v if k in sums else v
        # the loss of any rank decides for all (gradients are all-reduced already; losses are not); after a
        # non-finite step nothing changes any more (the run stops at the next log step)
        ok = dist.all_reduce_(self._losses_finite.to(torch.int32), op="min").bool() & (self._fatal_step < 0)
        fatal = ~ok
        for name, opt in self.optimizers.items():
            if self.scaler is not None:
                self.scaler.unscale_(opt)
            grads = [p.grad for p in self.opt_params[name] if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.device)
            if self.cfg.optim.grad_clip > 0 and grads:
                torch.nn.utils.clip_grads_with_norm_(self.opt_params[name], self.cfg.optim.grad_clip, norm)
            sums[f"grad_norm_{name}" if name != "model" else "grad_norm"] = norm.detach().float()
            finite = torch.isfinite(norm)
            if self.scaler is None:
                fatal = fatal | ~finite  # in fp16, inf gradients are an overflow: the scaler backs off
            ok = ok & finite
        for opt in self.optimizers.values():
            if self.scaler is not None:
                self.scaler.step(opt)  # fused: the skip on overflow happens on the device
            else:
                opt.found_inf = (~ok).float()
                opt.step()
        if self.scaler is not None:
            self.scaler.update()
        for buf, old in zip(self.guarded_buffers, saved):
            buf.copy_(torch.where(ok, buf, old))
        self.after_step(ok)
        self._record_fatal(fatal, sums)
        return sums

    def _no_sync(self) -> ExitStack:
        """Gradient accumulation: no all-reduce until the last micro-batch."""
        stack = ExitStack()
        for m in self.ddp_modules:
            stack.enter_context(m.no_sync())
        return stack

    def _record_fatal(self, fatal: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        """Remember, on the device, the first step whose loss or gradients were non-finite, and its terms."""
        first = self._fatal_step < 0
        newly = fatal & first
        self._fatal_step = torch.where(newly, self.step, self._fatal_step)
        for k, v in terms.items():
            old = self._fatal_terms.get(k, torch.full_like(v, float("nan")))
            self._fatal_terms[k] = torch.where(newly, v, old)

    def _raise_if_fatal(self) -> None:
        """Host check (log and checkpoint steps only)."""
        bad = int(self._fatal_step)
        if bad < 0:
            return
        last = latest_checkpoint(self.ckpt_dir)
        raise NonFiniteLossError(
            f"non-finite loss at step {bad}: "
            + ", ".join(f"{k}={float(v):.4g}" for k, v in self._fatal_terms.items())
            + f". Stopped; that step and any later one changed no weights. The last good checkpoint is "
            f"{last or 'none (no checkpoint yet)'}. Try a lower lr, grad clipping or precision=fp32."
        )

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        st = {
            "step": self.step,
            "signature": self.model_signature(),
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
            "rng": rng_state(),
            "config": OmegaConf.to_yaml(self.cfg),
            **self.state_extra(),
        }
        if self.scaler is not None:
            st["grad_scaler"] = self.scaler.state_dict()
        return st

    def save(self) -> Path | None:
        self._raise_if_fatal()  # never checkpoint after a bad step: the last good checkpoint stays last
        path = None
        if self.is_main:
            path = save_checkpoint(self.state_dict(), self.ckpt_dir, self.step, self.cfg.keep_last)
        dist.barrier()
        return path

    def resume(self) -> None:
        """Load the checkpoint `resume` names (auto: the run directory's latest) if it was trained with this
        config up to :data:`RESUMABLE_KEYS`; `resume=never` deletes the directory's earlier run outputs."""
        mode = str(self.cfg.resume)
        if mode == "never":
            self._start_over()
            return
        path = latest_checkpoint(self.ckpt_dir) if mode == "auto" else Path(mode)
        if path is None:
            return
        if not path.is_file():
            raise FileNotFoundError(f"resume={mode}: checkpoint {path} not found")
        state = load_checkpoint(path)
        if state.get("signature") != self.model_signature():
            raise CheckpointError(
                f"checkpoint {path} was written by a different model config and cannot be resumed:\n"
                f"  checkpoint: {state.get('signature')}\n  this run:   {self.model_signature()}\n"
                f"(use a new name= for a new run, or resume=never to start over in {self.run_dir})"
            )
        changed = config_changes(state.get("config", ""), self.cfg) if state.get("config") else []
        if changed:
            raise RunConfigChanged(
                f"{self.run_dir} holds a run whose checkpoint {path.name} was trained with other settings "
                f"({'; '.join(changed)}); resuming would train those weights on with the new settings, and its "
                f"config.yaml would describe weights it did not produce. Use a new name= for a new run, or "
                f"resume=never to start over in {self.run_dir} (deleting its checkpoints and model). "
                f"Keys a resume may change: {', '.join(sorted(RESUMABLE_KEYS - {'name', 'run_dir', 'resume'}))}."
            )
        self.load_extra(state)
        for k, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][k])
        if self.scaler is not None and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])
        # rank 0's RNG state was saved; each rank re-derives its own from it, as at the start
        set_rng_state(state["rng"])
        if self.dist.rank > 0:
            seed_everything(hash((self.cfg.seed, self.dist.rank, int(state["step"]))) % 2**31)
        self.step = int(state["step"])
        if self.is_main:
            log.info("resumed from %s at step %d", path, self.step)

    def _start_over(self) -> None:
        """resume=never: remove what an earlier run wrote here, so that no checkpoint, model or log of it is
        taken for this run's (rank 0; the others wait)."""
        if self.is_main:
            gone = [name for name in RUN_OUTPUTS if (self.run_dir / name).exists()]
            for name in gone:
                target = self.run_dir / name
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            if gone:
                log.warning("resume=never: deleted the earlier run's %s in %s to start over", ", ".join(gone),
                            self.run_dir)
        dist.barrier()

    # ------------------------------------------------------------------ the loop
    @property
    def grad_accum(self) -> int:
        return int(self.cfg.get("grad_accum", 1))

    def batches(self):
        """Endless micro-batches in a data order fixed by (seed, epoch); resumes mid-epoch at self.step."""
        self.check_data()
        per_epoch = len(self.loader)
        epoch, offset = divmod(self.step * self.grad_accum, per_epoch)
        while True:
            skip = set_loader_epoch(self.loader, epoch, offset)  # streams cannot seek: skip by hand
            for i, batch in enumerate(self.loader):
                if i >= skip:
                    yield batch
            epoch, offset = epoch + 1, 0

    def check_data(self) -> None:
        """Raise ValueError when the data yields no full batch (before the run directory is made)."""
        if len(self.loader) == 0:
            try:
                n = len(self.loader.dataset)
            except TypeError:  # a stream that knows its batches but not its samples
                n = "too few"
            raise ValueError(f"{n} {self.data_noun}, batch_size {self.cfg.data.batch_size}: no full batch; lower "
                             f"batch_size= to at most {n}, or add data")

    def fit(self) -> Path:
        """Train to `steps` in the run directory (resuming it) and export; returns the run directory. Rank 0
        holds the directory's lock (`.lock`, an flock the kernel drops if the process dies) throughout."""
        self.check_data()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with ExitStack() as stack:
            if self.is_main:
                try:
                    stack.enter_context(file_lock(self.run_dir / ".lock", wait=False, record_pid=True))
                except LockBusy as e:
                    who = f"process {e.holder}" if e.holder else "another process"
                    raise RunDirectoryBusy(f"run directory {self.run_dir} is in use by {who} (another tcae training "
                                           "run); wait for it to end, or use another name=") from None
            return self._fit()

    def _fit(self) -> Path:
        cfg = self.cfg
        self.resume()
        start = self.step
        checkpoint_at = set(cfg.get("checkpoint_at") or ())
        o = cfg.optim
        if self.is_main and o.warmup_steps > cfg.steps:
            log.warning("the learning-rate warm-up (optim.warmup_steps=%d) is longer than the run (steps=%d): the "
                        "learning rate only reaches %.3g of lr=%g; lower optim.warmup_steps or train longer",
                        o.warmup_steps, cfg.steps, warmup_cosine(cfg.steps - 1, cfg.steps, o.warmup_steps), o.lr)
        interactive = bool(cfg.progress) and sys.stderr.isatty()
        if self.is_main:
            save_config(cfg, self.run_dir / "config.yaml")
            _truncate_scalars(self.run_dir / "scalars.jsonl", start)  # a resume logs each step once
            self.logger = build_logger(str(cfg.get("logger", "tensorboard")), self.run_dir, cfg, start)
            log.info("%s%s -> %s (config: %s)", self.summary(), f", resumed at step {start}" if start else "",
                     self.run_dir, self.run_dir / "config.yaml")
        bar = tqdm(total=cfg.steps, initial=start, disable=not (self.is_main and interactive),
                   dynamic_ncols=True, desc=cfg.name)
        window: dict[str, torch.Tensor] = {}
        window_steps, t0, t_start, seen = 0, time.perf_counter(), time.perf_counter(), 0
        data = self.batches()
        while self.step < cfg.steps:
            micro = [next(data) for _ in range(self.grad_accum)]
            lr_mult = self.set_lr()
            terms = self.train_step(micro)
            for k, v in terms.items():
                window[k] = window[k] + v if k in window else v
            window_steps += 1
            self.step += 1
            seen += self.images_per_step
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                self._raise_if_fatal()
                names = sorted(window)
                # every rank joins the reduction: the logged terms are global-batch means over the window
                means = dist.all_reduce_mean(torch.stack([window[k] for k in names]) / window_steps).tolist()
                scalars = dict(zip(names, means))
                window, window_steps = {}, 0
                if self.is_main:
                    now = time.perf_counter()
                    rate = seen / max(now - t0, 1e-9)
                    self._log_scalars(scalars, lr_mult, rate)
                    if interactive:
                        bar.set_postfix({**{k: f"{v:.4f}" for k, v in scalars.items()}, "img/s": f"{rate:.1f}"})
                    else:
                        eta = (now - t_start) / (self.step - start) * (cfg.steps - self.step)
                        log.info("step %d/%d | %s | %.1f img/s | ETA %s", self.step, cfg.steps,
                                 " ".join(f"{k} {v:.4g}" for k, v in scalars.items()), rate,
                                 timedelta(seconds=round(eta)))
            if self.is_main and cfg.image_every and self.step % cfg.image_every == 0:
                self.on_log_images()
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps or self.step in checkpoint_at:
                self.save()
            bar.update(1)
        bar.close()
        if self.is_main:
            self.on_log_images()
            self.export()
            self.logger.close()
        dist.barrier()
        return self.run_dir

    def _log_scalars(self, scalars: dict[str, float], lr_mult: float, rate: float) -> None:
        row = {"step": self.step, "lr_mult": lr_mult, "images_per_s": rate, **scalars}
        self.logger.log({f"train/{k}": v for k, v in row.items() if k != "step"}, self.step)
        with open(self.run_dir / "scalars.jsonl", "a") as f:  # for plots without TensorBoard
            f.write(json.dumps(row) + "\n")

    @property
    def micro_batch_size(self) -> int:
        """Per-rank batch of one forward: the global batch over ranks and gradient-accumulation steps."""
        b, world, accum = self.cfg.data.batch_size, self.dist.world_size, self.grad_accum
        if accum < 1 or b % (world * accum):
            raise ValueError(f"batch_size={b} is not divisible by {world} rank(s) x grad_accum={accum}")
        return b // (world * accum)

    @property
    def images_per_step(self) -> int:
        """Images per optimisation step over all ranks (for the images/s figure)."""
        return self.cfg.data.batch_size


def _truncate_scalars(path: Path, step: int) -> None:
    """Drop the rows after `step` (logged after the checkpoint a resume starts from)."""
    if not path.is_file():
        return
    rows = path.read_text().splitlines()
    keep = [r for r in rows if r.strip() and json.loads(r).get("step", 0) <= step]
    if len(keep) != len(rows):
        write_text_atomic(path, "".join(r + "\n" for r in keep))
