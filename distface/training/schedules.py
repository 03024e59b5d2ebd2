"""Learning-rate schedules: a function of the count of optimizer updates already applied."""
import math

import tensorflow as tf


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
