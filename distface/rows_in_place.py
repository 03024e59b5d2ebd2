"""Variables of millions of rows rewritten in their own buffers, CHUNK_ROWS rows at a time.

A head block's update from a gradient that is never materialised (heads/row_gradient.py) is computed and written
one range of rows at a time. TensorFlow's row writes to a variable (ResourceScatterUpdate, ResourceStridedSliceAssign)
switch it to copy-on-read mode, where every whole read copies it (the forward's matmul reads it whole), so they are
not used: the variable is read (ReadVariableOp: outside that mode, an alias of its buffer, no copy) and the read
is written through with InplaceUpdate, which writes into its input's buffer. The rows must not be read elsewhere
while they are written: the caller orders the update after every use of the step's reads (the optimizer's update
runs behind the guard, which depends on every gradient).

If the variable was in copy-on-read mode after all, its read is a copy and the writes would be lost: a re-read
after the writes checks that they reached the variable, and the step fails if they did not. Inside an XLA-compiled
function reads and writes are XLA's own buffers (and asserts vanish): there the caller must not use this.
"""
import tensorflow as tf
from tensorflow.python.framework import ops
from tensorflow.python.ops import control_flow_util

from distface.row_chunks import CHUNK_ROWS

_SAME_SIZE_INT = {2: tf.int16, 4: tf.int32, 8: tf.int64}


def available() -> bool:
    """False while tracing inside an XLA-compiled function."""
    return not control_flow_util.GraphOrParentsInXlaContext(ops.get_default_graph())


def update_rows(variables, fn) -> tf.Operation:
    """variables' rows [lo, lo + n) <- fn(lo, *their rows) for consecutive ranges of CHUNK_ROWS rows (n fewer
    for the last); the variables share their shape [rows, width], fn returns one new [n, width] per variable."""
    if not available():
        raise RuntimeError("in-place row updates cannot run inside an XLA-compiled function (check available())")
    rows, width = variables[0].shape
    full = rows // CHUNK_ROWS  # whole chunks, written as single rows of a [full, CHUNK_ROWS * width] view
    main = full * CHUNK_ROWS
    reads = [tf.raw_ops.ReadVariableOp(resource=v.handle, dtype=v.dtype) for v in variables]
    written = []  # (variable, the tensor written, the flat position of its last element in the variable)
    if full:
        # Views, not copies: reshape aliases, and so does a 1-D slice whose ends are aligned for Eigen (64 bytes):
        # from 0 to a multiple of CHUNK_ROWS x width elements. A 2-D slice of rows aliases only if a row is.
        views = [tf.reshape(tf.reshape(r, [-1])[:main * width], [full, CHUNK_ROWS * width]) for r in reads]

        def chunk(k, *views):
            new = fn(k * CHUNK_ROWS, *[tf.reshape(v[k], [CHUNK_ROWS, width]) for v in views])
            return (k + 1, *[tf.raw_ops.InplaceUpdate(x=v, i=k[tf.newaxis], v=tf.reshape(n, [1, -1]))
                             for v, n in zip(views, new)])

        views = tf.while_loop(lambda k, *_: k < full, chunk, [tf.constant(0), *views])[1:]
        written += [(v, view, main * width - 1) for v, view in zip(variables, views)]
    if main < rows:  # the last rows, one by one (fewer than CHUNK_ROWS)
        new = fn(main, *[r[main:] for r in reads])
        written += [(v, tf.raw_ops.InplaceUpdate(x=r, i=tf.range(main, rows), v=n), rows * width - 1)
                    for v, r, n in zip(variables, reads, new)]
    return _check_written(written)


def _check_written(written) -> tf.Operation:
    """Fails unless every tensor written is a view of its variable's buffer: its last element, read again from
    the variable after all the writes, must be the one written."""
    with tf.control_dependencies([tensor for _, tensor, _ in written]):
        again = {id(v): tf.reshape(tf.raw_ops.ReadVariableOp(resource=v.handle, dtype=v.dtype), [-1])
                 for v, _, _ in written}

    def bits(value):  # compared as bits: NaN == NaN
        return tf.bitcast(value, _SAME_SIZE_INT[value.dtype.size])

    return tf.group([tf.debugging.assert_equal(
        bits(again[id(var)][position]), bits(tf.reshape(tensor, [-1])[-1]),
        message=f"{var.name}: an in-place row update did not reach the variable (it is in TensorFlow's "
                "copy-on-read mode: a gather or scatter has touched it)") for var, tensor, position in written])
