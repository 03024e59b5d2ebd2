"""Reductions over tensors of millions of rows, a slice of rows at a time.

An elementwise op before a reduce (a square, a non-finite mask) materialises a temporary the size of its input:
for a head block of 1 M / 2 x 512 rows that is the step's peak. XLA does not avoid it either (measured: its
reduce copies a block-sized operand). Slicing rows of a tensor aliases them, so reducing CHUNK_ROWS rows at a
time keeps the temporary at one slice.
"""
import tensorflow as tf

CHUNK_ROWS = 8192


def map_row_chunks(fn, tensor) -> tf.Tensor:
    """fn applied to every CHUNK_ROWS-row slice of tensor (rank >= 1), its 1-D results concatenated."""
    if tensor.shape[0] is not None and tensor.shape[0] <= CHUNK_ROWS:
        return fn(tensor)
    rows = tf.shape(tensor)[0]  # a Partial FC sample's count is known only when the step runs
    chunks = (rows + CHUNK_ROWS - 1) // CHUNK_ROWS

    def chunk(i, parts):
        return i + 1, parts.write(i, fn(tensor[i * CHUNK_ROWS:tf.minimum((i + 1) * CHUNK_ROWS, rows)]))

    parts = tf.TensorArray(tf.float32, size=chunks, infer_shape=False, element_shape=[None])
    _, parts = tf.while_loop(lambda i, _: i < chunks, chunk, [tf.constant(0), parts])
    return parts.concat()


def chunked_sum(fn, tensor) -> tf.Tensor:
    """The float32 sum of fn(elements) over the whole tensor, of any rank."""
    if tensor.shape.rank == 0:
        tensor = tensor[tf.newaxis]
    part_sum = lambda part: tf.reshape(tf.reduce_sum(fn(tf.cast(part, tf.float32))), [1])  # cast per slice too
    return tf.reduce_sum(map_row_chunks(part_sum, tensor))
