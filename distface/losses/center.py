"""Center loss: Wen et al. 2016,
"A Discriminative Feature Learning Approach for Deep Face Recognition".

The centers are not trained by the optimizer: the loss pulls features towards fixed centers,
and `center_update` returns the rows to subtract from the centers variable
(`centers.scatter_sub(rows)`).
"""

import tensorflow as tf

CENTER_UPDATE_VARIANTS = ("paper", "facenet")


def center_loss(features: tf.Tensor, labels: tf.Tensor, centers: tf.Tensor) -> tf.Tensor:
    """½‖x_i − c_{y_i}‖² per example; returns [B] float32. Gradient flows to `features` only."""
    return center_distance(features, tf.gather(centers, labels))


def center_distance(features: tf.Tensor, batch_centers: tf.Tensor) -> tf.Tensor:
    """½‖x_i − c_i‖² per example for the examples' own centers [B, d] (however they were fetched: a sharded
    caller reads them from the class blocks' owners); [B] float32, gradient to `features` only."""
    features = tf.cast(features, tf.float32)
    batch_centers = tf.stop_gradient(tf.cast(batch_centers, tf.float32))
    return 0.5 * tf.reduce_sum(tf.square(features - batch_centers), axis=-1)


def count_labels(labels: tf.Tensor, pool_labels: tf.Tensor | None = None) -> tf.Tensor:
    """n_i = #{j : pool_labels[j] == labels[i]} as [B] float32; the pool defaults to `labels`.

    A distributed caller passes the all-gathered global labels as the pool to get the global
    counts that `center_update(..., label_counts=...)` expects.
    """
    labels = tf.cast(labels, tf.int64)
    pool = labels if pool_labels is None else tf.cast(pool_labels, tf.int64)
    same = tf.equal(labels[:, None], pool[None, :])
    return tf.reduce_sum(tf.cast(same, tf.float32), axis=1)


def center_update(
    features: tf.Tensor,
    labels: tf.Tensor,
    centers: tf.Tensor,
    alpha: float = 0.5,
    label_counts: tf.Tensor | None = None,
    variant: str = "paper",
) -> tf.IndexedSlices:
    """The amount to SUBTRACT from `centers`: apply with `centers.scatter_sub(result)`.

    Rows are per example, indexed by label; duplicate labels add up in scatter_sub.

    variant="paper" (Wen et al., eq. 4): c_j ← c_j − α·Δc_j with
    Δc_j = Σ_{i: y_i=j} (c_j − x_i) / (1 + n_j), so row i is α·(c_{y_i} − x_i) / (1 + n_{y_i}).
    `label_counts` [B] is n_{y_i}; it defaults to the counts within the given labels. Distributed:
    pass counts over the GLOBAL batch (`count_labels(local_labels, all_gathered_labels)`); then the
    N replicas each scatter their local rows into a SUM-aggregated centers variable and the total
    is exactly the single-device update on the global batch.

    variant="facenet": facenet's c ← c − (1 − α)(c − x) per example, row (1 − α)·(c_{y_i} − x_i),
    no count division (facenet's center_loss_alfa: α is the fraction of the old center kept).
    `label_counts` is ignored.
    """
    if variant not in CENTER_UPDATE_VARIANTS:
        raise ValueError(
            f"unknown center update variant {variant!r}; expected one of {CENTER_UPDATE_VARIANTS}"
        )
    features = tf.stop_gradient(tf.cast(features, tf.float32))
    labels = tf.cast(labels, tf.int64)
    # Gather before casting: a variable is read only at the B rows it needs.
    diff = tf.cast(tf.gather(centers, labels), tf.float32) - features
    if variant == "paper":
        counts = count_labels(labels) if label_counts is None else tf.cast(label_counts, tf.float32)
        rows = alpha * diff / (1.0 + counts)[:, None]
    else:
        rows = (1.0 - alpha) * diff
    return tf.IndexedSlices(rows, labels, dense_shape=tf.shape(centers, out_type=tf.int64))


def center_stats(centers: tf.Tensor) -> tf.Tensor:
    """Mean L2 norm of the centers (scalar float32), for TensorBoard."""
    centers = tf.cast(centers, tf.float32)
    return tf.reduce_mean(tf.norm(centers, axis=-1))
