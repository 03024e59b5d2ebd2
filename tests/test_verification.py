"""Verification metrics against hand-computed cases and brute-force numpy references."""

import math

import numpy as np
import pytest

from distface.eval.verification import VerificationResult, evaluate, evaluate_distances, pair_distances


# ---------- independent references: O(N * T) scans, loops, pairwise counts ----------


def ref_candidates(d):
    u = sorted(set(d.tolist()))
    return [u[0] - 1.0] + [(u[i] + u[i + 1]) / 2 for i in range(len(u) - 1)] + [u[-1] + 1.0]


def ref_evaluate(dist, same, num_folds, far_target):
    n = len(dist)
    accs, thrs, vals, fars = [], [], [], []
    for test in np.array_split(np.arange(n), num_folds):
        train = np.setdiff1d(np.arange(n), test)
        dt, st = dist[train], same[train]
        best_acc, best_t = -1.0, None
        for t in ref_candidates(dt):  # ascending; strict > keeps the smallest best threshold
            acc = np.mean((dt < t) == st)
            if acc > best_acc:
                best_acc, best_t = acc, t
        t_val = None
        for t in ref_candidates(dt):
            fa = np.sum((dt < t) & ~st)
            far = fa / np.sum(~st) if np.sum(~st) else 0.0
            if far <= far_target:
                t_val = t  # keeps the largest admissible
        thrs.append(best_t)
        accs.append(np.mean((dist[test] < best_t) == same[test]))
        acc_test = dist[test] < t_val
        s = same[test]
        if s.sum():
            vals.append(np.sum(acc_test & s) / s.sum())
        fars.append(np.sum(acc_test & ~s) / np.sum(~s) if np.sum(~s) else 0.0)
    return dict(
        accuracy=np.mean(accs), accuracy_std=np.std(accs), threshold=np.mean(thrs),
        val=np.mean(vals), val_std=np.std(vals), far=np.mean(fars),
    )


def ref_auc(dist, same):
    """Mann-Whitney: P(d_same < d_diff) + 1/2 P(d_same == d_diff)."""
    ds, dd = dist[same][:, None], dist[~same][None, :]
    return np.mean((ds < dd) + 0.5 * (ds == dd))


def ref_eer(dist, same):
    """Walk the ROC polyline (accept d <= v for each distinct v) and solve FAR == FRR on each segment."""
    pts = [(0.0, 1.0)]  # (FAR, FRR) accepting nothing
    for v in sorted(set(dist.tolist())):
        pts.append((np.mean(dist[~same] <= v), 1.0 - np.mean(dist[same] <= v)))
    for (f0, r0), (f1, r1) in zip(pts, pts[1:]):
        # FAR(s) - FRR(s) = (f0 - r0) + s * ((f1 - r1) - (f0 - r0)), s in [0, 1]
        lo, hi = f0 - r0, f1 - r1
        if lo <= 0 <= hi and hi > lo:
            s = -lo / (hi - lo)
            return f0 + s * (f1 - f0)
    raise AssertionError("ROC never crosses FAR == FRR")


def assert_matches_reference(dist, same, num_folds=10, far_target=1e-3):
    got = evaluate_distances(dist, same, num_folds=num_folds, far_target=far_target)
    want = ref_evaluate(dist, same, num_folds, far_target)
    for key, value in want.items():
        assert getattr(got, key) == pytest.approx(value, abs=1e-12), key
    assert got.auc == pytest.approx(ref_auc(dist, same), abs=1e-12)
    assert got.eer == pytest.approx(ref_eer(dist, same), abs=1e-12)
    assert got.num_pairs == len(dist)


# ---------- pair_distances ----------


def test_pair_distances_matches_loop_reference():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 16)), rng.normal(size=(50, 16)) * 7.0
    got = pair_distances(a.astype(np.float32), b)
    assert got.dtype == np.float64 and got.shape == (50,)
    for i in range(50):
        ua = a[i].astype(np.float32).astype(np.float64)
        ua, ub = ua / np.sqrt(np.sum(ua**2)), b[i] / np.sqrt(np.sum(b[i] ** 2))
        assert got[i] == pytest.approx(np.sqrt(np.sum((ua - ub) ** 2)), abs=1e-12)


