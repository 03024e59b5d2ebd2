"""The training objective, chosen once by `loss.type`: a classification head (softmax or a margin, optionally with
center loss) or triplet loss. Each objective owns its variables, its loss, the batches it needs (a key of
`distface.data.batches.BATCHES`) and its config rules.

An objective's loss is this replica's PARTIAL loss (engine.py's convention) with its metrics: `ratios` are reported
as the sum over replicas of the numerators over the sum of the denominators (a replica's share of a global mean
has denominator 1/N), `histograms` are gathered from every replica; and the row factors of the sharded blocks
whose gradient is taken at their scores (ops/row_gradient.py), by trainable name.
"""
from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from distface.training.centers import build_centers, center_sharding
from distface.config import Config, require
from distface.heads.build import build_head
from distface.losses.center import center_distance
from distface.losses.triplet import triplet_loss


class Metrics(NamedTuple):
    ratios: dict  # name -> (numerator, denominator)
    histograms: dict  # name -> per-example values [b]


class Classification:
    name = "classification"
    batches = "shuffled"

    def __init__(self, cfg: Config, runtime, num_classes: int):
        self.cfg = cfg.loss
        self.num_classes = num_classes
        self.head = build_head(cfg.head, runtime, num_classes, cfg.model.embedding_size, seed=cfg.train.seed)
        # centers.ReplicatedCenters | ShardedCenters (loss.center_sharding), or None without center loss
        self.centers = build_centers(cfg, runtime, num_classes) if cfg.loss.center_weight > 0 else None

    @staticmethod
    def check(cfg: Config) -> None:
        """Config rules that hold only for this objective (ConfigError naming the key)."""
        # Without center loss there are no centers, and loss.center_sharding places nothing.
        if cfg.loss.center_weight > 0 and center_sharding(cfg) == "sharded":
            require(cfg.head.sharding == "sharded", "loss.center_sharding",
                    "sharded centers live beside the head's class blocks: needs head.sharding: sharded "
                    "(or use center_sharding: replicated)")

    def describe(self, cfg: Config) -> str:
        return f"{cfg.head.type} ({cfg.head.sharding} head) on {self.num_classes} identities"

    def loss(self, collectives, embeddings, labels, step, global_batch: int):
        out = self.head(collectives, embeddings, labels, step, self.cfg.label_smoothing)
        share = 1.0 / collectives.num_replicas
        ratios = {"loss/cross_entropy": (tf.reduce_sum(out.loss) / global_batch, share)}
        per_example = out.loss
        if self.centers is not None:
            center = center_distance(embeddings, self.centers.batch_centers(collectives, labels))
            per_example = per_example + self.cfg.center_weight * center
            ratios["loss/center"] = (tf.reduce_sum(center) / global_batch, share)
            ratios["center/mean_norm"] = self.centers.mean_norm(collectives)
        histograms = {}
        if self.head.kind != "softmax":
            angles = out.angles
            ratios["angle/target_deg"] = (angles.target_sum, angles.target_count)
            ratios["angle/nontarget_deg"] = (angles.other_sum, angles.other_count)
            histograms["angle/target"] = out.target_degrees
        row_factors = {f"head/{name}": factors for name, factors in out.row_factors.items()}
        return tf.reduce_sum(per_example) / global_batch, Metrics(ratios, histograms), row_factors

    def after_update(self, runtime, embeddings, labels, ok) -> None:
        """Move the centers towards this step's features (nothing moves on a skipped step)."""
        if self.centers is not None:
            self.centers.update(runtime, embeddings, labels, self.cfg.center_alpha, self.cfg.center_variant, ok)


class Triplet:
    name = "triplet"
    batches = "identity_balanced"
    head = None
    centers = None

    def __init__(self, cfg: Config, runtime, num_classes: int):
        self.cfg = cfg.loss
        self.num_classes = num_classes

    @staticmethod
    def check(cfg: Config) -> None:
        d, lo = cfg.data, cfg.loss
        require(d.source in ("orl", "folder"), "data.source", "triplet training reads image folders (orl or folder)")
        require(d.identities_per_batch >= 2 and d.images_per_identity >= 2, "data.identities_per_batch",
               "triplet batches need >= 2 identities x >= 2 images")
        require(d.batch_size == d.identities_per_batch * d.images_per_identity, "data.batch_size",
               f"must equal identities_per_batch x images_per_identity = "
               f"{d.identities_per_batch * d.images_per_identity} for loss.type: triplet")
        require(lo.center_weight == 0, "loss.center_weight", "center loss needs loss.type: classification")

    def describe(self, cfg: Config) -> str:
        return f"triplet ({cfg.loss.triplet_mining}) on {self.num_classes} identities"

    def loss(self, collectives, embeddings, labels, step, global_batch: int):
        cfg = self.cfg
        embeddings = tf.math.l2_normalize(tf.cast(embeddings, tf.float32), axis=1)
        if cfg.triplet_cross_replica:
            # Distribution: mine positives and negatives in the all-gathered global batch.
            pool, pool_labels = collectives.all_gather(embeddings), collectives.all_gather(labels)
            offset = collectives.replica_id() * tf.shape(embeddings)[0]
        else:
            pool, pool_labels, offset = embeddings, labels, 0
        t = triplet_loss(embeddings, labels, pool, pool_labels, offset, margin=cfg.triplet_margin,
                         distance=cfg.triplet_distance, mining=cfg.triplet_mining)
        pairs = tf.stop_gradient(collectives.all_reduce_sum(tf.reduce_sum(t.num_pairs)))
        loss = tf.reduce_sum(t.loss_sum) / tf.maximum(pairs, 1.0)
        ratios = {"triplet/semi_hard_fraction": (tf.reduce_sum(t.num_semi_hard), tf.reduce_sum(t.num_pairs)),
                  "triplet/pairs": (tf.reduce_sum(t.num_pairs), 1.0 / collectives.num_replicas)}
        return loss, Metrics(ratios, {}), {}

    def after_update(self, runtime, embeddings, labels, ok) -> None:
        """Triplet training has no state besides the backbone."""


OBJECTIVES = {cls.name: cls for cls in (Classification, Triplet)}
