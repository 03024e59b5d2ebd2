"""SGD with momentum and decoupled weight decay, under a warm-up + cosine/step learning-rate schedule."""
import math

import tensorflow as tf

from distface.config import OptimConfig


class WarmupSchedule:
    """Linear warm-up from 0 to `lr` over `warmup_steps`, then cosine to 0 at `total_steps`, step decay at
    `decay_steps` (multiplied by `decay_rate` at each), or constant."""

    def __init__(self, lr: float, total_steps: int, warmup_steps: int = 0, schedule: str = "cosine",
                 decay_steps=(), decay_rate: float = 0.1):
        self.lr = float(lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.schedule = schedule
        self.decay_steps = [int(s) for s in decay_steps]
        self.decay_rate = float(decay_rate)

    def __call__(self, step):
        # `step` counts the updates already applied: the first update uses step 0.
        step = tf.cast(step, tf.float32)
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


class MomentumSGD(tf.Module):
    """SGD with momentum and decoupled weight decay, the update Keras' SGD makes:
    w <- w - lr*wd*w;  m <- momentum*m - lr*g;  w <- w + m.

    Our own because Keras 3 optimizers all-reduce gradients themselves under tf.distribute (after clipping, and
    twice if we reduce too) and refuse per-replica (ON_READ) head blocks. Gradients arrive already reduced; the
    engine applies the update on every replica's copy. The learning rate is a function of the trainer's step.
    """

    def __init__(self, cfg: OptimConfig, total_steps: int, engine):
        super().__init__(name="optimizer")
        self.schedule = WarmupSchedule(cfg.lr, total_steps, cfg.warmup_steps, cfg.schedule, cfg.decay_steps,
                                       cfg.decay_rate)
        self.momentum = cfg.momentum
        self.weight_decay = cfg.weight_decay
        self.engine = engine
        self.slots = []

    def build(self, replicated, sharded) -> None:
        """Momentum slots shaped and placed like their variables (a sharded block's slot is sharded too)."""
        engine = self.engine
        self.slots = [engine.replicated_variable(tf.zeros(v.shape, v.dtype), name="momentum") for v in replicated]
        self.slots += [engine.sharded_variable(lambda r, v=v: tf.zeros(v.shape, v.dtype), name="momentum")
                       for v in sharded]

    def apply(self, grads, variables, step, ok=True) -> None:
        """One update; where `ok` is False (a non-finite step) every variable and slot keeps its value."""
        lr = self.schedule(step)
        ok = tf.convert_to_tensor(ok)
        for grad, var, slot in zip(grads, variables, self.slots):
            if grad is not None:
                self.engine.update(var, self._update, slot, grad, lr, ok)

    def _update(self, var, slot, grad, lr, ok):
        # tf.where, not tf.cond: a conditional around MirroredStrategy's merge_call is not supported.
        new_slot = self.momentum * slot - lr * tf.cast(grad, slot.dtype)
        new_var = var - lr * self.weight_decay * var + new_slot
        slot.assign(tf.where(ok, new_slot, slot))
        var.assign(tf.where(ok, new_var, var))
