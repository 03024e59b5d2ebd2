"""Triplet mining against a brute-force float64 loop over all (a, p, n), and the P×K sampler."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from distface.data.sampler import identity_balanced_batches
from distface.losses.triplet import triplet_loss, triplet_loss_mean

DISTANCE_NAMES = ["squared_l2", "l2", "angular"]
MINING_NAMES = ["semi_hard", "batch_hard"]


def _distance(a, b, name):
    a, b = a.astype(np.float64), b.astype(np.float64)
    if name == "squared_l2":
        return np.sum((a - b) ** 2)
    if name == "l2":
        return np.sqrt(np.sum((a - b) ** 2))
    return 1.0 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))


def _reference(anchors, labels, pool, pool_labels, offset, margin, distance, mining):
    """Per-anchor (loss_sum, num_pairs, num_semi_hard), straight from the definitions."""
    out = np.zeros((len(anchors), 3))
    for i, a in enumerate(anchors):
        d = [_distance(a, c, distance) for c in pool]
        positives = [j for j in range(len(pool)) if pool_labels[j] == labels[i] and j != i + offset]
        negatives = [j for j in range(len(pool)) if pool_labels[j] != labels[i]]
        if not negatives:
            continue
        if mining == "batch_hard":
            if positives:
                hp, hn = max(d[p] for p in positives), min(d[n] for n in negatives)
                out[i] = [max(hp - hn + margin, 0.0), 1, hn > hp]
            continue
        for p in positives:
            farther = [d[n] for n in negatives if d[n] > d[p]]
            dn = min(farther) if farther else max(d[n] for n in negatives)
            out[i] += [max(d[p] - dn + margin, 0.0), 1, bool(farther)]
    return out


def _random_batch(seed, rows, dim=6, num_labels=4):
    rng = np.random.default_rng(seed)
    embeddings = rng.standard_normal((rows, dim)).astype(np.float32) * 0.5
    labels = rng.integers(0, num_labels, rows)
    return embeddings, labels


def _as_array(result):
    return np.stack([t.numpy() for t in result], axis=1)  # loss_sum, num_pairs, num_semi_hard


@pytest.mark.parametrize("distance", DISTANCE_NAMES)
@pytest.mark.parametrize("mining", MINING_NAMES)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_brute_force_own_batch(distance, mining, seed):
    x, y = _random_batch(seed, rows=10)
    # A margin on the scale of the distances, so both zero and non-zero hinges occur.
    margin = {"squared_l2": 1.0, "l2": 0.5, "angular": 0.3}[distance]
    got = triplet_loss(tf.constant(x), tf.constant(y), margin=margin, distance=distance,
                       mining=mining)
    want = _reference(x, y, x, y, 0, margin, distance, mining)
    assert want[:, 1].sum() > 0 and want[:, 0].sum() > 0
    np.testing.assert_allclose(_as_array(got), want, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("distance", DISTANCE_NAMES)
@pytest.mark.parametrize("mining", MINING_NAMES)
def test_matches_brute_force_with_candidate_pool(distance, mining):
    pool, pool_labels = _random_batch(seed=7, rows=12)
    anchors, labels = pool[4:9], pool_labels[4:9]  # anchors are rows 4..8 of the pool
    margin = {"squared_l2": 1.0, "l2": 0.5, "angular": 0.3}[distance]
    got = triplet_loss(anchors, labels, pool, pool_labels, anchor_offset=4, margin=margin,
                       distance=distance, mining=mining)
    want = _reference(anchors, labels, pool, pool_labels, 4, margin, distance, mining)
    assert want[:, 1].sum() > 0
    np.testing.assert_allclose(_as_array(got), want, rtol=1e-5, atol=2e-6)
    mean = triplet_loss_mean(anchors, labels, candidate_embeddings=pool,
                             candidate_labels=pool_labels, anchor_offset=4, margin=margin,
                             distance=distance, mining=mining)
    np.testing.assert_allclose(mean.numpy(), want[:, 0].sum() / want[:, 1].sum(), rtol=1e-5)


@pytest.mark.parametrize("distance", ["squared_l2", "l2"])
def test_semi_hard_negative_must_be_strictly_farther(distance):
    """Ties d(a, n) = d(a, p) are not semi-hard. Integer points: the float32 distances are exact."""
    x = np.array([[0, 0], [1, 0], [-1, 0], [0, 1], [2, 0], [5, 5]], np.float32)
    y = np.array([0, 0, 1, 1, 2, 2])
    got = triplet_loss(x, y, margin=5.0, distance=distance)
    want = _reference(x, y, x, y, 0, 5.0, distance, "semi_hard")
    np.testing.assert_allclose(_as_array(got), want, rtol=1e-6)


@pytest.mark.parametrize("distance", DISTANCE_NAMES)
@pytest.mark.parametrize("mining", MINING_NAMES)
def test_gradients_match_finite_differences_of_reference(distance, mining):
    """Gradients reach anchors and candidates separately, and equal the reference's derivatives."""
    pool, pool_labels = _random_batch(seed=11, rows=8, dim=3)
    anchors, labels = pool[2:6].copy(), pool_labels[2:6]
    margin = 2.0  # every hinge active, so the loss is smooth around this point
    a, c = tf.Variable(anchors), tf.Variable(pool)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(triplet_loss(a, labels, c, pool_labels, anchor_offset=2, margin=margin,
                                          distance=distance, mining=mining).loss_sum)
    grad_a, grad_c = tape.gradient(loss, [a, c])

    def total(anchors64, pool64):
        per_anchor = _reference(anchors64, labels, pool64, pool_labels, 2, margin, distance, mining)
        return per_anchor[:, 0].sum()

    h = 1e-6
    for which, (base, grad) in enumerate([(anchors, grad_a), (pool, grad_c)]):
        base = base.astype(np.float64)
        numeric = np.zeros_like(base)
        for idx in itertools.product(*map(range, base.shape)):
            plus, minus = base.copy(), base.copy()
            plus[idx] += h
            minus[idx] -= h
            args = [(plus, pool), (anchors, plus)][which]
            args_m = [(minus, pool), (anchors, minus)][which]
            numeric[idx] = (total(*args) - total(*args_m)) / (2 * h)
        np.testing.assert_allclose(grad.numpy(), numeric, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("mining", MINING_NAMES)
@pytest.mark.parametrize("labels", [[0, 1, 2, 3], [5, 5, 5, 5]], ids=["no_positive", "no_negative"])
def test_no_valid_pair_gives_zero_not_nan(mining, labels):
    x = tf.Variable(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32))
    with tf.GradientTape() as tape:
        result = triplet_loss(x, labels, mining=mining, distance="l2")
        mean = triplet_loss_mean(x, labels, mining=mining, distance="l2")
    np.testing.assert_array_equal(_as_array(result), 0.0)
    assert mean.numpy() == 0.0
    np.testing.assert_array_equal(tape.gradient(mean, x).numpy(), 0.0)