def test_pair_distances_closed_form():
    # orthogonal unit vectors: sqrt(2); opposite: 2; same direction: 0 (scale must not matter)
    a = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    b = np.array([[0.0, 5.0], [-1.0, 0.0], [0.0, 0.5]])
    np.testing.assert_allclose(pair_distances(a, b), [np.sqrt(2.0), 2.0, 0.0], atol=1e-15)


def test_evaluate_equals_evaluate_distances_of_pair_distances():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(60, 8)), rng.normal(size=(60, 8))
    same = rng.random(60) < 0.5
    b[same] = a[same] + 0.3 * rng.normal(size=(same.sum(), 8))
    assert evaluate(a, b, same) == evaluate_distances(pair_distances(a, b), same)


# ---------- exact answers ----------


def test_perfectly_separable():
    # every fold: same at 0.1..0.4, different at 0.6..1.0
    fold_d = np.concatenate([np.linspace(0.1, 0.4, 5), np.linspace(0.6, 1.0, 5)])
    fold_s = np.array([True] * 5 + [False] * 5)
    r = evaluate_distances(np.tile(fold_d, 10), np.tile(fold_s, 10))
    assert isinstance(r, VerificationResult)
    assert r.accuracy == 1.0 and r.accuracy_std == 0.0
    assert r.threshold == pytest.approx(0.5, abs=1e-15)  # the only candidate that separates: mid(0.4, 0.6)
    assert r.auc == 1.0 and r.eer == 0.0
    assert r.val == 1.0 and r.far == 0.0


def test_hand_computed_two_folds():
    """20 pairs, integer distances; every number below was worked out on paper.

    Fold 1 same {2,4,6,8,18} diff {10,12,14,16,20}; fold 2 same {3,5,9,11,13} diff {6,12,14,16,19}.
    Test fold 1 (train fold 2): accepting the 5 or the 7 smallest ties at 8/10 correct; the smaller
      threshold 11.5 wins (13.5 would give 7/10 on the test fold); test accuracy 8/10.
    Test fold 2 (train fold 1): unique best 9/10 at mid(8, 10) = 9; the test same pair at distance 9
      is rejected (strict <); test accuracy 6/10.
    VAL@FAR 0.2 (<= 1 of 5 false accepts on training): thresholds 11.5 and mid(10, 12) = 11:
      fold 1: VAL 4/5, FAR 1/5; fold 2: VAL 3/5 (11 itself is rejected), FAR 1/5.
    AUC: sum over same s of #(d > s) + #(d == s)/2 = 40 + 9.5 + 9 + 9 + 8 + 6 + 2 = 83.5 of 100.
    EER: the ROC reaches FAR = FRR = 0.2 exactly at "accept d <= 11".
    """
    d = np.array([2, 4, 6, 8, 18, 10, 12, 14, 16, 20, 3, 5, 9, 11, 13, 6, 12, 14, 16, 19], dtype=float)
    s = np.array(([True] * 5 + [False] * 5) * 2)
    r = evaluate_distances(d, s, num_folds=2, far_target=0.2)
    assert r.accuracy == pytest.approx(0.7, abs=1e-15)
    assert r.accuracy_std == pytest.approx(0.1, abs=1e-15)
    assert r.threshold == 10.25
    assert r.val == pytest.approx(0.7, abs=1e-15)
    assert r.val_std == pytest.approx(0.1, abs=1e-15)
    assert r.far == pytest.approx(0.2, abs=1e-15)
    assert r.auc == pytest.approx(0.835, abs=1e-15)
    assert r.eer == pytest.approx(0.2, abs=1e-15)


