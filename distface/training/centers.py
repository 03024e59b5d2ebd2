"""Where the center-loss centers live (`loss.center_sharding`), and how a step reads and moves them.

- replicated: every replica holds all C centers, [C, d]; each replica's update rows are all-gathered and applied
  by every replica alike (`runtime.scatter_sub_all`), so the copies stay equal: a SUM over replicas.
- sharded: replica r holds the centers of the head's class block r, [ceil(C/N), d]: the head's placement
  (`runtime.sharded_variable`) and padding rule, checkpointed and re-sharded with the head by global class id
  (state.sharded_state). A step all-gathers the labels; each owner fills the rows of the global batch whose class
  it owns and an all-reduce SUM hands every replica its examples' centers. The update is applied by the owner
  alone, from the all-gathered features and n_j counted over the global batch: the replicated SUM update exactly.

Both follow the replicated version's arithmetic row for row (center.py's math on the same rows), so sharding
changes memory and traffic, not the result.
"""
from __future__ import annotations

import tensorflow as tf

from distface.heads.margins import label_columns
from distface.heads.sharded import block_labels, block_size
from distface.losses.center import center_stats, center_update, count_labels
from distface.ops import variables

CENTER_SHARDINGS = ("auto", "replicated", "sharded")  # loss.center_sharding


def center_sharding(cfg) -> str:
    """loss.center_sharding with `auto` resolved: the centers follow the head (sharded beside a sharded head)."""
    if cfg.loss.center_sharding != "auto":
        return cfg.loss.center_sharding
    return "sharded" if cfg.head.sharding == "sharded" else "replicated"


class ReplicatedCenters:
    sharded = False

    def __init__(self, runtime, num_classes: int, embedding_size: int):
        self.variable = runtime.replicated_variable(tf.zeros([num_classes, embedding_size]), name="centers")

    def batch_centers(self, collectives, labels) -> tf.Tensor:
        """[b, d] float32: the centers of this replica's examples' classes."""
        return tf.gather(self.variable, labels)

    def mean_norm(self, collectives) -> tuple:
        """(numerator, denominator) of the mean center norm, summed over replicas by the loop."""
        return center_stats(self.variable), 1.0

    def update(self, runtime, embeddings, labels, alpha: float, variant: str, ok) -> None:
        # Distribution: n_j is counted over the global batch, and every replica's rows are applied.
        counts = count_labels(labels, runtime.collectives.all_gather(labels))
        rows = center_update(embeddings, labels, self.variable, alpha, counts, variant)
        runtime.scatter_sub_all(self.variable, tf.IndexedSlices(tf.where(ok, rows.values, 0.0), rows.indices))


class ShardedCenters:
    sharded = True

    def __init__(self, runtime, num_classes: int, embedding_size: int):
        self.num_classes = num_classes
        self.block_size = block_size(num_classes, runtime.num_replicas)
        self.variable = runtime.sharded_variable(lambda r: tf.zeros([self.block_size, embedding_size]),
                                                 name="centers", trainable=False)

    def _block_rows(self, collectives, labels):
        """The global batch's labels and their rows in this replica's block (−1: the class lives elsewhere)."""
        gathered = label_columns(collectives.all_gather(tf.cast(labels, tf.int32)))  # as the head gathers them
        return gathered, block_labels(gathered, collectives.replica_id() * self.block_size, self.block_size)

    def batch_centers(self, collectives, labels) -> tf.Tensor:
        _, rows = self._block_rows(collectives, labels)
        owned = rows[:, tf.newaxis] >= 0
        # Distribution: each global example's center comes from its class's owner (the others add zeros).
        filled = tf.where(owned, collectives.gather_rows(self.variable, tf.maximum(rows, 0)), 0.0)
        every = collectives.all_reduce_sum(tf.stop_gradient(filled))
        local_batch = tf.shape(labels)[0]
        return tf.gather(every, collectives.replica_id() * local_batch + tf.range(local_batch))

    def mean_norm(self, collectives) -> tuple:
        # Padding rows are never updated (no label maps to them), so they stay zero and add nothing to the sum.
        start = collectives.replica_id() * self.block_size
        valid = tf.clip_by_value(self.num_classes - start, 0, self.block_size)
        return center_stats(self.variable) * self.block_size, tf.cast(valid, tf.float32)

    def update(self, runtime, embeddings, labels, alpha: float, variant: str, ok) -> None:
        collectives = runtime.collectives
        gathered, rows = self._block_rows(collectives, labels)
        # Distribution: the owner moves its rows from every replica's features (the global batch) and global n_j.
        features = collectives.all_gather(tf.cast(embeddings, tf.float32))
        delta = center_update(features, tf.maximum(rows, 0), self.variable, alpha, count_labels(gathered), variant)
        keep = ok & (rows[:, tf.newaxis] >= 0)
        runtime.update(self.variable, _scatter_sub_rows, tf.where(keep, delta.values, 0.0), delta.indices)


def _scatter_sub_rows(var, values, indices):
    variables.scatter_sub(var, indices, values)


CENTER_PLACEMENTS = {"replicated": ReplicatedCenters, "sharded": ShardedCenters}


def build_centers(cfg, runtime, num_classes: int):
    """The centers of a classification objective with center loss, placed by loss.center_sharding."""
    return CENTER_PLACEMENTS[center_sharding(cfg)](runtime, num_classes, cfg.model.embedding_size)
