"""Softmax cross-entropy (fused with the margins) and center loss against float64 numpy written from the formulas,
and the fused loss's gradients against autodiff of the unfused composition (margin logits, then log-softmax)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from distface.heads import margins as M
from distface.losses.center import (
    center_loss,
    center_stats,
    center_update,
    count_labels,
)
from distface.losses.cross_entropy import margin_softmax_cross_entropy
from distface.parallel.single import SingleCollectives


def softmax_cross_entropy(logits, labels, label_smoothing=0.0):
    """The fused loss with the plain-softmax parts: the scores are the logits."""
    logits = tf.convert_to_tensor(logits)
    return margin_softmax_cross_entropy(SingleCollectives(), logits, labels, M.plain_parts(), logits.shape[1],
                                        label_smoothing=label_smoothing)


def _ce_reference(logits, labels, eps):
    logits = logits.astype(np.float64)
    b, c = logits.shape
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    target = np.full((b, c), eps / c)
    target[np.arange(b), labels] += 1.0 - eps
    return -(target * log_p).sum(axis=1), target


@pytest.mark.parametrize("eps", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_cross_entropy_matches_numpy(eps, scale):
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((16, 10)) * scale).astype(np.float32)
    logits[0, :] = [1e4, -1e4] * 5  # huge logits of both signs in one row
    labels = rng.integers(0, 10, 16)
    labels[0] = 1  # the target sits at −1e4 while the max is +1e4: loss ≈ 2e4, must stay finite
    got = softmax_cross_entropy(tf.constant(logits), tf.constant(labels), label_smoothing=eps)
    want, _ = _ce_reference(logits, labels, eps)
    assert got.dtype == tf.float32 and got.shape == (16,)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-5)


def test_cross_entropy_gradient_is_softmax_minus_target():
    rng = np.random.default_rng(1)
    logits = tf.constant(rng.standard_normal((8, 7)).astype(np.float32))
    labels = rng.integers(0, 7, 8)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = tf.reduce_sum(softmax_cross_entropy(logits, labels, label_smoothing=0.2))
    x = logits.numpy().astype(np.float64)
    softmax = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    _, target = _ce_reference(x, labels, 0.2)
    np.testing.assert_allclose(tape.gradient(loss, logits).numpy(), softmax - target, atol=1e-6)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_cross_entropy_low_precision_input_computes_in_float32(dtype):
    logits = np.array([[2.0, -1.0, 0.5]], np.float32)
    got = softmax_cross_entropy(tf.constant(logits, dtype), [0])
    want, _ = _ce_reference(logits, np.array([0]), 0.0)  # these values are exact in both dtypes
    assert got.dtype == tf.float32
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)


def test_cross_entropy_rejects_bad_smoothing():
    with pytest.raises(ValueError, match="label_smoothing"):
        softmax_cross_entropy(tf.zeros([1, 2]), [0], label_smoothing=1.5)


FUSED = [("softmax", {}), ("normface", dict(scale=16.0)), ("modified_softmax", {}),
         ("sphereface", dict(sphere_m=4)), ("cosface", dict(scale=30.0, m3=0.35)),
         ("arcface", dict(scale=30.0, m2=0.5)), ("arcface", dict(scale=30.0, m2=0.5, easy_margin=True)),
         ("combined", dict(scale=30.0, m1=1.2, m2=0.3, m3=0.1, warmup_steps=10))]


@pytest.mark.parametrize("eps", [0.0, 0.2])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("kind,kwargs", FUSED, ids=[f"{k}{i}" for i, (k, _) in enumerate(FUSED)])
def test_fused_loss_and_gradients_equal_the_composition(kind, kwargs, padded, eps):
    """Loss, dL/dcos and dL/dnorms of the fused loss against autodiff of margin logits + log-softmax written
    directly; rows with label −1 (target in another block) and padding columns included. Such a row's loss is
    only its block's share (its log-normaliser, up to the row's shift): compared through the gradients alone."""
    rng = np.random.default_rng(2)
    b, c, num_classes = 9, 6, 5 if padded else 6
    cosine = tf.constant(rng.uniform(-1, 1, (b, c)).astype(np.float32))
    norms = tf.constant(rng.uniform(0.5, 8.0, b).astype(np.float32))
    labels = tf.constant(np.r_[rng.integers(0, num_classes, b - 2), -1, -1].astype(np.int32))
    valid = tf.range(c) < num_classes if padded else None
    weights = tf.constant(rng.uniform(0.5, 2.0, b).astype(np.float32))  # a non-uniform upstream gradient
    margin = M.make_margin(kind, **kwargs)
    step = tf.constant(4, tf.int64)

    def composition(cos, n):
        logits = margin(cos, labels, n, step)
        if padded:
            logits = tf.where(valid, logits, -math.inf)
        log_norm = tf.reduce_logsumexp(logits, axis=1)
        target = tf.where(labels >= 0, tf.gather(logits, tf.maximum(labels, 0), batch_dims=1), 0.0)
        finite = tf.where(tf.math.is_finite(logits), logits, 0.0)
        smooth = log_norm - tf.reduce_sum(finite, axis=1) / num_classes
        return (1.0 - eps) * (log_norm - target) + eps * smooth

    def fused(cos, n):
        return margin_softmax_cross_entropy(SingleCollectives(), cos, labels, margin.parts(n, step), num_classes,
                                            valid, eps)

    results = []
    for fn in (composition, fused):
        with tf.GradientTape() as tape:
            tape.watch([cosine, norms])
            loss = fn(cosine, norms)
            total = tf.reduce_sum(weights * loss)
        results.append((loss, *tape.gradient(total, [cosine, norms])))
    (want, want_dc, want_dn), (got, got_dc, got_dn) = results
    np.testing.assert_allclose(got[:-2], want[:-2], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_dc, want_dc, rtol=1e-5, atol=1e-5)
    if want_dn is None:
        assert got_dn is None or not np.any(got_dn)
    else:
        np.testing.assert_allclose(got_dn, want_dn, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- center loss

NUM_CLASSES, DIM = 6, 5
# Repeated labels within one batch: class 2 three times, class 0 twice.
LABELS = np.array([2, 0, 2, 5, 0, 2, 3])


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((len(LABELS), DIM)).astype(np.float32)
    centers = rng.standard_normal((NUM_CLASSES, DIM)).astype(np.float32)
    return features, centers


def _paper_reference(features, labels, centers, alpha):
    """Wen et al. eq. 4, a loop per class: c_j ← c_j − α Σ_{y_i=j}(c_j − x_i) / (1 + n_j)."""
    new = centers.astype(np.float64).copy()
    for j in range(len(centers)):
        members = features[labels == j].astype(np.float64)
        delta = (centers[j] - members).sum(axis=0) / (1.0 + len(members))
        new[j] = centers[j] - alpha * delta
    return new


def _facenet_reference(features, labels, centers, alpha):
    """facenet: scatter_sub of (1 − α)(c_{y_i} − x_i), each example against the OLD center."""
    new = centers.astype(np.float64).copy()
    for x, y in zip(features.astype(np.float64), labels):
        new[y] -= (1.0 - alpha) * (centers[y] - x)
    return new


def test_center_loss_matches_numpy():
    features, centers = _batch()
    got = center_loss(tf.constant(features), LABELS, tf.constant(centers))
    diff = features.astype(np.float64) - centers.astype(np.float64)[LABELS]
    want = [0.5 * sum(v * v for v in row) for row in diff]
    assert got.shape == (len(LABELS),)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)


def test_center_loss_gradient_goes_to_features_only():
    features, centers = _batch()
    x, c = tf.Variable(features), tf.Variable(centers)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(center_loss(x, LABELS, c))
    grad_x, grad_c = tape.gradient(loss, [x, c])
    np.testing.assert_allclose(grad_x.numpy(), features - centers[LABELS], atol=1e-6)
    assert grad_c is None


@pytest.mark.parametrize(
    "variant, reference", [("paper", _paper_reference), ("facenet", _facenet_reference)]
)
@pytest.mark.parametrize("alpha", [0.5, 0.9])
def test_center_update_through_scatter_sub_matches_loop(variant, reference, alpha):
    features, centers = _batch()
    var = tf.Variable(centers)
    var.scatter_sub(center_update(features, LABELS, var, alpha=alpha, variant=variant))
    np.testing.assert_allclose(var.numpy(), reference(features, LABELS, centers, alpha), atol=1e-6)


def test_center_update_global_counts_split_over_replicas_equals_single_device():
    """Two "replicas" each scatter their half, with GLOBAL counts, into one sum.

    The result is the single-device update on the whole batch.
    """
    features, centers = _batch(seed=3)
    var = tf.Variable(centers)
    global_counts = count_labels(LABELS)
    for part in (slice(0, 3), slice(3, None)):  # class 2 and class 0 straddle the split
        counts = count_labels(LABELS[part], pool_labels=LABELS)
        np.testing.assert_array_equal(counts.numpy(), global_counts.numpy()[part])
        # Both replicas compute their rows from the same pre-step centers.
        var.scatter_sub(center_update(features[part], LABELS[part], centers, label_counts=counts))
    want = _paper_reference(features, LABELS, centers, 0.5)
    np.testing.assert_allclose(var.numpy(), want, atol=1e-6)


def test_center_update_explicit_counts_equal_default_when_they_agree():
    features, centers = _batch()
    n = np.array([np.sum(LABELS == y) for y in LABELS])  # counted independently of count_labels
    explicit = center_update(features, LABELS, centers, label_counts=n)
    default = center_update(features, LABELS, centers)
    np.testing.assert_allclose(explicit.values.numpy(), default.values.numpy(), rtol=0, atol=0)
    np.testing.assert_array_equal(explicit.indices.numpy(), LABELS)


def test_center_update_stops_gradient_and_accepts_low_precision():
    features, centers = _batch()
    x = tf.Variable(features)
    with tf.GradientTape() as tape:
        rows = center_update(tf.cast(x, tf.bfloat16), LABELS, centers).values
    assert rows.dtype == tf.float32
    assert tape.gradient(tf.reduce_sum(rows), x) is None


def test_center_update_rejects_unknown_variant():
    features, centers = _batch()
    with pytest.raises(ValueError, match="'wen'"):
        center_update(features, LABELS, centers, variant="wen")


def test_center_stats():
    centers = tf.Variable(np.array([[3, 4, 0], [0, 0, 0], [1, 2, 2], [0, 0, 5]], np.float32))
    np.testing.assert_allclose(center_stats(centers).numpy(), (5 + 0 + 3 + 5) / 4, rtol=1e-6)
