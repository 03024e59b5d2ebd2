"""Updates of a variable through its handle: the raw resource ops the optimizer and the center loss use.

Through the handle because a MirroredStrategy per-replica (ON_READ) block has no scatter or apply methods of its
own, and because TensorFlow's fused training ops update in place in one multi-threaded pass. Each op here has a
GPU kernel for float32 (tests/test_ops_assumptions.py pins it).
"""
import tensorflow as tf


def tf_variable(var) -> tf.Variable:
    """The tf.Variable behind a Keras 3 variable (its `value` attribute: the distributed container under a
    strategy); a tf.Variable is returned as it is."""
    return var if isinstance(var, tf.Variable) else getattr(var, "value", var)


def read(var) -> tf.Tensor:
    """The variable's value; outside copy-on-read mode an alias of its buffer, not a copy."""
    return tf.raw_ops.ReadVariableOp(resource=var.handle, dtype=var.dtype)


def keras_momentum(var, slot, lr, grad, momentum) -> None:
    """slot <- momentum * slot - lr * grad; var <- var + slot (Keras' SGD rule), in place."""
    tf.raw_ops.ResourceApplyKerasMomentum(var=var.handle, accum=slot.handle, lr=lr, grad=grad, momentum=momentum)


def decay(var, rate) -> None:
    """var <- var - rate * var. AssignSub updates in place once the product is made (the read it came from is
    released by then): one temporary the size of the variable."""
    tf.raw_ops.AssignSubVariableOp(resource=var.handle, value=rate * read(var))


def gather(var, rows) -> tf.Tensor:
    return tf.raw_ops.ResourceGather(resource=var.handle, indices=rows, dtype=var.dtype)


def scatter_update(var, rows, values) -> None:
    """Rows of var <- values. Puts the variable in copy-on-read mode (ops/rows_in_place.py)."""
    tf.raw_ops.ResourceScatterUpdate(resource=var.handle, indices=rows, updates=values)


def scatter_sub(var, rows, values) -> None:
    """Rows of var -= values (a repeated row takes every part). Puts the variable in copy-on-read mode."""
    tf.raw_ops.ResourceScatterSub(resource=var.handle, indices=rows, updates=values)
