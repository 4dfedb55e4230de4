"""Run configs: typed dataclass defaults <- a YAML file <- `key=value` overrides (OmegaConf).

A misspelt key anywhere is an error that names it; a value of the wrong type (`steps=abc`) is an
error that says which type the key takes; a value out of range (`steps=-5`, `ssl.num_local=-1`,
`precision=fp8`) is refused by the rules of :data:`FIELD_RULES`, checked once after every merge.
Everyday keys have short top-level aliases (`lr=3e-4` means `optim.lr=3e-4`); everything else is set
by its dotted path.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from tcae.configs import CONFIG_DIR, list_configs
from tcae.diffusion.dit import DiTConfig
from tcae.models.tcae import TCAEConfig


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


def _optional_fields(cls: type, name: str, extra: list[tuple]) -> type:
    """A dataclass with every field of `cls` optional (None = keep the preset's value), plus `extra`.

    Types come from each field's default (OmegaConf then type-checks overrides); fields whose
    default is None accept any value and are checked when the model is built."""
    typed = []
    for f in dataclasses.fields(cls):
        kind = type(f.default) if f.default is not None else Any
        typed.append((f.name, Any if kind is Any else kind | None, field(default=None)))
    return dataclasses.make_dataclass(name, extra + typed)


# `model.name` picks a preset; any TCAEConfig field (`model.staged=false`) overrides it.
# `model.name` None means tcae-tiny, unless `init=` gives the model.
ModelSection = _optional_fields(TCAEConfig, "ModelSection", [("name", str | None, field(default=None))])
DEFAULT_MODEL = "tcae-tiny"


def model_overrides(section: Any) -> dict[str, Any]:
    """The TCAEConfig overrides set in a ModelSection (fields that are not None)."""
    d = OmegaConf.to_container(section) if isinstance(section, DictConfig) else dataclasses.asdict(section)
    return {k: v for k, v in d.items() if k != "name" and v is not None}


@dataclass
class DataConfig:
    spec: str = "builtin:photos"  # data spec for training (see tcae.data.build_dataset)
    val_spec: str | None = None  # None: the train spec's val split where it has one
    image_size: int = 64
    batch_size: int = 16  # global batch across all DDP ranks
    num_workers: int = 0
    epoch_size: int | None = None  # virtual epoch length for infinite built-in datasets


@dataclass
class SSLConfig:
    """iBOT joint training (PAPER.md; defaults from iBOT/DINOv2)."""

    enabled: bool = True
    out_dim: int = 4096
    patch_out_dim: int = 4096
    shared_head: bool = True  # iBOT shares the [CLS] and patch head
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    num_global: int = 2
    num_local: int = 4
    local_size: int | None = None  # None: largest valid size <= 0.4 x image_size
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    # DINO's colour jitter / grayscale / blur / solarisation on global crops 1.. and the local crops
    # (crop 0, the reconstruction input, stays clean); on in the GPU configs, off in the tiny CPU ones
    color_augment: bool = False
    # global crop 0, the reconstruction input: "crop", a random resized crop like the other global views
    # (global_scale, flip); "full", the whole image resized to the training size, not flipped: the images
    # evaluation reconstructs (on builtin:fashion exactly the images a run without SSL trains on)
    recon_view: str = "crop"
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    mask_sample_prob: float = 1.0  # share of the masked-eligible global views (all but crop 0) masked
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    teacher_temp_warmup_steps: int = 1000
    momentum: float = 0.996  # teacher EMA momentum, cosine to 1 over the run
    centering: str = "centering"  # or "sinkhorn"
    cls_weight: float = 1.0
    patch_weight: float = 1.0


@dataclass
class LossConfig:
    alpha: float = 1.0  # weight of L_rec in alpha * L_rec + L_iBOT
    l1_weight: float = 1.0
    perceptual: str = "lpips"  # or "none"
    perceptual_weight: float = 1.0
    lpips_weights: str | None = None  # VGG16 file; None: torch hub cache
    gan: bool = False
    gan_weight: float = 0.5
    gan_start: int = 0  # step at which the adversarial loss (and discriminator training) starts
    adaptive_gan_weight: bool = True
    lecam_weight: float = 0.0
    disc_channels: int = 64
    disc_layers: int = 3
    disc_lr: float | None = None  # None: the generator's lr


@dataclass
class OptimConfig:
    lr: float = 3e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0


@dataclass
class LoopConfig:
    """Settings of the shared training loop (tcae.training.loop), for every trainer."""

    name: str = "run"
    run_dir: str = "runs"
    steps: int = 1000
    seed: int = 0
    device: str = "auto"  # auto: cuda if available
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU), bf16, fp16 (with a gradient scaler), fp32
    compile: bool = False
    grad_accum: int = 1  # micro-batches per optimizer step (data.batch_size stays the global batch)
    logger: str = "tensorboard"  # or wandb (when installed) or none; scalars.jsonl is always written
    ema_decay: float = 0.999
    ema_warmup: bool = True  # decay rising with the step (tcae.training.ema.warmup_decay); false: ema_decay throughout
    log_every: int = 10
    image_every: int = 0
    checkpoint_every: int = 500
    # also checkpoint at these steps (e.g. dense early snapshots of a DiT's convergence; with keep_last=0 all stay)
    checkpoint_at: list[int] = field(default_factory=list)
    keep_last: int = 3
    resume: str = "auto"  # auto: continue runs/NAME if it has a checkpoint; never; or a checkpoint path
    progress: bool = True


@dataclass
class TrainConfig(LoopConfig):
    """Tokenizer training: phase `joint` (reconstruction + iBOT) or `decoder` (encoder frozen)."""

    name: str = "tcae"
    phase: str = "joint"
    init: str | None = None  # a run dir or model dir: phase 2's encoder, or phase 1's warm start
    model: ModelSection = field(default_factory=ModelSection)  # type: ignore[valid-type]
    data: DataConfig = field(default_factory=DataConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema_decay: float = 0.999
    image_every: int = 200
    checkpoint_every: int = 200
    latent_stats_images: int = 1024  # training images whose latents set the exported model's mean/std (0: none)
    # phase 2 only: "all" trains the whole decoder; "head" only its last stage and output layers (DC-AE's local
    # refinement: a GAN on the head, the latent space and the rest of the decoder left as phase 1 made them)
    decoder_part: str = "all"


DiTModelSection = _optional_fields(DiTConfig, "DiTModelSection", [("name", str, field(default="dit-tiny"))])


@dataclass
class LatentDataConfig:
    latents: str = "latents"  # a directory written by `tcae cache-latents`
    batch_size: int = 64  # global
    num_workers: int = 0


@dataclass
class DiTTrainConfig(LoopConfig):
    """Diffusion-transformer training (`tcae train-dit`) on a latent cache."""

    name: str = "dit"
    model: DiTModelSection = field(default_factory=DiTModelSection)  # type: ignore[valid-type]
    data: LatentDataConfig = field(default_factory=LatentDataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, weight_decay=0.0, warmup_steps=0,
                                                                   min_lr_ratio=1.0, betas=(0.9, 0.95)))
    timesteps: str = "logit_normal"  # or "uniform"
    ema_decay: float = 0.9999


# ---------------------------------------------------------------------- value rules
@dataclass(frozen=True)
class Rule:
    """A check on one config value: `ok(value)`, and what a valid value is (for the message)."""

    ok: Callable[[Any], bool]
    expected: str


POSITIVE = Rule(lambda v: v > 0, "must be > 0")
NON_NEGATIVE = Rule(lambda v: v >= 0, "must be >= 0")
UNIT = Rule(lambda v: 0 <= v <= 1, "must be in [0, 1]")
UNIT_OPEN = Rule(lambda v: 0 <= v < 1, "must be in [0, 1)")


def one_of(*choices: str) -> Rule:
    return Rule(lambda v: v in choices, f"must be one of {', '.join(choices)}")


def at_least(lo: int) -> Rule:
    return Rule(lambda v: v >= lo, f"must be >= {lo}")


def ordered_pair(lo: float, hi: float, open_lo: bool = False) -> Rule:
    """A (min, max) pair with lo <= min <= max <= hi (lo < min when open_lo)."""
    left = "(" if open_lo else "["
    return Rule(lambda v: len(v) == 2 and (v[0] > lo if open_lo else v[0] >= lo) and v[0] <= v[1] <= hi,
                f"must be a pair [min, max] with min <= max, both in {left}{lo}, {hi}]")


# dataclass -> field -> rule; a subclass is checked against its bases' rules too (DiTTrainConfig gets
# LoopConfig's). None, where a field allows it, is never checked. Trainers with their own sections add
# theirs here (tcae.training.dit).
FIELD_RULES: dict[type, dict[str, Rule]] = {
    LoopConfig: {
        "steps": POSITIVE, "log_every": POSITIVE, "image_every": NON_NEGATIVE, "checkpoint_every": POSITIVE,
        "keep_last": NON_NEGATIVE, "ema_decay": UNIT, "precision": one_of("auto", "bf16", "fp16", "fp32"),
    },
    TrainConfig: {"phase": one_of("joint", "decoder"), "decoder_part": one_of("all", "head")},
    DataConfig: {"image_size": POSITIVE, "batch_size": POSITIVE, "num_workers": NON_NEGATIVE,
                 "epoch_size": POSITIVE},
    SSLConfig: {
        "out_dim": POSITIVE, "patch_out_dim": POSITIVE, "head_hidden_dim": POSITIVE, "head_bottleneck_dim": POSITIVE,
        "num_global": at_least(1), "num_local": NON_NEGATIVE, "local_size": POSITIVE,
        "global_scale": ordered_pair(0.0, 1.0, open_lo=True), "local_scale": ordered_pair(0.0, 1.0, open_lo=True),
        "mask_ratio": ordered_pair(0.0, 1.0), "mask_sample_prob": UNIT, "student_temp": POSITIVE,
        "teacher_temp": POSITIVE, "warmup_teacher_temp": POSITIVE, "teacher_temp_warmup_steps": NON_NEGATIVE,
        "momentum": UNIT, "centering": one_of("centering", "sinkhorn"), "cls_weight": NON_NEGATIVE,
        "patch_weight": NON_NEGATIVE, "recon_view": one_of("crop", "full"),
    },
    LossConfig: {
        "alpha": NON_NEGATIVE, "l1_weight": NON_NEGATIVE, "perceptual": one_of("lpips", "none"),
        "perceptual_weight": NON_NEGATIVE, "gan_weight": NON_NEGATIVE, "gan_start": NON_NEGATIVE,
        "lecam_weight": NON_NEGATIVE, "disc_channels": POSITIVE, "disc_layers": POSITIVE, "disc_lr": POSITIVE,
    },
    OptimConfig: {
        "lr": POSITIVE, "weight_decay": NON_NEGATIVE, "betas": Rule(lambda v: all(0 <= b < 1 for b in v),
                                                                    "must be two values in [0, 1)"),
        "warmup_steps": NON_NEGATIVE, "min_lr_ratio": UNIT, "grad_clip": NON_NEGATIVE,
    },
    LatentDataConfig: {"batch_size": POSITIVE, "num_workers": NON_NEGATIVE},
    DiTTrainConfig: {"timesteps": one_of("logit_normal", "uniform")},
}


def _rules_for(cls: type) -> dict[str, Rule]:
    rules: dict[str, Rule] = {}
    for base in reversed(cls.__mro__):
        rules.update(FIELD_RULES.get(base, {}))
    return rules


def config_violations(cfg: DictConfig, schema: type, prefix: str = "") -> list[str]:
    """`key=value (what it must be)` for every value of `cfg` (structured as `schema`) that breaks a rule."""
    out = []
    rules = _rules_for(schema)
    for f in dataclasses.fields(schema):
        value = cfg[f.name]
        if isinstance(value, DictConfig):
            sub = OmegaConf.get_type(cfg, f.name)
            if dataclasses.is_dataclass(sub):
                out += config_violations(value, sub, f"{prefix}{f.name}.")
            continue
        rule = rules.get(f.name)
        if rule is None or value is None:
            continue
        plain = list(value) if OmegaConf.is_config(value) else value  # a tuple field
        try:
            ok = rule.ok(plain)
        except TypeError:
            ok = False
        if not ok:
            out.append(f"{prefix}{f.name}={plain} ({rule.expected})")
    return out


TRAIN_ALIASES = {
    "data": "data.spec", "model": "model.name", "image_size": "data.image_size", "batch_size": "data.batch_size",
    "lr": "optim.lr", "ssl": "ssl.enabled", "perceptual": "loss.perceptual", "gan": "loss.gan",
}
DIT_ALIASES = {"latents": "data.latents", "model": "model.name", "batch_size": "data.batch_size", "lr": "optim.lr"}


def resolve_config_path(name_or_path: str) -> Path:
    """A YAML path, or the name of a config shipped in tcae/configs (`tiny`, `b`, ...)."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise ConfigError(f"config file {p} not found")
        return p
    shipped = CONFIG_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    raise ConfigError(f"unknown config {name_or_path!r}: not a file and not a shipped config "
                      f"({', '.join(list_configs())})")


def _unknown_key(err: Exception, schema: type, where: str) -> ConfigError:
    key = getattr(err, "full_key", None) or getattr(err, "key", None) or str(err)
    known = _all_keys(OmegaConf.structured(schema))
    close = difflib.get_close_matches(str(key), known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"{where}: unknown config key {key!r}{hint}")


_TYPE_WORDS = {"IntegerNode": "an integer", "FloatNode": "a number", "BooleanNode": "true or false",
               "StringNode": "a string"}


def _expected_type(cfg: DictConfig, key: str) -> str | None:
    """What the schema node at dotted `key` takes, in words ("an integer", ...); None if unknown."""
    *parents, last = key.split(".")
    node: Any = cfg
    try:
        for part in parents:
            node = node[part]
        leaf = node._get_node(last)
    except Exception:  # the key itself is unknown: the caller reports that instead
        return None
    if leaf is None:
        return None
    if OmegaConf.is_config(leaf):  # a tuple / list field (TupleConfig in omegaconf 2.4, ListConfig before)
        items = list(leaf)
        if not items:
            return "a list such as [1, 2]"
        kind = "numbers" if all(isinstance(v, (int, float)) for v in items) else "values"
        return f"a list of {len(items)} {kind} like {items}"
    return _TYPE_WORDS.get(type(leaf).__name__)


def _bad_value(err: Exception, cfg: DictConfig, key: str, value: str, where: str | None) -> ConfigError:
    expected = _expected_type(cfg, key)
    what = f"is not {expected}" if expected else f"is not valid ({str(err).splitlines()[0]})"
    return ConfigError(f"{where + ': ' if where else ''}{key}={value}: {value!r} {what}")


def _all_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    out = []
    for k in cfg:
        v = cfg[k] if not OmegaConf.is_missing(cfg, k) else None
        full = f"{prefix}{k}"
        out.append(full)
        if isinstance(v, DictConfig):
            out += _all_keys(v, full + ".")
    return out


def _merge(merged: DictConfig, other: DictConfig, schema: type, where: str | None, key: str | None = None,
           value: str | None = None) -> DictConfig:
    try:
        return OmegaConf.merge(merged, other)
    except (ConfigKeyError, ConfigAttributeError) as e:
        raise _unknown_key(e, schema, where or "override") from None
    except ValidationError as e:
        key = key or getattr(e, "full_key", None) or "?"
        if value is None:
            value = str(OmegaConf.select(other, key, default="?"))
        raise _bad_value(e, merged, key, value, where) from None


def load_config(schema: type, config: str | None, overrides: list[str] = (),
                aliases: dict[str, str] | None = None) -> DictConfig:
    """defaults(schema) <- YAML `config` <- overrides ("key=value"); strict about keys, types and values.

    Raises ConfigError naming the key for an unknown key, a value of the wrong type, or a value that
    breaks a rule of :data:`FIELD_RULES` (all such values at once)."""
    aliases = aliases or {}
    base = OmegaConf.structured(schema)
    OmegaConf.set_struct(base, True)
    merged = base
    if config is not None:
        path = resolve_config_path(config)
        merged = _merge(merged, OmegaConf.load(path), schema, f"config {config}")
    for item in overrides:  # one at a time, so that an error names the override as it was typed
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        full = aliases.get(key, key)
        merged = _merge(merged, OmegaConf.from_dotlist([f"{full}={value}"]), schema, None, full, value)
    bad = config_violations(merged, schema)
    if bad:
        raise ConfigError("invalid config value" + ("s" if len(bad) > 1 else "") + ": " + "; ".join(bad))
    return merged


def explicit_keys(config: str | None, overrides: list[str], aliases: dict[str, str] | None = None) -> set[str]:
    """Dotted keys the user set: on the command line (`overrides`, aliases resolved) or in their own YAML
    `config` (a shipped config's values are defaults, not the user's choice)."""
    aliases = aliases or {}
    keys = {aliases.get(k, k) for k, sep, _ in (item.partition("=") for item in overrides) if sep}
    if config is not None:
        path = resolve_config_path(config)
        if path.resolve().parent != CONFIG_DIR.resolve():
            keys |= set(_flat_keys(OmegaConf.load(path)))
    return keys


def _flat_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    out = []
    for k, v in cfg.items():
        out += _flat_keys(v, f"{prefix}{k}.") if isinstance(v, DictConfig) else [f"{prefix}{k}"]
    return out


# the data settings phase 2 takes from the phase-1 run it starts from (unless the user set them)
INHERITED_DATA_KEYS = ("data.spec", "data.val_spec", "data.image_size")


def init_data(init: str) -> tuple[dict[str, Any], str] | None:
    """({dotted key: value} of INHERITED_DATA_KEYS, where they come from) for the run or model `init` names:
    a run directory's config.yaml, else a model directory's model card (`training_data`, `image_size`);
    None when it records neither (a Hub id, a hand-made model directory)."""
    from tcae.models.card import read_card_info

    path = Path(init)
    for run in (path, path.parent if path.name == "model" else None):
        if run is not None and (run / "config.yaml").is_file() and (run / "model").is_dir():
            saved = OmegaConf.load(run / "config.yaml")
            values = {k: OmegaConf.select(saved, k) for k in INHERITED_DATA_KEYS}
            if values["data.spec"] is not None:
                return {k: v for k, v in values.items() if v is not None or k == "data.val_spec"}, \
                    f"the run {run} (its config.yaml)"
    card = read_card_info(path / "README.md") if path.is_dir() else {}
    if card.get("training_data"):
        values = {"data.spec": card["training_data"], "data.val_spec": None}
        if card.get("image_size"):
            values["data.image_size"] = int(card["image_size"])
        return values, f"the model card of {path}"
    return None


def inherit_init_data(cfg: DictConfig, explicit: set[str]) -> str:
    """Phase 2: set the data spec, val spec and image size of `cfg` to those of the run `cfg.init` starts
    from, except the keys in `explicit` (set by the user). Returns a sentence saying which data is used and
    where each setting comes from (for the log)."""
    found = init_data(str(cfg.init)) if cfg.init else None
    taken = []
    if found is not None:
        values, source = found
        for key, value in values.items():
            if key not in explicit:
                OmegaConf.update(cfg, key, value, merge=False)
                taken.append(key)
    d = cfg.data
    parts = [f"{', '.join(k.split('.')[1] for k in taken)} from {found[1]} that init= starts from"] if taken else []
    given = sorted(explicit & set(INHERITED_DATA_KEYS))
    if given:
        parts.append(f"{', '.join(given)} as given")
    if found is None:
        parts.append(f"from the config: init={cfg.init} records no training data")
    elif taken:
        parts.append("data= and image_size= choose others")
    val = f", val {d.val_spec}" if d.val_spec else ""
    return f"data {d.spec} at {d.image_size} px{val} ({'; '.join(parts)})"


def save_config(cfg: DictConfig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(cfg))


# ---------------------------------------------------------------------- checks beyond the schema
def ssl_refusal(model: str) -> str:
    """Why iBOT cannot train `model` (a model without a token sequence), in one sentence."""
    return (f"ssl=true cannot train {model}: iBOT's [CLS] and patch heads read the encoder's token sequence, and a "
            "convolutional autoencoder such as DC-AE has none (it encodes to a feature map); set ssl=false")


def _init_compression(init: str) -> int | None:
    """The compression f of the phase-1 model `init` names, read from its config.json (None for a Hub id:
    the trainer checks it once downloaded)."""
    from tcae.models.checkpoint_io import (
        CONFIG_NAME,
        check_local_model_path,
        dataclass_from_dict,
        read_config_json,
        resolve_run_dir,
    )

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
    raw = read_config_json(config, "TC-AE")
    if raw.get("_class_name"):  # a diffusers folder (a DC-AE that tcae trained): the trainer checks the rest
        from tcae.models.dcae import dcae_compression

        return dcae_compression(raw) if "encoder_block_out_channels" in raw else None
    return dataclass_from_dict(TCAEConfig, raw, "TC-AE", str(config)).compression


def check_tokenizer_inputs(cfg: Any) -> None:
    """The checks a tokenizer config needs beyond its schema and FIELD_RULES: the data specs name data that is
    there, and data.image_size suits the model (its compression f). Run by the CLI before anything is printed."""
    from tcae.data import check_spec
    from tcae.models import preset_config
    from tcae.models.dcae import dcae_compression, dcae_preset_config, is_dcae_name

    check_spec(cfg.data.spec, train=True)
    if cfg.data.val_spec:
        check_spec(cfg.data.val_spec, train=False)
    size = cfg.data.image_size
    if cfg.phase == "decoder":
        if not cfg.init:
            raise ValueError("finetune-decoder needs init=RUN_OR_MODEL_DIR (the phase-1 run or model)")
        f = _init_compression(cfg.init)
    elif is_dcae_name(cfg.model.name):
        overrides = model_overrides(cfg.model)
        overrides.pop("image_size", None)
        f = dcae_compression(dcae_preset_config(cfg.model.name, **overrides))  # also checks the overrides
        if cfg.ssl.enabled:
            raise ConfigError(ssl_refusal(f"the DC-AE model.name={cfg.model.name}"))
    else:
        overrides = model_overrides(cfg.model)
        nominal = overrides.pop("image_size", None)
        f = preset_config(cfg.model.name, **overrides).compression  # also checks the architecture
    if f is not None and size % f:
        lo = max(f, size // f * f)
        raise ValueError(f"data.image_size={size} is not divisible by the model's compression f={f} "
                         f"(nearest valid: {lo} or {lo + f})")
    if cfg.phase != "decoder" and not is_dcae_name(cfg.model.name):
        preset_config(cfg.model.name, **overrides, image_size=nominal or size)


def check_dit_inputs(cfg: Any) -> None:
    """The latent cache a DiT config names is there and complete."""
    from tcae.diffusion.latents import read_latent_meta

    meta = read_latent_meta(cfg.data.latents)  # FileNotFoundError naming meta.json
    if not meta.get("complete"):
        raise ValueError(f"{cfg.data.latents} is an incomplete latent cache; rerun `tcae cache-latents` to finish it")
