"""Triplet loss with online mining (Schroff et al. 2015, "FaceNet").

Anchors are mined against a candidate pool (by default the anchors themselves; distributed: the
all-gathered global batch). Everything is O(B·M) memory for B anchors and M candidates: no tensor
ever indexes (anchor, positive, negative) triples.
"""

from typing import Any, NamedTuple

import tensorflow as tf


class TripletLoss(NamedTuple):
    """Per-anchor [B] float32 vectors, so a distributed caller can sum them across replicas."""

    loss_sum: tf.Tensor  # sum of the anchor's hinge terms
    num_pairs: tf.Tensor  # its terms: (a, p) pairs with a negative; batch_hard: 0 or 1
    num_semi_hard: tf.Tensor  # of those, how many use a negative farther than the positive


def _squared_l2(a: tf.Tensor, c: tf.Tensor) -> tf.Tensor:
    # ‖a‖² + ‖c‖² − 2a·c: a [B, M] matrix, where the direct difference would be [B, M, d].
    sq = tf.reduce_sum(a * a, 1)[:, None] + tf.reduce_sum(c * c, 1)[None, :]
    return tf.maximum(sq - 2.0 * tf.matmul(a, c, transpose_b=True), 0.0)


def _l2(a: tf.Tensor, c: tf.Tensor) -> tf.Tensor:
    d2 = _squared_l2(a, c)
    positive = d2 > 0.0
    # sqrt'(0) is infinite; feed 1 to the unused branch so the masked gradient is 0, not NaN.
    return tf.where(positive, tf.sqrt(tf.where(positive, d2, 1.0)), 0.0)


def _angular(a: tf.Tensor, c: tf.Tensor) -> tf.Tensor:
    # 1 − cosine rather than arccos: monotone in the angle (same mining), and arccos' gradient is
    # infinite at cos = ±1, where near-duplicate positives sit.
    a = tf.math.l2_normalize(a, axis=1)
    c = tf.math.l2_normalize(c, axis=1)
    return 1.0 - tf.matmul(a, c, transpose_b=True)


DISTANCES = {"squared_l2": _squared_l2, "l2": _l2, "angular": _angular}


def _semi_hard(dist, pos_mask, neg_mask, margin):
    """Per (a, p): the closest negative farther than p, else the farthest negative."""
    num_neg = tf.reduce_sum(tf.cast(neg_mask, tf.int32), axis=1)  # [B]
    # Negatives of each anchor in ascending order, non-negatives pushed to the end as +inf.
    sorted_neg = tf.sort(tf.where(neg_mask, dist, float("inf")), axis=1)
    # First negative with d(a, n) > d(a, p), for every candidate p of the row at once.
    first_farther = tf.searchsorted(sorted_neg, dist, side="right", out_type=tf.int32)
    semi_hard = first_farther < num_neg[:, None]
    pick = tf.where(semi_hard, first_farther, num_neg[:, None] - 1)
    pick = tf.clip_by_value(pick, 0, tf.shape(dist)[1] - 1)  # rows without negatives: masked below
    valid = pos_mask & (num_neg > 0)[:, None]
    neg_dist = tf.where(valid, tf.gather(sorted_neg, pick, batch_dims=1), 0.0)  # no ±inf past here
    hinge = tf.where(valid, tf.nn.relu(dist - neg_dist + margin), 0.0)
    return TripletLoss(
        loss_sum=tf.reduce_sum(hinge, axis=1),
        num_pairs=tf.reduce_sum(tf.cast(valid, tf.float32), axis=1),
        num_semi_hard=tf.reduce_sum(tf.cast(valid & semi_hard, tf.float32), axis=1),
    )


