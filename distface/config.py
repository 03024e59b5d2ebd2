"""Typed experiment config: one dataclass per YAML section, same names, defaults here.

`parse_config(path, overrides)` reads YAML, applies `--set section.key=value` overrides and checks what needs no
registry (types, ranges, paths, rules between keys); every problem raises ConfigError naming the key, which the
CLIs turn into one line on stderr and exit code 2. This module is plain data at the bottom of the import graph:
it imports nothing from distface. Names that components own (backbones, heads, engines, ...) are checked where
config meets the registries, `distface.checked_config.load_config`, the loader the CLIs use.
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class InputError(ValueError):
    """Bad input from the user (a config value, a data file, a pairs list, a checkpoint that does not fit): the CLIs
    print it as one line and exit 2. Anything else that goes wrong keeps its traceback."""


class ConfigError(InputError):
    """A bad config value; the message starts with the dotted key."""


@dataclass
class DataConfig:
    source: str = "orl"  # see distface.data.sources.SOURCES
    # folder: image root, one sub-folder per identity; recordio: folder with train.rec/.idx (or the .rec);
    # tfrecord: a .tfrecord file, a folder of them or a glob
    path: str = ""
    train_identities: list[int] = field(default_factory=lambda: list(range(1, 31)))  # ORL s1..s30
    # The set's published size (recipes): a run stops with a clear error when its source differs; `distface plan`
    # uses them without reading the data. 0: whatever the source holds.
    num_classes: int = 0
    num_images: int = 0
    synthetic_identities: int = 100
    synthetic_images_per_identity: int = 10
    batch_size: int = 32  # per replica
    # Triplet training (loss.type: triplet): batches of P identities x K images; batch_size must be P*K.
    identities_per_batch: int = 8
    images_per_identity: int = 4
    flip: bool = True
    # Training-time augmentation after the resize (distface.data.augment.POLICIES): none | faces (random
    # scale-and-shift crop, rotation <= 10 degrees, brightness and contrast), seeded per image like the flip
    augment: str = "none"
    bad_images: str = "fail"  # an image that cannot be decoded: fail names it and stops; skip drops it, counted
    # Keep the shard's decoded images in memory: auto when they fit in cache_budget_gib, true (stop before training
    # when they do not), false. 0 budget: distface.data.pipeline.CACHE_FRACTION of the machine's available memory.
    cache: typing.Literal["auto", "true", "false"] = "auto"
    cache_budget_gib: float = 0.0


@dataclass
class ModelConfig:
    backbone: str = "debug"  # see distface.models.BACKBONES
    image_size: list[int] = field(default_factory=lambda: [112, 96])  # height, width
    embedding_size: int = 128
    dropout: float = 0.0
    sync_batchnorm: bool = False  # BatchNorm statistics over the global batch (the engine's collectives)


@dataclass
class HeadConfig:
    type: str = "arcface"  # see distface.heads.MARGINS
    # sharded: each replica holds C/N classes (model parallel); replicated: every replica holds all C (data parallel)
    sharding: str = "sharded"
    sample_rate: float = 1.0  # Partial FC: fraction of each block's classes used per step (positives always)
    scale: float = 30.0
    m1: float = 1.0  # multiplicative angular margin (SphereFace)
    m2: float = 0.5  # additive angular margin (ArcFace)
    m3: float = 0.0  # additive cosine margin (CosFace)
    easy_margin: bool = False
    sphere_m: int = 4
    lambda_base: float = 1000.0
    lambda_gamma: float = 0.12
    lambda_power: float = 1.0
    lambda_min: float = 5.0
    # Margin warm-up: plain normalised softmax until warmup_start, then the margin ramps in linearly.
    margin_warmup_start: int = 0
    margin_warmup_steps: int = 0
    # exact: the margin is differentiated; straight_through: the target logit carries the margin in the forward and
    # the gradient of the plain s*cos θ (arcface_torch's CombinedMarginLoss, which applies it under no_grad)
    margin_gradient: typing.Literal["exact", "straight_through"] = "exact"


@dataclass
class LossConfig:
    # see distface.training.objectives: classification (head + softmax CE) | triplet (no head)
    type: str = "classification"
    label_smoothing: float = 0.0
    center_weight: float = 0.0  # lambda of the center loss; 0 disables it
    center_alpha: float = 0.5
    center_variant: str = "paper"  # see distface.losses.center.CENTER_UPDATE_VARIANTS
    # sharded: replica r holds the centers of its head's class block r; replicated: every replica holds all C;
    # auto: sharded when head.sharding is sharded
    center_sharding: str = "auto"
    triplet_margin: float = 0.2
    triplet_distance: str = "squared_l2"  # see distface.losses.triplet.DISTANCES
    triplet_mining: str = "semi_hard"  # see distface.losses.triplet.MININGS
    triplet_cross_replica: bool = True  # mine negatives in the all-gathered global batch


@dataclass
class OptimConfig:
    # sgd: torch.optim.SGD's rule (weight decay coupled into the gradient, the published recipes' optimizer);
    # sgdw: Keras' SGD with decoupled weight decay; adamw: torch.optim.AdamW's rule (distface.training.rules)
    type: typing.Literal["sgd", "sgdw", "adamw"] = "sgd"
    lr: float = 0.1  # see docs/scaling.md, "Batch size and learning rate"
    # > 0: the global batch (per-replica batch x replicas x accumulate_steps) optim.lr was tuned for; a run with
    # another global batch uses lr x global / lr_global_batch (the linear rule), printed at start. 0: lr as given.
    lr_global_batch: int = 0
    momentum: float = 0.9  # sgd, sgdw
    weight_decay: float = 5e-4
    beta1: float = 0.9  # adamw
    beta2: float = 0.999  # adamw
    epsilon: float = 1e-8  # adamw
    warmup_steps: int = 100
    warmup_epochs: float = 0.0  # > 0: the warm-up in epochs of the training set (replaces warmup_steps)
    schedule: str = "cosine"  # cosine | step | constant | poly
    decay_steps: list[int] = field(default_factory=list)  # for schedule=step
    decay_rate: float = 0.1
    poly_power: float = 1.0  # for schedule=poly: (1 - t/T)^power after the warm-up
    clip_norm: float = 0.0  # gradient-norm clipping; 0 disables it
    clip_scope: typing.Literal["all", "backbone"] = "all"  # whose gradient norm is clipped (the head's or not)
    # Partial FC (head.sample_rate < 1): dense decays every row of the block each step (the published recipe),
    # lazy updates only the sampled rows and their momentum (a step costs the sampled work alone)
    head_update: str = "dense"
    # a full sharded block's update: auto computes and writes it a range of rows at a time in the block's own buffer
    # (no block-sized gradient), off applies the dense gradient (the reference; more memory, fewer kernels)
    head_update_in_place: typing.Literal["auto", "off"] = "auto"


@dataclass
class TrainConfig:
    steps: int = 1000  # optimizer updates
    epochs: float = 0.0  # > 0: train this many epochs of the training set (replaces steps)
    accumulate_steps: int = 1  # micro-batches of data.batch_size per optimizer update (gradients summed)
    seed: int = 0
    strategy: str = "auto"  # see distface.parallel.STRATEGIES
    cpu_replicas: int = 0  # mirrored without GPUs: split the CPU into this many logical devices (tests, debug)
    out_dir: str = ""  # empty: a new runs/<config name>-<YYYYmmdd-HHMMSS> (distface.training.run_folder)
    log_every: int = 20
    eval_every: int = 0  # 0: only at the end
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    mixed_precision: str = "none"  # none | bfloat16 | float16 (backbone only; head, margins, losses in float32)
    max_bad_steps: int = 10  # stop after this many consecutive steps with a non-finite loss or gradient


@dataclass
class EvalConfig:
    pairs: str = ""  # LFW-format pairs file; empty: ORL s31..s40 pairs written to out_dir
    images: str = ""  # image root the pairs refer to; empty: the ORL folder
    identities: list[int] = field(default_factory=lambda: list(range(31, 41)))  # ORL ids for the default pairs
    bin_sets: list[str] = field(default_factory=list)  # insightface .bin sets (lfw.bin, cfp_fp.bin, ...)
    folds: int = 10
    flip: bool = True  # average the embeddings of the image and its mirror
    batch_size: int = 64
    pairs_seed: int = 0


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


SCHEDULES = ("cosine", "step", "constant", "poly")
AUGMENT_POLICIES = ("none", "faces")  # the names of distface.data.augment.POLICIES (config imports no distface)


def shipped_configs() -> dict[str, Path]:
    """{name: file} of the configs that ship inside the package (distface/configs/*.yaml)."""
    folder = importlib.resources.files("distface") / "configs"
    return {f.name.removesuffix(".yaml"): Path(str(f)) for f in folder.iterdir() if f.name.endswith(".yaml")}


def config_file(name: str | Path) -> Path:
    """A --config value as a file: the file, when one exists at that path, else the shipped config of that name
    (`orl_arcface` or `orl_arcface.yaml`)."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = shipped_configs()
    key = path.name.removesuffix(".yaml")
    if path.parent == Path(".") and key in shipped:
        return shipped[key]
    raise ConfigError(f"--config: no such file: {name} (nor a shipped config; shipped: {', '.join(sorted(shipped))})")


def parse_config(path: str | Path | None = None, overrides: typing.Sequence[str] = (),
                 data_path: bool = True) -> Config:
    """Config from a YAML file (or the defaults) plus `section.key=value` overrides, checked without registries
    (data_path: see validate)."""
    raw: dict = {}
    if path is not None:
        path = config_file(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"--config: {path} is not valid YAML: {_yaml_problem(err)}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"--config: {path} must hold a mapping of sections")
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        section, _, name = key.partition(".")
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"{section}: must be a mapping")
        try:
            raw[section][name] = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"{key}: --set value {text!r} is not valid YAML: {_yaml_problem(err)}") from None
    config = _build(Config, raw, "")
    validate(config, data_path)
    return config


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: the problem and where (line and column count from 1)."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(err, 'problem', None) or err}{where}"


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def _build(cls, raw, prefix: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise ConfigError(f"{prefix}{key}: unknown key (known: {', '.join(sorted(names))})")
    values = {}
    for key, value in raw.items():
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            values[key] = _build(kind, value or {}, f"{prefix}{key}.")
        else:
            values[key] = _coerce(value, kind, f"{prefix}{key}")
    return cls(**values)


def _coerce(value, kind, key: str):
    origin = typing.get_origin(kind)
    if origin is list:
        (item,) = typing.get_args(kind)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is typing.Literal:  # a choice of strings
        choices = typing.get_args(kind)
        text = value
        if isinstance(value, bool):  # YAML 1.1 reads a bare true / false, on / off, yes / no as a bool
            spellings = ("true", "on", "yes") if value else ("false", "off", "no")
            text = next((t for t in spellings if t in choices), spellings[0])
        if text not in choices:
            raise ConfigError(f"{key}: expected one of {', '.join(choices)}, got {value!r}")
        return text
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"config type {kind} of {key} is not supported")


def require(ok: bool, key: str, reason: str) -> None:
    """Raises ConfigError("key: reason") unless ok."""
    if not ok:
        raise ConfigError(f"{key}: {reason}")


def validate(c: Config, data_path: bool = True) -> None:
    """Impossible values stop the run before anything is written (names owned by registries: checked_config.check).
    data_path=False leaves out data.path's checks (set, and there): `distface plan` reads no data."""
    d = c.data
    if data_path and d.source in ("folder", "recordio", "tfrecord"):
        require(bool(d.path), "data.path", f"required when data.source is {d.source}")
    if data_path and d.source == "folder":
        require(Path(d.path).is_dir(), "data.path", f"no such directory: {d.path}")
    if data_path and d.source == "recordio":
        require(Path(d.path).exists(), "data.path", f"no such file or directory: {d.path}")
    if d.source == "orl":
        require(bool(d.train_identities), "data.train_identities", "must not be empty")
        require(all(1 <= i <= 40 for i in d.train_identities), "data.train_identities", "ORL ids are 1..40")
    if d.source == "synthetic":
        require(d.synthetic_identities >= 2, "data.synthetic_identities", "must be >= 2")
        require(d.synthetic_images_per_identity >= 1, "data.synthetic_images_per_identity", "must be >= 1")
    require(d.batch_size > 0, "data.batch_size", "must be > 0")
    require(d.num_classes >= 0, "data.num_classes", "must be >= 0")
    require(d.num_images >= 0, "data.num_images", "must be >= 0")
    require(d.bad_images in ("fail", "skip"), "data.bad_images", "must be fail or skip")
    require(d.augment in AUGMENT_POLICIES, "data.augment", f"must be one of {', '.join(AUGMENT_POLICIES)}")
    require(d.cache_budget_gib >= 0, "data.cache_budget_gib", "must be >= 0")

    m = c.model
    require(len(m.image_size) == 2 and all(s >= 16 for s in m.image_size), "model.image_size",
            "must be [height, width], each >= 16")
    require(m.embedding_size > 0, "model.embedding_size", "must be > 0")
    require(0.0 <= m.dropout < 1.0, "model.dropout", "must be in [0, 1)")

    h = c.head
    require(h.sharding in ("sharded", "replicated"), "head.sharding", "must be sharded or replicated")
    require(0.0 < h.sample_rate <= 1.0, "head.sample_rate", "must be in (0, 1]")
    require(h.sharding == "sharded" or h.sample_rate == 1.0, "head.sample_rate", "needs head.sharding: sharded")
    require(h.margin_warmup_start >= 0, "head.margin_warmup_start", "must be >= 0")

    lo = c.loss
    require(0.0 <= lo.label_smoothing < 1.0, "loss.label_smoothing", "must be in [0, 1)")
    require(lo.center_weight >= 0.0, "loss.center_weight", "must be >= 0")
    require(0.0 <= lo.center_alpha <= 1.0, "loss.center_alpha", "must be in [0, 1]")
    require(lo.triplet_margin >= 0, "loss.triplet_margin", "must be >= 0")

    o = c.optim
    require(o.lr > 0, "optim.lr", f"must be > 0, got {o.lr}")
    require(0.0 <= o.momentum < 1.0, "optim.momentum", "must be in [0, 1)")
    require(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    require(o.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
    require(o.schedule in SCHEDULES, "optim.schedule", f"must be one of {', '.join(SCHEDULES)}")
    require(list(o.decay_steps) == sorted(o.decay_steps) and all(s > 0 for s in o.decay_steps),
            "optim.decay_steps", "must be increasing positive steps")
    require(0.0 < o.decay_rate <= 1.0, "optim.decay_rate", "must be in (0, 1]")
    require(o.clip_norm >= 0, "optim.clip_norm", "must be >= 0")
    require(o.lr_global_batch >= 0, "optim.lr_global_batch", "must be >= 0")
    require(o.warmup_epochs >= 0, "optim.warmup_epochs", "must be >= 0")
    require(o.poly_power > 0, "optim.poly_power", "must be > 0")
    require(0.0 <= o.beta1 < 1.0, "optim.beta1", "must be in [0, 1)")
    require(0.0 <= o.beta2 < 1.0, "optim.beta2", "must be in [0, 1)")
    require(o.epsilon > 0, "optim.epsilon", "must be > 0")

    t = c.train
    require(t.steps > 0, "train.steps", "must be > 0")
    require(t.epochs >= 0, "train.epochs", "must be >= 0")
    require(t.accumulate_steps >= 1, "train.accumulate_steps", "must be >= 1")
    require(t.cpu_replicas >= 0, "train.cpu_replicas", "must be >= 0")
    require(t.cpu_replicas == 0 or t.strategy == "mirrored", "train.cpu_replicas", "needs train.strategy: mirrored")
    require(t.log_every > 0, "train.log_every", "must be > 0")
    require(t.eval_every >= 0, "train.eval_every", "must be >= 0")
    require(t.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0")
    require(t.keep_checkpoints > 0, "train.keep_checkpoints", "must be > 0")
    require(t.mixed_precision in ("none", "bfloat16", "float16"), "train.mixed_precision",
            "must be none, bfloat16 or float16")
    require(t.max_bad_steps > 0, "train.max_bad_steps", "must be > 0")

    e = c.eval
    if e.pairs:
        require(Path(e.pairs).is_file(), "eval.pairs", f"no such file: {e.pairs}")
        require(bool(e.images), "eval.images", "required when eval.pairs is set")
    if e.images:
        require(Path(e.images).is_dir(), "eval.images", f"no such directory: {e.images}")
    if not e.pairs:
        require(len(e.identities) >= 2 and all(1 <= i <= 40 for i in e.identities), "eval.identities",
                "needs at least 2 ORL ids in 1..40")
    for i, path in enumerate(e.bin_sets):
        require(Path(path).is_file(), f"eval.bin_sets[{i}]", f"no such file: {path}")
    require(e.folds >= 2, "eval.folds", "must be >= 2")
    require(e.batch_size > 0, "eval.batch_size", "must be > 0")
