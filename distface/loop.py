"""The training step: tape, per-replica partial loss, gradient reduction, clipping, update, statistics.

The step follows the engine's gradient convention (distface/parallel/engine.py): each replica's loss is the sum
of its own examples' losses over the GLOBAL batch; replicated gradients are summed across replicas, sharded
(head block) gradients stay local.
"""
from __future__ import annotations

import tensorflow as tf

from distface.config import Config
from distface.losses.center import center_loss, center_update, count_labels


class Trainer(tf.Module):
    """Owns the step counter, the centers and the update rule; backbone, head and optimizer are passed in."""

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
        self.global_batch = cfg.data.batch_size * engine.num_replicas
        self.replicated_variables = list(backbone.trainable_variables) + list(head.replicated_variables)
        self.sharded_variables = list(head.sharded_variables)
        optimizer.build(self.replicated_variables, self.sharded_variables)

    def replicated_state(self) -> list:
        """Every variable that must be equal on all replicas (what a Horovod broadcast covers)."""
        state = list(self.backbone.variables) + list(self.head.replicated_variables) + [self.step]
        state += self.optimizer.slots[:len(self.replicated_variables)]
        return state + ([self.centers] if self.centers is not None else [])

    def _replica_step(self, images, labels):
        cfg, engine = self.cfg, self.engine
        variables = self.replicated_variables + self.sharded_variables
        with tf.GradientTape() as tape:
            embeddings = self.backbone(images, training=True)
            ce, angles = self.head(engine, embeddings, labels, self.step, cfg.loss.label_smoothing)
            per_example = ce
            if self.centers is not None:
                center = center_loss(embeddings, labels, self.centers)
                per_example = per_example + cfg.loss.center_weight * center
            loss = tf.reduce_sum(per_example) / self.global_batch  # this replica's share of the global mean
        grads = tape.gradient(loss, variables)
        count = len(self.replicated_variables)
        grads = engine.reduce_gradients(grads[:count]) + grads[count:]
        if cfg.optim.clip_norm > 0:
            grads = self._clip(grads, count)
        self.optimizer.apply(grads, variables, self.step)
        if self.centers is not None:
            # Distribution: n_j is counted over the global batch, each replica scatters its own rows.
            counts = count_labels(labels, engine.all_gather(labels))
            engine.scatter_sub_sum(self.centers, center_update(
                embeddings, labels, self.centers, cfg.loss.center_alpha, counts, cfg.loss.center_variant))
        engine.update(self.step, lambda step: step.assign_add(1))

        sums = {"loss": loss, "loss/cross_entropy": tf.reduce_sum(ce) / self.global_batch}
        if self.centers is not None:
            sums["loss/center"] = tf.reduce_sum(center) / self.global_batch
        sums = {k: engine.all_reduce_sum(v) for k, v in sums.items()}
        if self.head.kind != "softmax":
            angles = engine.all_reduce_sum(tf.stack(angles))
            sums["angle/target_deg"] = angles[0] / tf.maximum(angles[1], 1.0)
            sums["angle/nontarget_deg"] = angles[2] / tf.maximum(angles[3], 1.0)
        return sums

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