@pytest.mark.parametrize("mining", MINING_NAMES)
def test_l2_gradient_finite_for_identical_embeddings(mining):
    x = tf.Variable(tf.ones([6, 4]) * 0.3)
    with tf.GradientTape() as tape:
        loss = triplet_loss_mean(x, [0, 0, 1, 1, 2, 2], distance="l2", mining=mining)
    grad = tape.gradient(loss, x)
    np.testing.assert_allclose(loss.numpy(), 0.2, rtol=1e-6)  # d(a, p) = d(a, n) = 0: loss = margin
    assert np.all(np.isfinite(grad.numpy()))


def test_low_precision_embeddings():
    x, y = _random_batch(seed=3, rows=8)
    got = triplet_loss(tf.constant(x, tf.bfloat16), y)
    x16 = tf.cast(tf.constant(x, tf.bfloat16), tf.float32).numpy()
    assert got.loss_sum.dtype == tf.float32
    want = _reference(x16, y, x16, y, 0, 0.2, "squared_l2", "semi_hard")
    np.testing.assert_allclose(_as_array(got), want, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("mining", MINING_NAMES)
def test_graph_has_no_cubic_tensor(mining):
    """Forward and backward graph for B=64: no op output with B³ elements (no triple tensor)."""
    b = dim = 64  # dim = B, so even a [B, M, d] pairwise-difference tensor would count as B³
    spec = (tf.TensorSpec([b, dim], tf.float32), tf.TensorSpec([b], tf.int32))

    @tf.function(input_signature=spec)
    def step(x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = triplet_loss_mean(x, y, mining=mining)
        return loss, tape.gradient(loss, x)

    ops = step.get_concrete_function().graph.get_operations()
    sizes = [out.shape.num_elements() for op in ops for out in op.outputs]
    assert None not in sizes, "every shape should be static for this check to mean anything"
    assert max(sizes) >= b * b  # the [B, M] distance matrix is there ...
    assert max(sizes) < b**3  # ... and nothing bigger than O(B²)


def test_large_batch_runs():
    x, y = _random_batch(seed=5, rows=512, dim=128, num_labels=128)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    result = triplet_loss(x, y)
    assert result.loss_sum.shape == (512,)
    assert np.isfinite(result.loss_sum.numpy()).all() and result.num_pairs.numpy().sum() > 0


@pytest.mark.parametrize("kwargs, name", [({"distance": "cosine"}, "'cosine'"),
                                          ({"mining": "hard"}, "'hard'")])
def test_unknown_option_names_value_and_choices(kwargs, name):
    with pytest.raises(ValueError, match=name) as info:
        triplet_loss(tf.zeros([2, 3]), [0, 1], **kwargs)
    assert "semi_hard" in str(info.value) or "squared_l2" in str(info.value)


# ---------------------------------------------------------------- sampler

def _dataset_labels():
    # Identity i has i + 1 images (0..9), shuffled so indices are not grouped.
    labels = np.repeat(np.arange(10), np.arange(1, 11))
    return np.random.default_rng(0).permutation(labels)


def test_sampler_batches_are_p_identities_by_k_images():
    labels = _dataset_labels()
    p, k = 3, 4
    batches = identity_balanced_batches(labels, p, k, seed=1)
    eligible = {i for i in range(10) if np.sum(labels == i) >= k}  # identities 3..9: 7 of them
    for epoch in range(3):
        seen = []
        for _ in range(len(eligible) // p):  # 2 batches per epoch, the 7th identity is left over
            batch = next(batches)
            assert batch.dtype == np.int64 and batch.shape == (p * k,)
            assert len(set(batch.tolist())) == p * k
            ids, counts = np.unique(labels[batch], return_counts=True)
            assert len(ids) == p and np.all(counts == k)
            assert set(ids.tolist()) <= eligible
            seen += ids.tolist()
        assert len(seen) == len(set(seen)), f"identity repeated within epoch {epoch}"


def test_sampler_is_deterministic_for_a_seed():
    labels = _dataset_labels()

    def take(seed):
        batches = identity_balanced_batches(labels, 2, 3, seed)
        return [next(batches) for _ in range(6)]

    first, again, other = take(5), take(5), take(6)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_sampler_keeps_small_identities_when_asked():
    labels = np.array([0, 1, 1, 2, 2, 2])
    batches = identity_balanced_batches(labels, 3, 2, seed=0, drop_small=False)
    for _ in range(4):
        batch = next(batches)
        ids, counts = np.unique(labels[batch], return_counts=True)
        np.testing.assert_array_equal(ids, [0, 1, 2])
        np.testing.assert_array_equal(counts, 2)


def test_sampler_rejects_too_few_identities_eagerly():
    with pytest.raises(ValueError, match="only 2 identities have >= 3 images"):
        identity_balanced_batches(np.array([0, 0, 0, 1, 1, 1, 2, 2]), 3, 3, seed=0)
