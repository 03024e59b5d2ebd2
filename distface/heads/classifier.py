"""The replicated (data-parallel) identity head, and the pieces every head shares.

Each replica holds the whole W [C, d] and classifies its own examples; W's gradient is reduced across replicas
like the backbone's. It is the single-device head and the baseline the sharded head (sharded.py) is measured
and tested against.
"""
import tensorflow as tf

from distface.config import HeadConfig
from distface.heads.margins import make_margin, target_angles, target_degrees
from distface.losses.cross_entropy import softmax_cross_entropy


def margin_from_config(cfg: HeadConfig):
    return make_margin(
        cfg.type, scale=cfg.scale, m1=cfg.m1, m2=cfg.m2, m3=cfg.m3, easy_margin=cfg.easy_margin,
        sphere_m=cfg.sphere_m, lambda_base=cfg.lambda_base, lambda_gamma=cfg.lambda_gamma,
        lambda_power=cfg.lambda_power, lambda_min=cfg.lambda_min, warmup_start=cfg.margin_warmup_start,
        warmup_steps=cfg.margin_warmup_steps)


def initial_weight(rows: int, embedding_size: int, seed) -> tf.Tensor:
    return tf.random.stateless_normal([rows, embedding_size], seed=seed, stddev=0.01)


def block_scores(kind: str, weight, bias, embeddings) -> tf.Tensor:
    """[B, C_block] float32: cos(x, w_j) for margin heads, x.w_j + b_j for plain softmax."""
    x = tf.cast(embeddings, tf.float32)
    if kind == "softmax":
        return tf.matmul(x, weight, transpose_b=True) + bias
    cosine = tf.matmul(tf.math.l2_normalize(x, axis=1), tf.math.l2_normalize(weight, axis=1), transpose_b=True)
    return tf.clip_by_value(cosine, -1.0, 1.0)


def feature_norms(embeddings) -> tf.Tensor:
    return tf.norm(tf.cast(embeddings, tf.float32), axis=1)


class ReplicatedHead(tf.Module):
    def __init__(self, cfg: HeadConfig, engine, num_classes: int, embedding_size: int, seed: int = 0):
        super().__init__(name="head")
        self.kind = cfg.type
        self.margin_fn = margin_from_config(cfg)
        self.num_classes = num_classes
        self.weight = engine.replicated_variable(initial_weight(num_classes, embedding_size, [seed, 0]),
                                                 name="weight", trainable=True)
        self.bias = engine.replicated_variable(tf.zeros([num_classes]), name="bias", trainable=True) \
            if self.kind == "softmax" else None
        self.replicated_variables = [v for v in (self.weight, self.bias) if v is not None]
        self.sharded_variables = []

    def __call__(self, engine, embeddings, labels, step, label_smoothing: float = 0.0):
        """Per-example loss of this replica's examples [b], angle sums (see margins.target_angles) and the
        examples' target angles [b] in degrees."""
        labels = tf.cast(labels, tf.int32)
        scores = block_scores(self.kind, self.weight, self.bias, embeddings)
        logits = self.margin_fn(scores, labels, feature_norms(embeddings), step)
        return (softmax_cross_entropy(logits, labels, label_smoothing), target_angles(scores, labels),
                target_degrees(scores, labels))
