"""SGD with momentum and decoupled weight decay, under the learning-rate schedule of training/schedules.py."""

import tensorflow as tf

from distface.config import OptimConfig
from distface.ops import rows_in_place, variables
from distface.ops.row_gradient import RowGradient
from distface.training.schedules import WarmupSchedule


HEAD_UPDATES = ("dense", "lazy")  # optim.head_update: how a sampled (Partial FC) block's rows are updated
CHUNK_ROWS = 8192  # rows of a sampled block decayed at once (a few MiB of temporaries, whatever its size)


class MomentumSGD:
    """SGD with momentum and decoupled weight decay, the update Keras' SGD makes:
    w <- w - lr*wd*w;  m <- momentum*m - lr*g;  w <- w + m.

    Our own because Keras 3 optimizers all-reduce gradients themselves under tf.distribute (after clipping, and
    twice if we reduce too) and refuse per-replica (ON_READ) head blocks. Gradients arrive already reduced; the
    runtime applies the update on every replica's copy. The learning rate is a function of the state's step.

    A head block can hold millions of rows, so the update is made of TensorFlow's fused in-place training ops
    (one multi-threaded pass each, no block-sized temporaries of the rule's terms), each with a GPU kernel
    (tests/test_gpu_kernels.py); a sparse gradient (Partial FC's sampled rows, tf.IndexedSlices) is scattered into
    its rows. With a sparse gradient, `head_update="dense"` still decays every row's momentum and weight (the rule
    above with g = 0 off the sampled rows: what the published Partial FC results used), `"lazy"` updates only the
    sampled rows and their momentum (as TensorFlow's sparse optimizers do), so a step costs the sampled work alone.
    A full block's gradient arrives as a RowGradient (ops/row_gradient.py, never materialised): the rule is applied
    to CHUNK_ROWS rows at a time, written in place.
    """

    def __init__(self, cfg: OptimConfig, total_steps: int, runtime):
        self.schedule = WarmupSchedule(cfg.lr, total_steps, cfg.warmup_steps, cfg.schedule, cfg.decay_steps,
                                       cfg.decay_rate)
        self.momentum = cfg.momentum
        self.weight_decay = cfg.weight_decay
        self.lazy = cfg.head_update == "lazy"
        self.in_place = cfg.head_update_in_place == "auto"
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

    def apply(self, grads: dict, params: dict, slots: dict, step, ok=True) -> tf.Tensor:
        """One update of every variable with a gradient (the three dicts share their names); where `ok` is False
        (a non-finite step) every variable and slot keeps its value. Returns how many in-place block updates did
        not reach their variable (ops/rows_in_place.py: 0 unless something put a block in copy-on-read mode)."""
        lr = self.schedule(step)
        ok = tf.convert_to_tensor(ok)
        misses = []
        for group in params:
            for name, var in params[group].items():
                grad = grads[group][name]
                if grad is not None:
                    misses.append(self.runtime.update(var, self._update, slots[group][name], grad, lr, ok))
        return tf.add_n([m for m in misses if m is not None] or [tf.constant(0.0)])

    def _update(self, var, slot, grad, lr, ok) -> tf.Tensor:
        def step():
            lr_ = tf.cast(lr, var.dtype)
            in_place = self.in_place and rows_in_place.available()
            if isinstance(grad, RowGradient) and in_place:
                return self._stream_rows(var, slot, grad, lr_)
            if not isinstance(grad, tf.IndexedSlices):
                dense = tf.cast(grad.whole() if isinstance(grad, RowGradient) else grad, var.dtype)  # XLA, or off
                if in_place and self.weight_decay and _many_rows(var):  # the replicated head
                    variables.keras_momentum(var, slot, lr_, dense, self.momentum)
                    return self._decay_rows_after_momentum(var, slot, lr_ * self.weight_decay)
                if self.weight_decay:  # decoupled: w <- (1 - lr*wd) w before the momentum step, as Keras does
                    variables.decay(var, lr_ * self.weight_decay)
                variables.keras_momentum(var, slot, lr_, dense, self.momentum)
            elif self.lazy:
                self._rows(var, slot, grad.indices, tf.cast(grad.values, var.dtype), lr_)
            else:  # every row decays (g = 0), then the sampled rows' -lr*g enters momentum and, through w + m, w
                self._all_rows_without_gradient(var, slot, lr_)
                step_rows = tf.cast(grad.values, var.dtype) * lr_
                for target in (slot, var):
                    variables.scatter_sub(target, grad.indices, step_rows)
            return tf.constant(0.0)

        # The guard: a non-finite step changes nothing (tf.cond, so no copy of the block is made to keep it).
        return tf.cond(ok, step, lambda: tf.constant(0.0))

    def _stream_rows(self, var, slot, grad, lr) -> tf.Tensor:
        """The rule over every row of a block whose gradient is never materialised (RowGradient): each range of rows
        gets its gradient, then its update written in place. Returns rows_in_place's count of missed writes."""
        momentum, decay = tf.constant(self.momentum, var.dtype), lr * self.weight_decay

        @tf.function(jit_compile=True)  # the rows' gradient and rule in one fused pass, no temporaries of its terms
        def rule(lo, w, m):
            m = momentum * m - lr * grad.rows(lo, w)
            return w - decay * w + m, m

        return rows_in_place.update_rows([var, slot], rule)

    @staticmethod
    def _decay_rows_after_momentum(var, slot, decay) -> tf.Tensor:
        """The decoupled decay of w0 once the fused momentum op has set w = w0 + m: w <- w - decay (w - m), a range
        of rows at a time in place (decay first, as w - decay w, would make a temporary of the variable's size).
        The fused op runs first because it copies a buffer that another tensor or variable shares (TensorFlow's
        copy-on-write; one host's MirroredStrategy copies can share one after an assign), which an in-place write
        would not. Returns rows_in_place's count of missed writes."""
        return rows_in_place.update_rows([var], lambda lo, w, m: [w - decay * (w - m)], read_only=[slot])

    def _all_rows_without_gradient(self, var, slot, lr):
        """The rule with g = 0 over every row, CHUNK_ROWS rows at a time through gather and scatter: once rows of
        a variable were scattered TensorFlow keeps it in copy-on-read mode, where one whole read copies it."""
        rows = var.shape[0]

        def chunk(i):
            lo = i * CHUNK_ROWS
            self._rows(var, slot, tf.range(lo, tf.minimum(lo + CHUNK_ROWS, rows)), None, lr)
            return i + 1

        tf.while_loop(lambda i: i < -(-rows // CHUNK_ROWS), chunk, [tf.constant(0)])

    def _rows(self, var, slot, rows, grad, lr):
        """The rule on the given rows only (grad None: g = 0): gather them, update, scatter back."""
        w = variables.gather(var, rows)
        m = self.momentum * variables.gather(slot, rows)
        if grad is not None:
            m -= lr * grad
        variables.scatter_update(slot, rows, m)
        variables.scatter_update(var, rows, w - lr * self.weight_decay * w + m)



def _many_rows(var) -> bool:
    """A matrix of CHUNK_ROWS rows or more (a replicated head): its decay goes a range of rows at a time."""
    return var.shape.rank == 2 and var.shape[0] >= rows_in_place.CHUNK_ROWS