def _batch_hard(dist, pos_mask, neg_mask, margin):
    """Per anchor: its farthest positive against its closest negative."""
    valid = tf.reduce_any(pos_mask, axis=1) & tf.reduce_any(neg_mask, axis=1)
    hardest_pos = tf.reduce_max(tf.where(pos_mask, dist, -float("inf")), axis=1)
    hardest_neg = tf.reduce_min(tf.where(neg_mask, dist, float("inf")), axis=1)
    hardest_pos = tf.where(valid, hardest_pos, 0.0)  # no ±inf past here
    hardest_neg = tf.where(valid, hardest_neg, 0.0)
    hinge = tf.where(valid, tf.nn.relu(hardest_pos - hardest_neg + margin), 0.0)
    return TripletLoss(
        loss_sum=hinge,
        num_pairs=tf.cast(valid, tf.float32),
        num_semi_hard=tf.cast(valid & (hardest_neg > hardest_pos), tf.float32),
    )


MININGS = {"semi_hard": _semi_hard, "batch_hard": _batch_hard}


def triplet_loss(
    embeddings: tf.Tensor,
    labels: tf.Tensor,
    candidate_embeddings: tf.Tensor | None = None,
    candidate_labels: tf.Tensor | None = None,
    anchor_offset: int | tf.Tensor = 0,
    margin: float = 0.2,
    distance: str = "squared_l2",
    mining: str = "semi_hard",
) -> TripletLoss:
    """Mined triplet hinge max(d(a, p) − d(a, n) + margin, 0), summed per anchor.

    embeddings [B, d], labels [B]: the anchors. Positives and negatives come from the candidates
    [M, d] / [M] (default: the anchors), in which the anchors are rows
    anchor_offset .. anchor_offset + B − 1, so an anchor is never its own positive. Distributed:
    pass the all-gathered global batch as candidates and this replica's offset into it.

    distance: "squared_l2" (FaceNet), "l2", or "angular" = 1 − cosine similarity (the vectors are
    L2-normalised inside; the other two use the embeddings as given).
    mining: "semi_hard": each (a, p) pair with p ≠ a uses the negative with the smallest
    d(a, n) > d(a, p), else the one with the largest d(a, n); "batch_hard": one term per anchor,
    its farthest positive against its closest negative.
    Gradients flow into both embeddings and candidate_embeddings.
    """
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; expected one of {sorted(DISTANCES)}")
    if mining not in MININGS:
        raise ValueError(f"unknown mining {mining!r}; expected one of {sorted(MININGS)}")
    if (candidate_embeddings is None) != (candidate_labels is None):
        raise ValueError("pass candidate_embeddings and candidate_labels together, or neither")
    if candidate_embeddings is None:
        if isinstance(anchor_offset, int) and anchor_offset != 0:
            raise ValueError(f"anchor_offset={anchor_offset} needs an explicit candidate pool")
        candidate_embeddings, candidate_labels = embeddings, labels

    anchors = tf.cast(embeddings, tf.float32)
    candidates = tf.cast(candidate_embeddings, tf.float32)
    labels = tf.cast(labels, tf.int64)
    candidate_labels = tf.cast(candidate_labels, tf.int64)

    dist = DISTANCES[distance](anchors, candidates)  # [B, M]
    same = tf.equal(labels[:, None], candidate_labels[None, :])
    anchor_rows = tf.cast(anchor_offset, tf.int32) + tf.range(tf.shape(anchors)[0])
    is_self = tf.equal(anchor_rows[:, None], tf.range(tf.shape(candidates)[0])[None, :])
    return MININGS[mining](dist, same & ~is_self, ~same, tf.cast(margin, tf.float32))


def triplet_loss_mean(embeddings: tf.Tensor, labels: tf.Tensor, **kwargs: Any) -> tf.Tensor:
    """Single-device convenience: Σ loss_sum / max(Σ num_pairs, 1); kwargs as `triplet_loss`."""
    result = triplet_loss(embeddings, labels, **kwargs)
    return tf.reduce_sum(result.loss_sum) / tf.maximum(tf.reduce_sum(result.num_pairs), 1.0)
