"""Variables of millions of rows rewritten in their own buffers, CHUNK_ROWS rows at a time.

A head block's update from a gradient that is never materialised (ops/row_gradient.py) is computed and written
one range of rows at a time. TensorFlow's row writes to a variable (ResourceScatterUpdate, ResourceStridedSliceAssign)
switch it to copy-on-read mode, where every whole read copies it (the forward's matmul reads it whole), so they are
not used: the variable is read (ReadVariableOp: outside that mode, an alias of its buffer, no copy) and the read
is written through with InplaceUpdate, which writes into its input's buffer. The rows must not be read elsewhere
while they are written: the caller orders the update after every use of the step's reads (the optimizer's update
runs behind the guard, which depends on every gradient).

The variable must own its buffer: one that another variable shares (an assign of one tensor to two variables can
leave them sharing it) would take the writes for both. TensorFlow's fused update ops copy a shared buffer first
(copy-on-write), so a caller that cannot rule sharing out runs one before (optim.py's replicated head).

If the writes did not reach the variable after all (see NOT_IN_PLACE), they are lost: a re-read after the writes
compares the last element written, and `update_rows` returns the count of writes that missed. That count is a
tensor the step reports, not an assert: an assert would copy its operands to the host and stall a GPU every step.
Inside an XLA-compiled function reads and writes are XLA's own buffers: there the caller must not use this.

TensorFlow behaviour relied on (each pinned in tests/test_ops_assumptions.py):
- ReadVariableOp returns an alias of the variable's buffer unless the variable is in copy-on-read mode;
- ResourceGather / ResourceScatter* switch a variable to copy-on-read mode for good;
- InplaceUpdate writes into its input's buffer (it does not copy a buffer that other tensors share);
- reshape aliases, and so does a 1-D slice whose ends are 64-byte aligned (Eigen's alignment);
- control_flow_util.GraphOrParentsInXlaContext tells a trace inside jit_compile.
"""
import tensorflow as tf
from tensorflow.python.framework import ops
from tensorflow.python.ops import control_flow_util

from distface.ops.row_chunks import CHUNK_ROWS


def available() -> bool:
    """False while tracing inside an XLA-compiled function."""
    return not control_flow_util.GraphOrParentsInXlaContext(ops.get_default_graph())


NOT_IN_PLACE = (
    "an in-place row update of {names} did not reach the variable; known causes: (1) the variable is in "
    "TensorFlow's copy-on-read mode (a tf.gather, scatter or sparse update touched it: use collectives.gather_rows "
    "and ops/variables.py only on blocks written in place); (2) XLA auto-clustering (TF_XLA_FLAGS="
    "--tf_xla_auto_jit) compiled the update, whose buffers are then XLA's own; (3) a chunk whose ends are not "
    "64-byte aligned, so its slice is a copy (ops/row_chunks.CHUNK_ROWS changed). "
    "Set optim.head_update_in_place: off to train with the plain dense update")


def update_rows(variables, fn, read_only=()) -> tf.Tensor:
    """variables' rows [lo, lo + n) <- fn(lo, *their rows, *read_only's rows) for consecutive ranges of CHUNK_ROWS
    rows (n fewer for the last); all share their shape [rows, width], fn returns one new [n, width] per variable
    (read_only's rows are read, not written). Returns how many of its writes did not reach their variable
    (float32; 0 when all did): per variable, one for its whole chunks and one for its last rows."""
    if not available():
        raise RuntimeError("in-place row updates cannot run inside an XLA-compiled function (check available())")
    rows, width = variables[0].shape
    full = rows // CHUNK_ROWS  # whole chunks, written as single rows of a [full, CHUNK_ROWS * width] view
    main = full * CHUNK_ROWS
    count = len(variables)
    reads = [tf.raw_ops.ReadVariableOp(resource=v.handle, dtype=v.dtype) for v in [*variables, *read_only]]
    written = []  # (variable, the tensor written, the flat position of its last element in the variable)
    if full:
        # Views, not copies: reshape aliases, and so does a 1-D slice whose ends are aligned for Eigen (64 bytes):
        # from 0 to a multiple of CHUNK_ROWS x width elements. A 2-D slice of rows aliases only if a row is.
        views = [tf.reshape(tf.reshape(r, [-1])[:main * width], [full, CHUNK_ROWS * width]) for r in reads]

        def chunk(k, *views):
            new = fn(k * CHUNK_ROWS, *[tf.reshape(v[k], [CHUNK_ROWS, width]) for v in views])
            return (k + 1, *[tf.raw_ops.InplaceUpdate(x=v, i=k[tf.newaxis], v=tf.reshape(n, [1, -1]))
                             for v, n in zip(views, new)], *views[count:])

        views = tf.while_loop(lambda k, *_: k < full, chunk, [tf.constant(0), *views])[1:]
        written += [(v, view, main * width - 1) for v, view in zip(variables, views)]
    if main < rows:  # the last rows, one by one (fewer than CHUNK_ROWS)
        new = fn(main, *[r[main:] for r in reads])
        written += [(v, tf.raw_ops.InplaceUpdate(x=r, i=tf.range(main, rows), v=n), rows * width - 1)
                    for v, r, n in zip(variables, reads, new)]
    return _check_written(written)


def _check_written(written) -> tf.Tensor:
    """How many tensors written are not views of their variable's buffer (float32): the last element of each, read
    again from the variable after all the writes, must be the one written (NaN matches NaN)."""
    with tf.control_dependencies([tensor for _, tensor, _ in written]):
        again = {id(v): tf.reshape(tf.raw_ops.ReadVariableOp(resource=v.handle, dtype=v.dtype), [-1])
                 for v, _, _ in written}

    def missed(read, wrote):  # float comparisons: an int32 one would run on the host (a copy back per step)
        return tf.cast(~((read == wrote) | (tf.math.is_nan(read) & tf.math.is_nan(wrote))), tf.float32)

    return tf.add_n([missed(again[id(var)][position], tf.reshape(tensor, [-1])[-1])
                     for var, tensor, position in written])
