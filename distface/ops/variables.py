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


def gather(var, rows) -> tf.Tensor:
    return tf.raw_ops.ResourceGather(resource=var.handle, indices=rows, dtype=var.dtype)


def scatter_update(var, rows, values) -> None:
    """Rows of var <- values. Puts the variable in copy-on-read mode (ops/rows_in_place.py)."""
    tf.raw_ops.ResourceScatterUpdate(resource=var.handle, indices=rows, updates=values)


def scatter_sub(var, rows, values) -> None:
    """Rows of var -= values (a repeated row takes every part). Puts the variable in copy-on-read mode."""
    tf.raw_ops.ResourceScatterSub(resource=var.handle, indices=rows, updates=values)


def assign(var, value) -> None:
    tf.raw_ops.AssignVariableOp(resource=var.handle, value=tf.cast(value, var.dtype))


def own_buffer(var, grad) -> None:
    """Gives the variable a buffer of its own, changing no value: the fused op (var <- var - 0·grad, grad finite)
    copies a buffer that another tensor or variable shares before writing (TensorFlow's copy-on-write), which the
    in-place row writes of ops/rows_in_place.py would not."""
    tf.raw_ops.ResourceApplyGradientDescent(var=var.handle, alpha=tf.constant(0.0, var.dtype), delta=grad)
