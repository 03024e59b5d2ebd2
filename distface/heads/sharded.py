"""The sharded (model-parallel) identity head: replica r holds only the class block
[r·P, (r+1)·P), P = ceil(C / N), of W; embeddings and labels are all-gathered; the softmax normaliser is a
cross-replica max and sum. No replica ever holds, or all-reduces, the whole C x d matrix.

Uneven class counts are padded: the last block's rows past C exist but are masked out of the softmax (logit −inf)
and never targeted, so every replica's block has the same shape (as ON_READ variables require).

Partial FC (An et al. 2021): with sample_rate < 1 each block keeps, per step, every class that appears in the
global batch plus a seeded random subset of its other classes, ceil(sample_rate·P) in all.
"""
import math

import tensorflow as tf

from distface.config import HeadConfig
from distface.heads.classifier import (HeadOutput, angle_sums, block_scores, feature_norms, initial_weight,
                                       margin_from_config)
from distface.heads.margins import label_columns, target_degrees
from distface.losses.cross_entropy import margin_softmax_cross_entropy


def block_size(num_classes: int, num_replicas: int) -> int:
    return math.ceil(num_classes / num_replicas)


def block_labels(labels: tf.Tensor, start, size: int) -> tf.Tensor:
    """Global labels -> columns of the block [start, start + size); −1 where the class lives elsewhere."""
    local = label_columns(labels) - tf.cast(start, tf.int64)
    return tf.where((local >= 0) & (local < size), local, -1)


class ShardedHead(tf.Module):
    """Variables by name as ReplicatedHead's: here all of them are `sharded` (this replica's class block)."""

    def __init__(self, cfg: HeadConfig, runtime, num_classes: int, embedding_size: int, seed: int = 0):
        super().__init__(name="head")
        self.kind = cfg.type
        self.margin_fn = margin_from_config(cfg)
        self.num_classes = num_classes
        self.block_size = block_size(num_classes, runtime.num_replicas)
        self.padded = self.block_size * runtime.num_replicas > num_classes  # the last block has padding rows
        self.sample_rate = cfg.sample_rate
        self.seed = seed
        self.replicated = {}
        self.sharded = {"weight": runtime.sharded_variable(
            lambda r: initial_weight(self.block_size, embedding_size, [seed, r]), name="weight")}
        if self.kind == "softmax":
            self.sharded["bias"] = runtime.sharded_variable(lambda r: tf.zeros([self.block_size]), name="bias")

    @property
    def weight(self):
        return self.sharded["weight"]

    def __call__(self, collectives, embeddings, labels, step, label_smoothing: float = 0.0) -> HeadOutput:
        local_batch = tf.shape(embeddings)[0]
        replica = collectives.replica_id()
        # Distribution: every block scores the whole global batch.
        gathered = collectives.all_gather(embeddings)
        # int32 through the collective (the CPU collectives pad an int64 with an op that has no GPU kernel)
        gathered_labels = label_columns(collectives.all_gather(tf.cast(labels, tf.int32)))
        start = replica * self.block_size
        columns = block_labels(gathered_labels, start, self.block_size)
        valid = start + tf.range(self.block_size) < self.num_classes
        weight, bias = self.weight, self.sharded.get("bias")
        if self.sample_rate < 1.0:
            index, columns = self._sample(columns, valid, step, replica)
            weight, valid = collectives.gather_rows(weight, index), tf.gather(valid, index)
            bias = None if bias is None else collectives.gather_rows(bias, index)
        scores, factors = block_scores(self.kind, weight, bias, gathered)
        parts = self.margin_fn.parts(feature_norms(gathered), step)
        loss = margin_softmax_cross_entropy(collectives, scores, columns, parts, self.num_classes,
                                            valid if self.padded else None, label_smoothing)
        own = tf.range(local_batch) + replica * local_batch
        block_degrees = target_degrees(scores, columns)
        # Distribution: each row's target lives in one block, so the sum over replicas is its angle.
        degrees = collectives.all_reduce_sum(block_degrees)
        # A full block's gradient is applied a range of rows at a time (ops/row_gradient.py); a sampled
        # one's is sparse rows already.
        row_factors = {"weight": factors} if self.sample_rate == 1.0 else {}
        return HeadOutput(tf.gather(loss, own), angle_sums(scores, columns, block_degrees, valid),
                          tf.gather(degrees, own), row_factors)

    def _sample(self, columns, valid, step, replica):
        """Block rows to keep this step (sorted) and the batch's labels remapped to them."""
        block = self.block_size
        keep = math.ceil(self.sample_rate * block)
        positive = tf.scatter_nd(tf.maximum(columns, 0)[:, tf.newaxis], tf.cast(columns >= 0, tf.float32),
                                 [block]) > 0
        noise = tf.random.stateless_uniform([block], seed=[self.seed, tf.cast(step, tf.int32) * 65536 + replica])
        # Positives first (score 2), then real classes at random, padding last.
        score = tf.where(positive, 2.0, tf.where(valid, noise, -1.0))
        count = tf.maximum(keep, tf.reduce_sum(tf.cast(positive, tf.int32)))
        index = tf.sort(tf.math.top_k(score, count).indices)
        position = tf.tensor_scatter_nd_update(tf.fill([block], tf.constant(-1, tf.int64)), index[:, tf.newaxis],
                                               tf.range(tf.cast(count, tf.int64)))
        remapped = tf.where(columns >= 0, tf.gather(position, tf.maximum(columns, 0)), -1)
        return index, remapped