@pytest.mark.parametrize(
    "same_d, diff_d, eer",
    [
        # ROC (FAR, FRR): (0, 1/3) -> (1/2, 1/3) crosses at 1/3
        ([1.0, 2.0, 4.0], [3.0, 5.0], 1 / 3),
        # the tie at 2 is one diagonal step (0, 1/2) -> (1/2, 0), crossing at 1/4
        ([1.0, 2.0], [2.0, 3.0], 0.25),
        # (1/4, 3/4) -> (1/2, 1/4): FAR - FRR goes -1/2 -> 1/4, crosses at s = 2/3: FAR = 1/4 + 2/3 * 1/4
        ([1.0, 3.0, 3.0, 5.0], [0.5, 3.0, 4.0, 6.0], 1 / 4 + 1 / 6),
    ],
)
def test_eer_hand_cases(same_d, diff_d, eer):
    d = np.array(same_d + diff_d)
    s = np.array([True] * len(same_d) + [False] * len(diff_d))
    assert evaluate_distances(d, s, num_folds=2).eer == pytest.approx(eer, abs=1e-15)


def test_adjacent_float_distances_still_separate():
    # the midpoint of two adjacent floats rounds onto one of them; the threshold must still separate
    a = 0.7
    b = np.nextafter(a, 1.0)
    d = np.tile([a, b], 10)
    s = np.tile([True, False], 10)
    r = evaluate_distances(d, s)
    assert r.accuracy == 1.0 and r.auc == 1.0 and r.eer == 0.0


# ---------- against the brute-force reference ----------


@pytest.mark.parametrize("seed", range(6))
def test_random_cases_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(40, 200))
    same = rng.random(n) < 0.5
    same[:2] = [True, False]
    dist = np.where(same, rng.normal(0.9, 0.25, n), rng.normal(1.3, 0.25, n))
    if seed % 2:  # coarse rounding: many ties within and across classes
        dist = np.round(dist, 1)
    assert_matches_reference(dist, same, far_target=[1e-3, 0.05, 0.2][seed % 3])


@pytest.mark.parametrize("n, num_folds", [(23, 10), (101, 10), (57, 4)])
def test_n_not_divisible_by_folds(n, num_folds):
    rng = np.random.default_rng(n)
    same = np.arange(n) % 3 != 0
    dist = np.where(same, rng.random(n), rng.random(n) + 0.4)
    assert_matches_reference(dist, same, num_folds=num_folds, far_target=0.1)


@pytest.mark.parametrize("far_target", [0.0, 1e-3, 0.1, 0.25, 0.5, 1.0])
def test_val_far_with_duplicate_distances(far_target):
    # distances on a 5-value lattice: FAR is a staircase with long plateaus (facenet's interp1d fails here)
    rng = np.random.default_rng(7)
    same = rng.random(200) < 0.5
    dist = np.where(same, rng.integers(0, 3, 200), rng.integers(1, 5, 200)) / 4.0
    r = evaluate_distances(dist, same, far_target=far_target)
    assert 0.0 <= r.val <= 1.0 and 0.0 <= r.far <= 1.0
    assert_matches_reference(dist, same, far_target=far_target)


