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


HEAD_UPDATES = ("dense", "lazy")  # optim.head_update: how a sampled (Partial FC) block's rows are updated
CHUNK_ROWS = 8192  # rows updated at once in a large variable (a few MiB of temporaries, whatever its size)


class MomentumSGD:
    """SGD with momentum and decoupled weight decay, the update Keras' SGD makes:
    w <- w - lr*wd*w;  m <- momentum*m - lr*g;  w <- w + m.

    Our own because Keras 3 optimizers all-reduce gradients themselves under tf.distribute (after clipping, and
    twice if we reduce too) and refuse per-replica (ON_READ) head blocks. Gradients arrive already reduced; the
    runtime applies the update on every replica's copy. The learning rate is a function of the state's step.

    A head block can hold millions of rows, so the update works in place, CHUNK_ROWS rows at a time; a sparse
    gradient (Partial FC's sampled rows, tf.IndexedSlices) is scattered into its rows. With a sparse
    gradient, `head_update="dense"` still decays every row's momentum and weight (the rule above with g = 0 off
    the sampled rows: what the published Partial FC results used), `"lazy"` updates only the sampled rows and
    their momentum (as TensorFlow's sparse optimizers do), so a step costs the sampled work alone.
    """

    def __init__(self, cfg: OptimConfig, total_steps: int, runtime):
        self.schedule = WarmupSchedule(cfg.lr, total_steps, cfg.warmup_steps, cfg.schedule, cfg.decay_steps,
                                       cfg.decay_rate)
        self.momentum = cfg.momentum
        self.weight_decay = cfg.weight_decay
        self.lazy = cfg.head_update == "lazy"
        self.runtime = runtime

    def build(self, trainable: dict) -> dict:
        """Momentum slots for {"replicated": {name: var}, "sharded": {name: var}}, same names, shaped and placed
        like their variables (a sharded block's slot is sharded too)."""
        runtime = self.runtime
        replicated = {name: runtime.replicated_variable(tf.zeros(v.shape, v.dtype), name="momentum")
                      for name, v in trainable["replicated"].items()}
        sharded = {name: runtime.sharded_variable(lambda r, v=v: tf.zeros(v.shape, v.dtype), name="momentum")
                   for name, v in trainable["sharded"].items()}
        return {"replicated": replicated, "sharded": sharded}

    def apply(self, grads: dict, variables: dict, slots: dict, step, ok=True) -> None:
        """One update of every variable with a gradient (the three dicts share their names); where `ok` is False
        (a non-finite step) every variable and slot keeps its value."""
        lr = self.schedule(step)
        ok = tf.convert_to_tensor(ok)
        for group in variables:
            for name, var in variables[group].items():
                grad = grads[group][name]
                if grad is not None:
                    self.runtime.update(var, self._update, slots[group][name], grad, lr, ok)

    def _update(self, var, slot, grad, lr, ok):
        def step():
            sparse = isinstance(grad, tf.IndexedSlices)
            if sparse and self.lazy:
                self._rows(var, slot, grad.indices, self._rule(tf.cast(grad.values, var.dtype), lr))
            else:
                self._all_rows(var, slot, None if sparse else tf.cast(grad, var.dtype), lr)
                if sparse:  # the sampled rows' -lr*g, in momentum and (through w + m) in the weight
                    step_rows = tf.cast(grad.values, var.dtype) * lr
                    for target in (slot, var):
                        tf.raw_ops.ResourceScatterSub(resource=target.handle, indices=grad.indices,
                                                      updates=step_rows)
            return tf.constant(True)

        # The guard: a non-finite step changes nothing (tf.cond, so no copy of the block is made to keep it).
        tf.cond(ok, step, lambda: tf.constant(False))

    def _rule(self, grad, lr):
        """(w, m) -> (w', m') of the class docstring; grad None: g = 0."""
        def rule(w, m):
            m = self.momentum * m if grad is None else self.momentum * m - lr * grad
            return w - lr * self.weight_decay * w + m, m

        return rule

    def _all_rows(self, var, slot, grad, lr):
        """The rule over every row (grad None: g = 0), in place, CHUNK_ROWS rows at a time: a block of millions of
        rows never gets a block-sized temporary (w - lr*wd*w alone would be one)."""
        rows = var.shape[0] if var.shape.rank else 0
        if rows <= CHUNK_ROWS:
            w, m = self._rule(grad, lr)(var, slot)
            slot.assign(m)
            var.assign(w)
            return

        def chunk(i):
            lo = i * CHUNK_ROWS
            hi = tf.minimum(lo + CHUNK_ROWS, rows)
            self._rows(var, slot, tf.range(lo, hi), self._rule(None if grad is None else grad[lo:hi], lr))
            return i + 1

        tf.while_loop(lambda i: i < -(-rows // CHUNK_ROWS), chunk, [tf.constant(0)])

    @staticmethod
    def _rows(var, slot, rows, rule):
        """Apply rule(w, m) -> (w', m') to the given rows, through the handles: a per-replica (ON_READ) block has
        no gather/scatter methods of its own, and a handle read copies only those rows."""
        w = tf.raw_ops.ResourceGather(resource=var.handle, indices=rows, dtype=var.dtype)
        m = tf.raw_ops.ResourceGather(resource=slot.handle, indices=rows, dtype=slot.dtype)
        new_w, new_m = rule(w, m)
        tf.raw_ops.ResourceScatterUpdate(resource=slot.handle, indices=rows, updates=new_m)
        tf.raw_ops.ResourceScatterUpdate(resource=var.handle, indices=rows, updates=new_w)
