"""The training step: tape, per-replica partial loss, gradient reduction, clipping, update, statistics.

The step follows the engine's gradient convention (distface/parallel/engine.py): each replica's loss is its
share of the global loss (its own examples' terms over the global count); replicated gradients are summed
across replicas, sharded (head block) gradients stay local.
"""
from __future__ import annotations

import tensorflow as tf

from distface.config import Config
from distface.losses.center import center_loss, center_stats, center_update, count_labels
from distface.losses.triplet import triplet_loss

LOSS_SCALE_PERIOD = 2000  # good float16 steps before the loss scale doubles


class Trainer(tf.Module):
    """Owns the step counter, the centers and the update rule; backbone, head and optimizer are passed in.
    `head` is None for triplet training."""

    def __init__(self, cfg: Config, engine, backbone, head, optimizer, num_classes: int):
        super().__init__(name="trainer")
        self.cfg = cfg
        self.engine = engine
        self.backbone = backbone
        self.head = head
        self.optimizer = optimizer
        self.step = engine.replicated_variable(tf.constant(0, tf.int64), name="step")
        self.centers = None
        if cfg.loss.center_weight > 0:
            # Distribution: every replica's center update counts (SUM aggregation).
            self.centers = engine.replicated_variable(tf.zeros([num_classes, cfg.model.embedding_size]),
                                                      name="centers", sum_updates=True)
        # Non-finite guard: skipped steps in all, and in a row (the session stops at train.max_bad_steps).
        self.skipped = engine.replicated_variable(tf.constant(0, tf.int64), name="skipped_steps")
        self.bad_streak = engine.replicated_variable(tf.constant(0, tf.int64), name="bad_streak")
        # float16: dynamic loss scaling (halve on overflow, double after LOSS_SCALE_PERIOD good steps).
        self.loss_scale = None
        if cfg.train.mixed_precision == "float16":
            self.loss_scale = engine.replicated_variable(tf.constant(2.0 ** 15), name="loss_scale")
            self.good_steps = engine.replicated_variable(tf.constant(0, tf.int64), name="good_steps")
        self.global_batch = cfg.data.batch_size * engine.num_replicas
        self.num_classes = num_classes
        head_replicated = head.replicated_variables if head is not None else []
        self.replicated_variables = list(backbone.trainable_variables) + list(head_replicated)
        self.sharded_variables = list(head.sharded_variables) if head is not None else []
        optimizer.build(self.replicated_variables, self.sharded_variables)

    def counters(self) -> dict:
        """Step-by-step state besides parameters, saved with them so a resume continues exactly."""
        counters = {"skipped": self.skipped, "bad_streak": self.bad_streak}
        if self.loss_scale is not None:
            counters.update(loss_scale=self.loss_scale, good_steps=self.good_steps)
        return counters

    def replicated_state(self) -> list:
        """Every variable that must be equal on all replicas (what a Horovod broadcast covers)."""
        state = list(self.backbone.variables) + self.replicated_variables[len(self.backbone.trainable_variables):]
        state += [self.step, *self.counters().values()] + self.optimizer.slots[:len(self.replicated_variables)]
        return state + ([self.centers] if self.centers is not None else [])

    def _classification(self, embeddings, labels):
        """Partial loss and statistics {name: (numerator, denominator)}: each is reported as the ratio of the
        sums over replicas. A replica's share of a global total has denominator 1/N."""
        cfg = self.cfg
        ce, angles, degrees = self.head(self.engine, embeddings, labels, self.step, cfg.loss.label_smoothing)
        per_example = ce
        share = 1.0 / self.engine.num_replicas
        stats = {"loss/cross_entropy": (tf.reduce_sum(ce) / self.global_batch, share)}
        if self.centers is not None:
            center = center_loss(embeddings, labels, self.centers)
            per_example = per_example + cfg.loss.center_weight * center
            stats["loss/center"] = (tf.reduce_sum(center) / self.global_batch, share)
            stats["center/mean_norm"] = (center_stats(self.centers), 1.0)
        if self.head.kind != "softmax":
            stats["angle/target_deg"] = angles[0:2]
            stats["angle/nontarget_deg"] = angles[2:4]
            stats["angle/target_hist"] = degrees  # a histogram, not a ratio
        return tf.reduce_sum(per_example) / self.global_batch, stats

    def _triplet(self, embeddings, labels):
        cfg, engine = self.cfg.loss, self.engine
        embeddings = tf.math.l2_normalize(tf.cast(embeddings, tf.float32), axis=1)
        if cfg.triplet_cross_replica:
            # Distribution: mine positives and negatives in the all-gathered global batch.
            pool, pool_labels = engine.all_gather(embeddings), engine.all_gather(labels)
            offset = engine.replica_id() * tf.shape(embeddings)[0]
        else:
            pool, pool_labels, offset = embeddings, labels, 0
        t = triplet_loss(embeddings, labels, pool, pool_labels, offset, margin=cfg.triplet_margin,
                         distance=cfg.triplet_distance, mining=cfg.triplet_mining)
        pairs = tf.stop_gradient(engine.all_reduce_sum(tf.reduce_sum(t.num_pairs)))
        loss = tf.reduce_sum(t.loss_sum) / tf.maximum(pairs, 1.0)
        return loss, {"triplet/semi_hard_fraction": (tf.reduce_sum(t.num_semi_hard), tf.reduce_sum(t.num_pairs)),
                      "triplet/pairs": (tf.reduce_sum(t.num_pairs), 1.0 / engine.num_replicas)}

    def _replica_step(self, images, labels):
        cfg, engine = self.cfg, self.engine
        variables = self.replicated_variables + self.sharded_variables
        objective = self._triplet if cfg.loss.type == "triplet" else self._classification
        moving = [tf.identity(v) for v in self.backbone.non_trainable_variables]  # BN statistics before
        with tf.GradientTape() as tape:
            embeddings = self.backbone(images, training=True)
            loss, stats = objective(embeddings, labels)
            scaled = loss if self.loss_scale is None else loss * self.loss_scale
        grads = tape.gradient(scaled, variables)
        if self.loss_scale is not None:
            grads = [None if g is None else tf.cast(g, tf.float32) / self.loss_scale for g in grads]
        count = len(self.replicated_variables)
        grads = engine.reduce_gradients(grads[:count]) + grads[count:]
        # A step is good only if the loss and every gradient, on every replica, are finite.
        bad = tf.add_n([tf.reduce_sum(tf.cast(~tf.math.is_finite(tf.cast(g, tf.float32)), tf.float32))
                        for g in grads + [loss] if g is not None])
        ok = engine.all_reduce_sum(bad) == 0
        if cfg.optim.clip_norm > 0:
            grads = self._clip(grads, count)
        self.optimizer.apply(grads, variables, self.step, ok)
        for var, before in zip(self.backbone.non_trainable_variables, moving):
            var.assign(tf.where(ok, var, before))
        if self.centers is not None:
            # Distribution: n_j is counted over the global batch, each replica scatters its own rows.
            counts = count_labels(labels, engine.all_gather(labels))
            rows = center_update(embeddings, labels, self.centers, cfg.loss.center_alpha, counts,
                                 cfg.loss.center_variant)
            engine.scatter_sub_sum(self.centers, tf.IndexedSlices(tf.where(ok, rows.values, 0.0), rows.indices))
        self._count_step(ok)

        histograms = {n: engine.all_gather(stats.pop(n)) for n in [n for n in stats if n.endswith("_hist")]}
        stats["loss"] = (loss, 1.0 / engine.num_replicas)
        stats["train/skipped_steps"] = (tf.cast(self.skipped, tf.float32), 1.0)
        stats["train/bad_streak"] = (tf.cast(self.bad_streak, tf.float32), 1.0)
        if self.loss_scale is not None:
            stats["train/loss_scale"] = (self.loss_scale, 1.0)
        names = sorted(stats)
        totals = engine.all_reduce_sum(tf.stack([tf.cast(v, tf.float32) for n in names for v in stats[n]]))
        return {**{n: totals[2 * i] / tf.maximum(totals[2 * i + 1], 1e-12) for i, n in enumerate(names)},
                **histograms}

    def _count_step(self, ok):
        engine, bad = self.engine, tf.cast(~ok, tf.int64)
        engine.update(self.step, lambda v: v.assign_add(1))
        engine.update(self.skipped, lambda v, b: v.assign_add(b), bad)
        engine.update(self.bad_streak, lambda v, b: v.assign((v + b) * b), bad)
        if self.loss_scale is not None:
            good = tf.where(ok, self.good_steps + 1, 0)
            grow = good >= LOSS_SCALE_PERIOD
            engine.update(self.good_steps, lambda v, g, up: v.assign(tf.where(up, tf.zeros_like(g), g)), good, grow)
            engine.update(self.loss_scale, lambda v, good_step, up: v.assign(
                tf.where(good_step, tf.where(up, v * 2.0, v), v * 0.5)), ok, grow)
    def _clip(self, grads, replicated_count):
        """Clip by the norm of the whole gradient: a sharded block holds only its rows' part of it."""
        def squares(gs):
            return tf.add_n([tf.reduce_sum(tf.square(g)) for g in gs if g is not None] or [tf.zeros([])])

        norm = tf.sqrt(squares(grads[:replicated_count])
                       + self.engine.all_reduce_sum(squares(grads[replicated_count:])))
        scale = tf.minimum(1.0, self.cfg.optim.clip_norm / tf.maximum(norm, 1e-12))
        return [None if g is None else g * scale for g in grads]

    @tf.function
    def train_step(self, images, labels):
        return self.engine.run(self._replica_step, images, labels)

    def learning_rate(self) -> float:
        return float(self.optimizer.schedule(self.step - 1))
