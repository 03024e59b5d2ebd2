"""The optimizer's rule applied to a variable's rows through its handle: the whole variable, a range of rows at a
time in place, or some rows gathered and scattered back. The gradient types (ops/gradients.py,
ops/row_gradient.py) choose which of these their rows need."""
from __future__ import annotations

from typing import Callable, NamedTuple

import tensorflow as tf

from distface.ops import rows_in_place, variables


class Update(NamedTuple):
    """The rule of one step, as every gradient type applies it."""
    rule: Callable  # (w, slots, g or None, lr, t) -> (w, slots): distface/training/rules.py
    lr: tf.Tensor  # float32
    time: tf.Tensor  # the 1-based count of this update
    lazy: bool  # sampled rows: move only them (True) or every row, g = 0 off the sample (False)
    in_place: bool  # large variables updated a range of rows at a time in their own buffer

    def __call__(self, w, slots, g):
        return self.rule(w, slots, g, tf.cast(self.lr, w.dtype), self.time)


def apply_dense(var, slots, grad, update: Update) -> tf.Tensor:
    """The rule on the whole variable given its dense gradient; a matrix of CHUNK_ROWS rows or more (a replicated
    head) a range of rows at a time in place, with no temporary of its size. Returns rows_in_place's count of
    missed writes (float32)."""
    g = tf.cast(grad, var.dtype)
    if update.in_place and rows_in_place.available() and _many_rows(var):
        # In-place writes would reach every variable sharing the buffer (one host's MirroredStrategy copies can
        # share one after an assign); a fused update op copies a shared buffer first (copy-on-write). This one
        # changes no value: w - 0·g, g finite (the update runs behind the guard).
        for target in (var, *slots):
            variables.own_buffer(target, g)
        return rows_in_place.update_rows(
            [var, *slots], lambda lo, w, *s: _flat(update(w, s, tf.slice(g, [lo, 0], [w.shape[0], -1]))))
    w, new_slots = update(variables.read(var), tuple(variables.read(s) for s in slots), g)
    for target, value in zip((var, *slots), (w, *new_slots)):
        variables.assign(target, value)
    return tf.constant(0.0)


def apply_to_rows(var, slots, rows, grad, update: Update, keep=None) -> None:
    """The rule on the given rows only (grad None: g = 0), gathered and scattered back; rows where `keep` is True
    keep their values."""
    targets = (var, *slots)
    old = [variables.gather(t, rows) for t in targets]
    w, new_slots = update(old[0], tuple(old[1:]), grad)
    for target, before, after in zip(targets, old, (w, *new_slots)):
        variables.scatter_update(target, rows, after if keep is None else tf.where(keep, before, after))


def apply_streamed(var, slots, gradient_rows, update: Update) -> tf.Tensor:
    """The rule over every row of a block whose gradient is never materialised: `gradient_rows(lo, w)` gives rows
    [lo, lo + len(w)) of it from those rows of the block, and each range's gradient and update are one fused XLA
    pass written in place. Returns rows_in_place's count of missed writes."""
    @tf.function(jit_compile=True)  # no temporaries of the rule's terms
    def rule(lo, w, *s):
        return _flat(update(w, s, gradient_rows(lo, w)))

    return rows_in_place.update_rows([var, *slots], rule)


def _flat(result):
    w, slots = result
    return [w, *slots]


def _many_rows(var) -> bool:
    """A matrix of CHUNK_ROWS rows or more (a replicated head)."""
    return var.shape.rank == 2 and var.shape[0] >= rows_in_place.CHUNK_ROWS
