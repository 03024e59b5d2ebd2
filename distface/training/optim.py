"""The optimizer: the rule of optim.type (distface/training/rules.py) under the learning-rate schedule
(training/schedules.py), applied to every variable by its gradient's type (distface/ops/gradients.py).

Our own because Keras 3 optimizers all-reduce gradients themselves under tf.distribute (after clipping, and twice if
we reduce too) and refuse per-replica (ON_READ) head blocks. Gradients arrive already reduced; the runtime applies
the update on every replica's copy. The learning rate is a function of the state's step.

A head block can hold millions of rows, so its update is written in place a range of rows at a time, with no
block-sized temporaries of the rule's terms (ops/rows_in_place.py); Partial FC's sampled rows are gathered and
scattered. With a sparse gradient, `head_update="dense"` still moves every row of the block (the rule with g = 0
off the sampled rows: what the published Partial FC results used), `"lazy"` updates only the sampled rows and their
slots (as TensorFlow's sparse optimizers do), so a step costs the sampled work alone.
"""
import tensorflow as tf

from distface.config import OptimConfig
from distface.ops.updates import Update
from distface.training.rules import RULES
from distface.training.schedules import build_schedule

HEAD_UPDATES = ("dense", "lazy")  # optim.head_update: how a sampled (Partial FC) block's rows are updated


class Optimizer:
    def __init__(self, cfg: OptimConfig, total_steps: int, runtime, global_batch: int):
        """global_batch: the examples of one update (optim.lr_global_batch scales the rate by it)."""
        self.schedule = build_schedule(cfg, total_steps, global_batch)
        self.rule = RULES[cfg.type](cfg)
        self.lazy = cfg.head_update == "lazy"
        self.in_place = cfg.head_update_in_place == "auto"
        self.runtime = runtime

    def build(self, trainable: dict) -> dict:
        """The rule's slots, {group: {slot kind: {name: slot}}} for trainable {group: {name: variable}}: zeros
        shaped and placed like their variables (a sharded block's slots are sharded too)."""
        runtime = self.runtime
        make = {"replicated": lambda v, kind: runtime.replicated_variable(tf.zeros(v.shape, v.dtype), name=kind),
                "sharded": lambda v, kind: runtime.sharded_variable(lambda r: tf.zeros(v.shape, v.dtype), name=kind)}
        return {group: {kind: {name: make[group](v, kind) for name, v in variables.items()}
                        for kind in self.rule.slots}
                for group, variables in trainable.items()}

    def apply(self, grads: dict, params: dict, slots: dict, step, ok=True) -> tf.Tensor:
        """One update of every variable with a gradient (grads and params share their names; gradients in the form
        of ops/gradients.py); where `ok` is False (a non-finite step) every variable and slot keeps its value.
        Returns how many in-place block updates did not reach their variable (ops/rows_in_place.py: 0 unless
        something put a block in copy-on-read mode)."""
        update = Update(self.rule, self.schedule(step), tf.cast(step + 1, tf.float32), self.lazy, self.in_place)
        ok = tf.convert_to_tensor(ok)
        misses = []
        for group in params:
            for name, var in params[group].items():
                grad = grads[group][name]
                if grad is not None:
                    var_slots = tuple(slots[group][kind][name] for kind in self.rule.slots)
                    misses.append(self.runtime.update(var, _guarded, var_slots, grad, update, ok))
        return tf.add_n([m for m in misses if m is not None] or [tf.constant(0.0)])


def _guarded(var, slots, grad, update, ok) -> tf.Tensor:
    """The update where `ok`, else nothing (tf.cond: keeping a block unchanged makes no copy of it)."""
    return tf.cond(ok, lambda: grad.apply(var, slots, update), lambda: tf.constant(0.0))
