"""Typed experiment config: one dataclass per YAML section, same names, defaults here.

`load_config(path, overrides)` reads YAML, applies `--set section.key=value` overrides and validates; every
problem raises ConfigError naming the key, which the CLIs turn into one line on stderr and exit code 2.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A bad config value; the message starts with the dotted key."""


@dataclass
class DataConfig:
    source: str = "orl"  # orl | folder | recordio | tfrecord | synthetic
    # folder: image root, one sub-folder per identity; recordio: folder with train.rec/.idx (or the .rec);
    # tfrecord: a .tfrecord file, a folder of them or a glob
    path: str = ""
    train_identities: list[int] = field(default_factory=lambda: list(range(1, 31)))  # ORL s1..s30
    synthetic_identities: int = 100
    synthetic_images_per_identity: int = 10
    batch_size: int = 32  # per replica
    # Triplet training (loss.type: triplet): batches of P identities x K images; batch_size must be P*K.
    identities_per_batch: int = 8
    images_per_identity: int = 4
    shuffle_buffer: int = 10000
    flip: bool = True
    bad_images: str = "fail"  # fail: stop naming the first broken image file; skip: leave such files out, counted
    cache: bool = True  # keep decoded images in memory (small sets; turn off for large .rec/.tfrecord)


@dataclass
class ModelConfig:
    backbone: str = "debug"
    image_size: list[int] = field(default_factory=lambda: [112, 96])  # height, width
    embedding_size: int = 128
    dropout: float = 0.0


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


@dataclass
class LossConfig:
    type: str = "classification"  # classification (head + softmax CE) | triplet (no head)
    label_smoothing: float = 0.0
    center_weight: float = 0.0  # lambda of the center loss; 0 disables it
    center_alpha: float = 0.5
    center_variant: str = "paper"  # paper | facenet
    triplet_margin: float = 0.2
    triplet_distance: str = "squared_l2"  # squared_l2 | l2 | angular
    triplet_mining: str = "semi_hard"  # semi_hard | batch_hard
    triplet_cross_replica: bool = True  # mine negatives in the all-gathered global batch


@dataclass
class OptimConfig:
    lr: float = 0.1  # per replica batch; see README "scaling rule"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_steps: int = 100
    schedule: str = "cosine"  # cosine | step | constant
    decay_steps: list[int] = field(default_factory=list)  # for schedule=step
    decay_rate: float = 0.1
    clip_norm: float = 0.0  # global-norm gradient clipping; 0 disables it


@dataclass
class TrainConfig:
    steps: int = 1000
    seed: int = 0
    strategy: str = "auto"  # auto | single | mirrored | multiworker | horovod (see distface.parallel)
    cpu_replicas: int = 0  # mirrored without GPUs: split the CPU into this many logical devices (tests, debug)
    out_dir: str = "runs/debug"
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


DATA_SOURCES = ("orl", "folder", "recordio", "tfrecord", "synthetic")
SCHEDULES = ("cosine", "step", "constant")


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Config from a YAML file (or the defaults) plus `section.key=value` overrides, validated."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--config: no such file: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"--config: {path} is not valid YAML: {err}") from None
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
        raw[section][name] = yaml.safe_load(text)
    config = _build(Config, raw, "")
    validate(config)
    return config


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


