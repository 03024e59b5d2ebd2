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
from distface.heads.classifier import block_scores, feature_norms, initial_weight, margin_from_config
from distface.heads.margins import target_angles, target_degrees
from distface.losses.cross_entropy import sharded_softmax_cross_entropy


def block_size(num_classes: int, num_replicas: int) -> int:
    return math.ceil(num_classes / num_replicas)


def block_labels(labels: tf.Tensor, start, size: int) -> tf.Tensor:
    """Global labels -> columns of the block [start, start + size); −1 where the class lives elsewhere."""
    local = tf.cast(labels, tf.int32) - start
    return tf.where((local >= 0) & (local < size), local, -1)


class ShardedHead(tf.Module):
    def __init__(self, cfg: HeadConfig, engine, num_classes: int, embedding_size: int, seed: int = 0):
        super().__init__(name="head")
        self.kind = cfg.type
        self.margin_fn = margin_from_config(cfg)
        self.num_classes = num_classes
        self.block = block_size(num_classes, engine.num_replicas)
        self.sample_rate = cfg.sample_rate
        self.seed = seed
        self.weight = engine.sharded_variable(lambda r: initial_weight(self.block, embedding_size, [seed, r]),
                                              name="weight")
        self.bias = engine.sharded_variable(lambda r: tf.zeros([self.block]), name="bias") \
            if self.kind == "softmax" else None
        self.replicated_variables = []
        self.sharded_variables = [v for v in (self.weight, self.bias) if v is not None]

    def __call__(self, engine, embeddings, labels, step, label_smoothing: float = 0.0):
        """Per-example loss of this replica's examples [b], angle sums over this block and the examples'
        target angles [b] in degrees."""
        local_batch = tf.shape(embeddings)[0]
        # Distribution: every block scores the whole global batch.
        gathered = engine.all_gather(embeddings)
        gathered_labels = engine.all_gather(tf.cast(labels, tf.int32))
        start = engine.replica_id() * self.block
        columns = block_labels(gathered_labels, start, self.block)
        valid = start + tf.range(self.block) < self.num_classes
        weight, bias = self.weight, self.bias
        if self.sample_rate < 1.0:
            index, columns = self._sample(columns, valid, step, engine.replica_id())
            weight, valid = tf.gather(weight, index), tf.gather(valid, index)
            bias = None if bias is None else tf.gather(bias, index)
        scores = block_scores(self.kind, weight, bias, gathered)
        logits = self.margin_fn(scores, columns, feature_norms(gathered), step)
        logits = tf.where(valid, logits, -math.inf)
        loss = sharded_softmax_cross_entropy(engine, logits, columns, self.num_classes, label_smoothing)
        own = tf.range(local_batch) + engine.replica_id() * local_batch
        # Distribution: each row's target lives in one block, so the sum over replicas is its angle.
        degrees = engine.all_reduce_sum(target_degrees(scores, columns))
        return tf.gather(loss, own), target_angles(tf.where(valid, scores, math.nan), columns), tf.gather(degrees, own)

    def _sample(self, columns, valid, step, replica):
        """Block rows to keep this step (sorted) and the batch's labels remapped to them."""
        keep = math.ceil(self.sample_rate * self.block)
        positive = tf.scatter_nd(tf.maximum(columns, 0)[:, tf.newaxis], tf.cast(columns >= 0, tf.float32),
                                 [self.block]) > 0
        noise = tf.random.stateless_uniform([self.block], seed=[self.seed, tf.cast(step, tf.int32) * 65536 + replica])
        # Positives first (score 2), then real classes at random, padding last.
        score = tf.where(positive, 2.0, tf.where(valid, noise, -1.0))
        count = tf.maximum(keep, tf.reduce_sum(tf.cast(positive, tf.int32)))
        index = tf.sort(tf.math.top_k(score, count).indices)
        position = tf.tensor_scatter_nd_update(tf.fill([self.block], -1), index[:, tf.newaxis], tf.range(count))
        remapped = tf.where(columns >= 0, tf.gather(position, tf.maximum(columns, 0)), -1)
        return index, remapped


def build_head(cfg: HeadConfig, engine, num_classes: int, embedding_size: int, seed: int = 0):
    if cfg.sharding == "sharded":
        return ShardedHead(cfg, engine, num_classes, embedding_size, seed)
    from distface.heads.classifier import ReplicatedHead

    return ReplicatedHead(cfg, engine, num_classes, embedding_size, seed)
