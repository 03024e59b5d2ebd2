"""Learning-rate schedules: a function of the count of optimizer updates already applied (the first update uses
step 0), and the arithmetic that sizes a run: epochs into steps, the global batch, the linear scaling rule.

Importing this module is cheap (TensorFlow is imported when a rate is computed): `distface plan` uses the
arithmetic without building anything.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from distface.config import Config, OptimConfig


class WarmupSchedule:
    """The rate of update `step` (float32, computed in the graph: no host sync). cosine, step and constant: a
    linear warm-up from 0 to `lr` over `warmup_steps`, under cosine to 0 at `total_steps`, step decay at
    `decay_steps` (multiplied by `decay_rate` at each), or constant. poly: insightface arcface_torch's
    PolynomialLRWarmup (see `_poly`), which has its own warm-up."""

    def __init__(self, lr: float, total_steps: int, warmup_steps: int = 0, schedule: str = "cosine",
                 decay_steps=(), decay_rate: float = 0.1, power: float = 1.0):
        self.lr = float(lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.schedule = schedule
        self.decay_steps = [int(s) for s in decay_steps]
        self.decay_rate = float(decay_rate)
        self.power = float(power)

    def __call__(self, step):
        import tensorflow as tf

        step = tf.cast(step, tf.float32)
        if self.schedule == "poly":
            return self._poly(step)
        if self.schedule == "cosine":
            span = max(self.total_steps - self.warmup_steps, 1)
            progress = tf.clip_by_value((step - self.warmup_steps) / span, 0.0, 1.0)
            lr = 0.5 * self.lr * (1.0 + tf.cos(math.pi * progress))
        elif self.schedule == "step":
            passed = tf.add_n([tf.cast(step >= s, tf.float32) for s in self.decay_steps] or [tf.zeros([])])
            lr = self.lr * tf.pow(self.decay_rate, passed)
        else:
            lr = tf.constant(self.lr)
        if self.warmup_steps:
            lr = tf.minimum(lr, self.lr * (step + 1.0) / self.warmup_steps)
        return lr

    def _poly(self, step):
        """arcface_torch's PolynomialLRWarmup (recognition/arcface_torch/lr_scheduler.py) as train_v2.py steps it
        (once after each update), with W = warmup_steps, T = total_steps, p = power:
        update 0 runs at the full rate lr, even with a warm-up (the scheduler's first step, made by its
        constructor, keeps the optimizer's rate: arcface_torch does this, so we do too);
        update u in 1..W at lr*u/W; past W at lr*(1 - (u-W)/(T-W))**p; past T the rate of update T.
        torch reaches the decay by multiplying the previous rate each step; this is its closed form."""
        import tensorflow as tf

        total, warmup = float(self.total_steps), float(self.warmup_steps)
        u = tf.minimum(step, total)
        warming = self.lr * u / max(warmup, 1.0)
        # (T - u) / (T - W) rather than 1 - (u - W)/(T - W): near T the subtraction would cancel in float32.
        left = (total - u) / max(total - warmup, 1.0)
        decaying = self.lr * tf.pow(tf.maximum(left, 0.0), self.power)
        lr = tf.where(u <= warmup, warming, decaying)
        return tf.where(step < 1.0, tf.constant(self.lr), lr)


def base_rate(optim: OptimConfig, global_batch: int) -> float:
    """The schedule's peak rate: optim.lr, scaled by the linear rule to this run's global batch when
    optim.lr_global_batch names the global batch optim.lr was tuned for."""
    if optim.lr_global_batch > 0:
        return optim.lr * global_batch / optim.lr_global_batch
    return optim.lr


def build_schedule(optim: OptimConfig, total_steps: int, global_batch: int) -> WarmupSchedule:
    """The schedule optim describes over total_steps updates of global_batch examples."""
    return WarmupSchedule(base_rate(optim, global_batch), total_steps, optim.warmup_steps, optim.schedule,
                          optim.decay_steps, optim.decay_rate, optim.poly_power)


def describe_rate(optim: OptimConfig, global_batch: int) -> str | None:
    """One line with the rate in use when the linear rule changes it; None when the rate is optim.lr."""
    if optim.lr_global_batch <= 0 or optim.lr_global_batch == global_batch:
        return None
    return (f"learning rate {base_rate(optim, global_batch):.6g} = optim.lr {optim.lr:g} x global batch "
            f"{global_batch:,} / optim.lr_global_batch {optim.lr_global_batch:,} (the linear rule)")


def global_batch(cfg: Config, num_replicas: int) -> int:
    """Examples per optimizer update: data.batch_size x replicas x train.accumulate_steps."""
    return cfg.data.batch_size * num_replicas * cfg.train.accumulate_steps


def steps_per_epoch(num_images: int, batch: int) -> int:
    """Updates of `batch` examples that see every image once (a last partial batch counts as one)."""
    return max(math.ceil(num_images / batch), 1)


def steps_for_epochs(epochs: float, num_images: int, batch: int) -> int:
    """Updates in `epochs` epochs of num_images images in batches of `batch`, to the nearest update."""
    return round(epochs * steps_per_epoch(num_images, batch))


class EpochSteps(NamedTuple):
    """What train.epochs and optim.warmup_epochs come to (the step keys as given where their epochs are 0)."""
    per_epoch: int
    steps: int  # train.steps
    warmup_steps: int  # optim.warmup_steps


def resolve_epochs(cfg: Config, num_images: int, batch: int) -> EpochSteps:
    """train.steps and optim.warmup_steps for a set of num_images images and a global batch of `batch`:
    train.epochs > 0 replaces train.steps (at least 1), optim.warmup_epochs > 0 replaces optim.warmup_steps."""
    epochs, warmup_epochs = cfg.train.epochs, cfg.optim.warmup_epochs
    steps = max(steps_for_epochs(epochs, num_images, batch), 1) if epochs > 0 else cfg.train.steps
    warmup = steps_for_epochs(warmup_epochs, num_images, batch) if warmup_epochs > 0 else cfg.optim.warmup_steps
    return EpochSteps(steps_per_epoch(num_images, batch), steps, warmup)


def describe_epochs(cfg: Config, num_images: int, batch: int) -> str | None:
    """One line with the arithmetic of resolve_epochs; None when the config counts in steps only."""
    epochs, warmup_epochs = cfg.train.epochs, cfg.optim.warmup_epochs
    if epochs <= 0 and warmup_epochs <= 0:
        return None
    plan = resolve_epochs(cfg, num_images, batch)
    parts = [f"{num_images:,} images / global batch {batch:,} = {_steps(plan.per_epoch)} per epoch"]
    parts.append(f"{epochs:g} epochs = {_steps(plan.steps)}" if epochs > 0 else f"{_steps(plan.steps)} (train.steps)")
    if warmup_epochs > 0:
        parts.append(f"warm-up {warmup_epochs:g} epochs = {_steps(plan.warmup_steps)}")
    return "epochs: " + ", ".join(parts)


def _steps(count: int) -> str:
    return f"{count:,} step" if count == 1 else f"{count:,} steps"
