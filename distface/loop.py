"""The training step and loop: tape, per-replica partial loss, gradient reduction, update, logging hooks.

The step follows the engine's gradient convention (distface/parallel/engine.py): each replica's loss is the sum
of its examples' losses over the GLOBAL batch, replicated gradients are summed across replicas.
"""
from __future__ import annotations

import tensorflow as tf

from distface.config import Config
from distface.heads.margins import target_angles
from distface.losses.center import center_loss, center_update, make_centers
from distface.losses.cross_entropy import softmax_cross_entropy


class Trainer(tf.Module):
    """Owns the step counter and the update rule; the model pieces are passed in (built under engine.scope())."""

    def __init__(self, cfg: Config, engine, backbone, head, optimizer, num_classes: int):
        super().__init__(name="trainer")
        self.cfg = cfg
        self.engine = engine
        self.backbone = backbone
        self.head = head
        self.optimizer = optimizer
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.centers = None
        if cfg.loss.center_weight > 0:
            self.centers = make_centers(num_classes, cfg.model.embedding_size)
        self.global_batch = cfg.data.batch_size * engine.num_replicas

    @property
    def trainable_variables(self):
        return list(self.backbone.trainable_variables) + list(self.head.trainable_variables)

    def _replica_step(self, images, labels):
        cfg = self.cfg
        variables = self.trainable_variables
        with tf.GradientTape() as tape:
            embeddings = self.backbone(images, training=True)
            logits, cosine = self.head(embeddings, labels, self.step)
            ce = softmax_cross_entropy(logits, labels, cfg.loss.label_smoothing)
            per_example = ce
            if self.centers is not None:
                center = center_loss(embeddings, labels, self.centers)
                per_example = per_example + cfg.loss.center_weight * center
            # Partial loss: this replica's share of the global-batch mean.
            loss = tf.reduce_sum(per_example) / self.global_batch
        grads = self.engine.reduce_gradients(tape.gradient(loss, variables))
        if cfg.optim.clip_norm > 0:
            grads, _ = tf.clip_by_global_norm(grads, cfg.optim.clip_norm)
        self.optimizer.apply_gradients(zip(grads, variables))
        if self.centers is not None:
            self.centers.scatter_sub(center_update(embeddings, labels, self.centers, cfg.loss.center_alpha,
                                                   variant=cfg.loss.center_variant))
        self.step.assign_add(1)

        theta_sum, theta_n, other_sum, other_n = target_angles(cosine, self.head.local_labels(labels))
        sums = {"loss": loss, "loss/cross_entropy": tf.reduce_sum(ce) / self.global_batch}
        if self.centers is not None:
            sums["loss/center"] = tf.reduce_sum(center) / self.global_batch
        sums = {k: self.engine.all_reduce_sum(v) for k, v in sums.items()}
        angles = self.engine.all_reduce_sum(tf.stack([theta_sum, theta_n, other_sum, other_n]))
        sums["angle/target_deg"] = angles[0] / tf.maximum(angles[1], 1.0)
        sums["angle/nontarget_deg"] = angles[2] / tf.maximum(angles[3], 1.0)
        return sums

    @tf.function
    def train_step(self, images, labels):
        return self.engine.run(self._replica_step, images, labels)

    def learning_rate(self) -> float:
        return float(self.optimizer.learning_rate)
