"""Where config meets the registries: every name-valued key is checked against the module that owns the names.

config.py stays plain data and cannot see the registries; this module can. The registries are imported inside
`check`, not at module level: the loss registries and the objectives import TensorFlow, and importing this module
(the CLIs do before parsing their arguments) must stay cheap.
"""
from __future__ import annotations

import typing
from pathlib import Path

from distface import config
from distface.config import Config, ConfigError, require

# make_margin's keyword -> HeadConfig field, where the two names differ
_HEAD_KEYS = {"warmup_steps": "margin_warmup_steps"}


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """config.parse_config (YAML, --set overrides, plain checks) followed by `check`: the loader the CLIs use."""
    cfg = config.parse_config(path, overrides)
    check(cfg)
    return cfg


def _known(key: str, value: str, names: typing.Iterable[str], noun: str) -> None:
    names = sorted(names)
    require(value in names, key, f"unknown {noun} {value!r} (known: {', '.join(names)})")


def check(cfg: Config) -> None:
    """Raises ConfigError naming the key when a name is unknown to its registry or a component's rule fails."""
    # Registries that import no TensorFlow first: the common slips then fail fast, without its start-up noise.
    from distface.data.sources import SOURCES
    from distface.heads import MARGINS, MarginParamError, check_margin_params
    from distface.models import BACKBONES
    from distface.parallel import STRATEGIES

    _known("data.source", cfg.data.source, SOURCES, "source")
    _known("model.backbone", cfg.model.backbone, BACKBONES, "backbone")
    h = cfg.head
    _known("head.type", h.type, MARGINS, "head")
    try:
        check_margin_params(scale=h.scale, m1=h.m1, m2=h.m2, m3=h.m3, sphere_m=h.sphere_m,
                            warmup_steps=h.margin_warmup_steps)
    except MarginParamError as err:
        raise ConfigError(f"head.{_HEAD_KEYS.get(err.param, err.param)}: must be {err.rule}") from None
    _known("train.strategy", cfg.train.strategy, STRATEGIES, "strategy")

    from distface.training.centers import CENTER_SHARDINGS
    from distface.losses.center import CENTER_UPDATE_VARIANTS
    from distface.losses.triplet import DISTANCES, MININGS
    from distface.training.objectives import OBJECTIVES
    from distface.training.optim import HEAD_UPDATES

    _known("optim.head_update", cfg.optim.head_update, HEAD_UPDATES, "head update")
    lo = cfg.loss
    _known("loss.type", lo.type, OBJECTIVES, "loss type")
    _known("loss.center_variant", lo.center_variant, CENTER_UPDATE_VARIANTS, "center variant")
    _known("loss.center_sharding", lo.center_sharding, CENTER_SHARDINGS, "center sharding")
    _known("loss.triplet_distance", lo.triplet_distance, DISTANCES, "distance")
    _known("loss.triplet_mining", lo.triplet_mining, MININGS, "mining")
    OBJECTIVES[lo.type].check(cfg)
