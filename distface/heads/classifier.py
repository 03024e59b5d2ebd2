"""Identity head: a class-weight block W [C_block, d] and the margin function of the configured head type.

The block holds the contiguous global classes [class_start, class_start + C_block); with one replica it is the
whole head. Labels outside the block are mapped to -1 ("target elsewhere"), which the margin functions expect,
so the sharded head (one block per replica) reuses this class unchanged.
"""
import tensorflow as tf

from distface.config import HeadConfig
from distface.heads.margins import make_margin


def margin_from_config(cfg: HeadConfig):
    return make_margin(
        cfg.type, scale=cfg.scale, m1=cfg.m1, m2=cfg.m2, m3=cfg.m3, easy_margin=cfg.easy_margin,
        sphere_m=cfg.sphere_m, lambda_base=cfg.lambda_base, lambda_gamma=cfg.lambda_gamma,
        lambda_power=cfg.lambda_power, lambda_min=cfg.lambda_min, warmup_start=cfg.margin_warmup_start,
        warmup_steps=cfg.margin_warmup_steps)


class ClassBlock(tf.Module):
    def __init__(self, kind: str, margin_fn, block_size: int, embedding_size: int, class_start: int = 0,
                 seed: int = 0, name: str = "head"):
        super().__init__(name=name)
        self.kind = kind
        self.margin_fn = margin_fn
        self.class_start = class_start
        self.block_size = block_size
        init = tf.random.stateless_normal([block_size, embedding_size], seed=[seed, class_start], stddev=0.01)
        self.weight = tf.Variable(init, name="weight")
        self.bias = tf.Variable(tf.zeros([block_size]), name="bias") if kind == "softmax" else None

    def local_labels(self, labels: tf.Tensor) -> tf.Tensor:
        local = tf.cast(labels, tf.int32) - self.class_start
        return tf.where((local >= 0) & (local < self.block_size), local, -1)

    def cosine(self, embeddings: tf.Tensor) -> tf.Tensor:
        """Raw block scores: cos(x, w_j) for margin heads, x.w_j + b_j for plain softmax. Float32."""
        x = tf.cast(embeddings, tf.float32)
        if self.kind == "softmax":
            return tf.matmul(x, self.weight, transpose_b=True) + self.bias
        w = tf.math.l2_normalize(self.weight, axis=1)
        return tf.clip_by_value(tf.matmul(tf.math.l2_normalize(x, axis=1), w, transpose_b=True), -1.0, 1.0)

    def __call__(self, embeddings, labels, step):
        """Logits [B, C_block] and the cosines they came from (for the angle statistics)."""
        cosine = self.cosine(embeddings)
        norms = tf.norm(tf.cast(embeddings, tf.float32), axis=1)
        logits = self.margin_fn(cosine, self.local_labels(labels), norms, step)
        return logits, cosine


def build_head(cfg: HeadConfig, num_classes: int, embedding_size: int, seed: int = 0) -> ClassBlock:
    return ClassBlock(cfg.type, margin_from_config(cfg), num_classes, embedding_size, seed=seed)