def _check(ok: bool, key: str, reason: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {reason}")


def validate(c: Config) -> None:
    """Impossible values stop the run before anything is written."""
    from distface.heads import MARGINS
    from distface.models import BACKBONES
    from distface.parallel import STRATEGIES

    d = c.data
    _check(d.source in DATA_SOURCES, "data.source", f"must be one of {', '.join(DATA_SOURCES)}, got {d.source!r}")
    if d.source in ("folder", "recordio", "tfrecord"):
        _check(bool(d.path), "data.path", f"required when data.source is {d.source}")
    if d.source == "folder":
        _check(Path(d.path).is_dir(), "data.path", f"no such directory: {d.path}")
    if d.source == "recordio":
        _check(Path(d.path).exists(), "data.path", f"no such file or directory: {d.path}")
    if d.source == "orl":
        _check(bool(d.train_identities), "data.train_identities", "must not be empty")
        _check(all(1 <= i <= 40 for i in d.train_identities), "data.train_identities", "ORL ids are 1..40")
    if d.source == "synthetic":
        _check(d.synthetic_identities >= 2, "data.synthetic_identities", "must be >= 2")
        _check(d.synthetic_images_per_identity >= 1, "data.synthetic_images_per_identity", "must be >= 1")
    _check(d.batch_size > 0, "data.batch_size", "must be > 0")
    _check(d.bad_images in ("fail", "skip"), "data.bad_images", "must be fail or skip")
    _check(d.shuffle_buffer > 0, "data.shuffle_buffer", "must be > 0")

    m = c.model
    _check(m.backbone in BACKBONES, "model.backbone",
           f"unknown backbone {m.backbone!r} (known: {', '.join(sorted(BACKBONES))})")
    _check(len(m.image_size) == 2 and all(s >= 16 for s in m.image_size), "model.image_size",
           "must be [height, width], each >= 16")
    _check(m.embedding_size > 0, "model.embedding_size", "must be > 0")
    _check(0.0 <= m.dropout < 1.0, "model.dropout", "must be in [0, 1)")

    h = c.head
    _check(h.type in MARGINS, "head.type", f"unknown head {h.type!r} (known: {', '.join(MARGINS)})")
    _check(h.scale > 0, "head.scale", "must be > 0")
    _check(h.m1 >= 1.0, "head.m1", "must be >= 1")
    _check(h.m2 >= 0.0, "head.m2", "must be >= 0")
    _check(h.m3 >= 0.0, "head.m3", "must be >= 0")
    _check(h.sphere_m >= 1, "head.sphere_m", "must be an integer >= 1")
    _check(h.sharding in ("sharded", "replicated"), "head.sharding", "must be sharded or replicated")
    _check(0.0 < h.sample_rate <= 1.0, "head.sample_rate", "must be in (0, 1]")
    _check(h.sharding == "sharded" or h.sample_rate == 1.0, "head.sample_rate", "needs head.sharding: sharded")
    _check(h.margin_warmup_start >= 0, "head.margin_warmup_start", "must be >= 0")
    _check(h.margin_warmup_steps >= 0, "head.margin_warmup_steps", "must be >= 0")

    lo = c.loss
    _check(0.0 <= lo.label_smoothing < 1.0, "loss.label_smoothing", "must be in [0, 1)")
    _check(lo.center_weight >= 0.0, "loss.center_weight", "must be >= 0")
    _check(0.0 <= lo.center_alpha <= 1.0, "loss.center_alpha", "must be in [0, 1]")
    _check(lo.center_variant in ("paper", "facenet"), "loss.center_variant", "must be paper or facenet")
    _check(lo.type in ("classification", "triplet"), "loss.type", "must be classification or triplet")
    _check(lo.triplet_margin >= 0, "loss.triplet_margin", "must be >= 0")
    _check(lo.triplet_distance in ("squared_l2", "l2", "angular"), "loss.triplet_distance",
           "must be squared_l2, l2 or angular")
    _check(lo.triplet_mining in ("semi_hard", "batch_hard"), "loss.triplet_mining", "must be semi_hard or batch_hard")
    if lo.type == "triplet":
        _check(d.source in ("orl", "folder"), "data.source", "triplet training reads image folders (orl or folder)")
        _check(d.identities_per_batch >= 2 and d.images_per_identity >= 2, "data.identities_per_batch",
               "triplet batches need >= 2 identities x >= 2 images")
        _check(d.batch_size == d.identities_per_batch * d.images_per_identity, "data.batch_size",
               f"must equal identities_per_batch x images_per_identity = "
               f"{d.identities_per_batch * d.images_per_identity} for loss.type: triplet")
        _check(lo.center_weight == 0, "loss.center_weight", "center loss needs loss.type: classification")

    o = c.optim
    _check(o.lr > 0, "optim.lr", f"must be > 0, got {o.lr}")
    _check(0.0 <= o.momentum < 1.0, "optim.momentum", "must be in [0, 1)")
    _check(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    _check(o.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
    _check(o.schedule in SCHEDULES, "optim.schedule", f"must be one of {', '.join(SCHEDULES)}")
    _check(list(o.decay_steps) == sorted(o.decay_steps) and all(s > 0 for s in o.decay_steps),
           "optim.decay_steps", "must be increasing positive steps")
    _check(0.0 < o.decay_rate <= 1.0, "optim.decay_rate", "must be in (0, 1]")
    _check(o.clip_norm >= 0, "optim.clip_norm", "must be >= 0")

    t = c.train
    _check(t.steps > 0, "train.steps", "must be > 0")
    _check(t.strategy in STRATEGIES, "train.strategy", f"must be one of {', '.join(STRATEGIES)}")
    _check(t.cpu_replicas >= 0, "train.cpu_replicas", "must be >= 0")
    _check(t.cpu_replicas == 0 or t.strategy == "mirrored", "train.cpu_replicas", "needs train.strategy: mirrored")
    _check(bool(t.out_dir), "train.out_dir", "must not be empty")
    _check(t.log_every > 0, "train.log_every", "must be > 0")
    _check(t.eval_every >= 0, "train.eval_every", "must be >= 0")
    _check(t.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0")
    _check(t.keep_checkpoints > 0, "train.keep_checkpoints", "must be > 0")
    _check(t.mixed_precision in ("none", "bfloat16", "float16"), "train.mixed_precision",
           "must be none, bfloat16 or float16")
    _check(t.max_bad_steps > 0, "train.max_bad_steps", "must be > 0")

    e = c.eval
    if e.pairs:
        _check(Path(e.pairs).is_file(), "eval.pairs", f"no such file: {e.pairs}")
        _check(bool(e.images), "eval.images", "required when eval.pairs is set")
    if e.images:
        _check(Path(e.images).is_dir(), "eval.images", f"no such directory: {e.images}")
    if not e.pairs:
        _check(len(e.identities) >= 2 and all(1 <= i <= 40 for i in e.identities), "eval.identities",
               "needs at least 2 ORL ids in 1..40")
    for i, path in enumerate(e.bin_sets):
        _check(Path(path).is_file(), f"eval.bin_sets[{i}]", f"no such file: {path}")
    _check(e.folds >= 2, "eval.folds", "must be >= 2")
    _check(e.batch_size > 0, "eval.batch_size", "must be > 0")