def test_training_folds_without_different_pairs():
    # 10 folds of 2: only the last fold has different pairs, so its training folds have none (FAR 0 at every
    # threshold -> accept everything) and its test fold has no same pairs (no VAL for that fold).
    same = np.array([True] * 18 + [False] * 2)
    dist = np.concatenate([np.linspace(0.1, 0.9, 18), [1.2, 1.4]])
    r = evaluate_distances(dist, same, far_target=1e-3)
    want = ref_evaluate(dist, same, 10, 1e-3)
    assert r.far == pytest.approx(want["far"], abs=1e-12) and r.far == pytest.approx(0.1, abs=1e-15)
    assert r.val == pytest.approx(want["val"], abs=1e-12)
    assert r.accuracy == pytest.approx(want["accuracy"], abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_auc_equals_mann_whitney(seed):
    rng = np.random.default_rng(100 + seed)
    n = 300
    same = rng.random(n) < 0.3
    same[:2] = [True, False]
    dist = np.round(np.where(same, rng.random(n), rng.random(n) + 0.3), 2)
    r = evaluate_distances(dist, same)
    assert r.auc == pytest.approx(ref_auc(dist, same), abs=1e-12)
    assert r.eer == pytest.approx(ref_eer(dist, same), abs=1e-12)


def test_large_input_is_fast_and_consistent():
    rng = np.random.default_rng(3)
    n = 60000
    same = np.arange(n) % 2 == 0
    dist = np.where(same, rng.normal(0.8, 0.2, n), rng.normal(1.3, 0.2, n))
    r = evaluate_distances(dist, same)
    # Bayes accuracy of two equal-variance normals 2.5 sigma apart: Phi(1.25)
    assert r.accuracy == pytest.approx(0.5 * (1 + math.erf(1.25 / math.sqrt(2))), abs=0.01)
    # rank-sum AUC (no ties in continuous data): independent of the ROC sweep
    ranks = np.empty(n)
    ranks[np.argsort(-dist)] = np.arange(1, n + 1)  # rank 1 = largest distance
    n_s, n_d = same.sum(), (~same).sum()
    assert r.auc == pytest.approx((ranks[same].sum() - n_s * (n_s + 1) / 2) / (n_s * n_d), abs=1e-12)


# ---------- errors ----------


def test_errors_are_clear():
    d, s = np.array([0.1, 0.9] * 10), np.array([True, False] * 10)
    with pytest.raises(ValueError, match="20 distances but 19 issame"):
        evaluate_distances(d, s[:19])
    with pytest.raises(ValueError, match="same shape"):
        evaluate(np.ones((4, 3)), np.ones((5, 3)), [1, 0, 1, 0])
    emb = np.ones((20, 4))
    emb[5, 2] = np.nan
    with pytest.raises(ValueError, match=r"embeddings contain NaN: training diverged\? \(emb2 row 5\)"):
        evaluate(np.ones((20, 4)), emb, s)
    with pytest.raises(ValueError, match="no pairs"):
        evaluate_distances(np.array([]), np.array([], dtype=bool))
    with pytest.raises(ValueError, match="no pairs"):
        evaluate(np.ones((0, 4)), np.ones((0, 4)), [])
    with pytest.raises(ValueError, match="boolean-like"):
        evaluate_distances(d, np.array([0, 1, 2, 1] * 5))
    with pytest.raises(ValueError, match="boolean-like"):
        evaluate_distances(d, np.array(["same", "diff"] * 10))
    with pytest.raises(ValueError, match="5 pairs cannot be split into 10 folds"):
        evaluate_distances(d[:5], s[:5])
    with pytest.raises(ValueError, match="both same and different"):
        evaluate_distances(d, np.ones(20, dtype=bool))
    with pytest.raises(ValueError, match="far_target"):
        evaluate_distances(d, s, far_target=1.5)
    with pytest.raises(ValueError, match="row 3 is all zeros"):
        pair_distances(np.ones((4, 2)), np.array([[1.0, 0], [1, 0], [1, 0], [0, 0]]))
    # 0/1 numbers are accepted as labels
    assert evaluate_distances(d, s.astype(float)) == evaluate_distances(d, s)


def test_a_collapsed_model_is_reported_not_raised_by_the_runs_evaluation(tmp_path):
    """Embeddings with a zero row (a collapsed or float16-underflowed model) end the evaluation of that set with one
    line and an eval.jsonl record naming why; the run goes on (its checkpoints are good)."""
    import json
    import types

    import tensorflow as tf

    from distface.checked_config import load_config
    from distface.eval.records import Evaluator

    cfg = load_config("debug", ["eval.flip=false"])
    lines = []
    monitor = types.SimpleNamespace(say=lines.append, writer=None, scalars=lambda *a: None)
    height, width = cfg.model.image_size
    zeros = tf.keras.Sequential([tf.keras.Input((height, width, 3)),
                                 tf.keras.layers.Lambda(lambda x: tf.zeros([tf.shape(x)[0], 8]))])
    records = Evaluator(cfg, tmp_path, monitor)(zeros, 7)
    assert len(lines) == 1 and lines[0].startswith("eval step 7 | pairs: not evaluated: ") and "all zeros" in lines[0]
    assert records == [json.loads((tmp_path / "eval.jsonl").read_text())]
    assert records[0]["step"] == 7 and "all zeros" in records[0]["error"]
