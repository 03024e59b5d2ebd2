"""The optimizers' update rules, each written once as a function of (w, slots, g, lr, t) over any rows of a variable.

Every gradient type applies the same rule to the rows it covers (distface/ops/gradients.py): a backbone variable
whole, a sharded head block a range of rows at a time inside an XLA function, Partial FC's sampled rows gathered.
g is None for rows without a gradient (a dense Partial FC update moves every row: the rule with g = 0). t is the
1-based count of this update (AdamW's bias correction). Everything is elementwise, so a rule over some rows equals
the rule over the whole variable restricted to them.

- `sgd`: torch.optim.SGD (momentum, dampening 0, nesterov off): g' = g + wd·w; b = μ·b + g'; w = w − lr·b. The
  weight decay is coupled (it enters the momentum buffer) and the rate is applied outside the buffer, as in the
  published recipes (insightface arcface_torch). torch starts the buffer at g' on the first update; μ·0 + g' is the
  same.
- `sgdw`: Keras' SGD with decoupled decay: w = w − lr·wd·w; m = μ·m − lr·g; w = w + m.
- `adamw`: torch.optim.AdamW (amsgrad off): w = w·(1 − lr·wd); m = β1·m + (1 − β1)·g; v = β2·v + (1 − β2)·g²;
  w = w − (lr / (1 − β1^t))·m / (sqrt(v) / sqrt(1 − β2^t) + ε).
"""
from __future__ import annotations

import tensorflow as tf

from distface.config import OptimConfig


class _Momentum:
    slots = ("momentum",)

    def __init__(self, cfg: OptimConfig):
        self.momentum, self.weight_decay = cfg.momentum, cfg.weight_decay


class SGD(_Momentum):
    def __call__(self, w, slots, g, lr, t):
        (buf,) = slots
        grad = self.weight_decay * w if g is None else g + self.weight_decay * w
        buf = self.momentum * buf + grad
        return w - lr * buf, (buf,)


class SGDW(_Momentum):
    def __call__(self, w, slots, g, lr, t):
        (m,) = slots
        m = self.momentum * m if g is None else self.momentum * m - lr * g
        return w - lr * self.weight_decay * w + m, (m,)


class AdamW:
    slots = ("momentum", "second_moment")

    def __init__(self, cfg: OptimConfig):
        self.beta1, self.beta2, self.epsilon, self.weight_decay = cfg.beta1, cfg.beta2, cfg.epsilon, cfg.weight_decay

    def __call__(self, w, slots, g, lr, t):
        m, v = slots
        b1, b2 = self.beta1, self.beta2
        if g is None:
            m, v = b1 * m, b2 * v
        else:
            m, v = b1 * m + (1.0 - b1) * g, b2 * v + (1.0 - b2) * tf.square(g)
        # The bias corrections in float64, as torch computes them from Python floats: 1 − 0.999 in float32 is 1e-5
        # off, a 5e-6 relative error in every early step.
        t = tf.cast(t, tf.float64)
        step_size = lr / tf.cast(1.0 - tf.pow(tf.constant(b1, tf.float64), t), w.dtype)
        root_correction = tf.cast(tf.sqrt(1.0 - tf.pow(tf.constant(b2, tf.float64), t)), w.dtype)
        w = w * (1.0 - lr * self.weight_decay)
        return w - step_size * m / (tf.sqrt(v) / root_correction + self.epsilon), (m, v)


RULES = {"sgd": SGD, "sgdw": SGDW, "adamw": AdamW}
