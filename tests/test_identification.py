"""1:N identification against brute-force loops; the ROC points and VAL threshold that verification now records;
the ROC and CMC pictures."""
import math

import numpy as np
import pytest

from distface.eval.identification import gallery_split, identification_report, identity_halves
from distface.eval.verification import ROC_FARS, evaluate_distances


def clustered(seed, sizes, dim=8, noise=0.9):
    rng = np.random.default_rng(seed)
    names = [f"id{i:02d}" for i in range(len(sizes))]
    centres = rng.normal(size=(len(sizes), dim))
    identities = np.repeat(names, sizes)
    return np.repeat(centres, sizes, axis=0) + noise * rng.normal(size=(len(identities), dim)), identities


def brute_force(emb, identities, per_identity, fpir_target, seed):
    """The protocol of distface.eval.identification, one probe and one identity at a time."""
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    names, labels = np.unique(identities, return_inverse=True)
    gallery = gallery_split(labels, per_identity, seed)

    def scores(probe, enrolled):
        return {j: max(float(emb[probe] @ emb[g]) for g in np.flatnonzero(gallery & (labels == j))) for j in enrolled}

    def rank(probe, enrolled):
        s = scores(probe, enrolled)
        return sum(1 for j in enrolled if s[j] >= s[labels[probe]]), s[labels[probe]]

    ranks = [rank(p, range(len(names)))[0] for p in np.flatnonzero(~gallery)]
    cmc = [np.mean([r <= k for r in ranks]) for k in range(1, len(names) + 1)]
    mated, impostors = [], []
    a, b = identity_halves(len(names), seed)
    for enrolled, unseen in ((a, b), (b, a)):
        mated += [rank(p, enrolled) for p in np.flatnonzero(~gallery) if labels[p] in enrolled]
        impostors += [max(scores(p, enrolled).values()) for p in np.flatnonzero(~gallery) if labels[p] in unseen]
    best = None
    for t in [-math.inf] + sorted(set(impostors)):
        fpir = np.mean([s > t for s in impostors])
        tpir = np.mean([r == 1 and s > t for r, s in mated])
        if fpir <= fpir_target and (best is None or tpir > best[0]):
            best = (tpir, fpir, t)
    return cmc, best


@pytest.mark.parametrize("seed, sizes, per_identity, target", [
    (0, [10] * 10, 1, 1e-2), (1, [6, 9, 4, 12, 7, 5, 8], 2, 0.05), (2, [3, 1, 5, 2, 4, 6, 2, 1, 3], 1, 0.2),
    (3, [10] * 10, 3, 1e-2)])
def test_identification_matches_brute_force(seed, sizes, per_identity, target):
    emb, identities = clustered(seed, sizes)
    r = identification_report(emb, identities, per_identity, target, seed)
    cmc, (tpir, fpir, threshold) = brute_force(emb, identities, per_identity, target, seed)
    np.testing.assert_allclose(r.cmc, cmc, atol=1e-12)
    assert (r.rank1, r.rank5) == pytest.approx((cmc[0], cmc[min(5, len(cmc)) - 1]))
    assert (r.tpir, r.fpir) == pytest.approx((tpir, fpir)) and r.fpir <= target
    assert r.threshold == pytest.approx(threshold) or r.threshold == threshold == -math.inf
    assert r.num_identities == len(sizes) and r.num_gallery + r.num_probes == len(emb)
    assert r.num_impostors == r.num_mated == r.num_probes  # each probe is mated in one round, an impostor in the other
    assert set(r.scalars()) == {"rank1", "rank5", f"tpir_fpir{target:g}"}


def test_ties_count_against_the_probe_and_the_split_is_per_identity():
    base, identities = clustered(4, [4] * 5)
    _, labels = np.unique(identities, return_inverse=True)
    gallery = gallery_split(labels, 1, seed=0)
    assert all(gallery[labels == j].sum() == 1 for j in range(5))
    assert not np.array_equal(gallery, gallery_split(labels, 1, seed=1))
    emb = base.copy()
    emb[labels == 1] = emb[gallery & (labels == 0)]  # identity 1 looks exactly like identity 0's gallery image
    r = identification_report(emb, identities, 1, seed=0)
    probes_of_1 = np.sum(~gallery & (labels == 1))
    assert r.cmc[0] <= 1 - probes_of_1 / r.num_probes  # a tie for first place is not a rank-1 hit
    with pytest.raises(ValueError, match="at least 2 identities"):
        identification_report(base[:4], ["a"] * 4)
    with pytest.raises(ValueError, match="no identity has a probe"):
        identification_report(base[:3], ["a", "b", "c"])


def brute_roc_tar(dist, same, far):
    """Best TPR over every 'accept dist <= c' rule (and accepting nothing) whose FPR <= far."""
    best = 0.0
    for c in np.unique(dist):
        accept = dist <= c
        if np.mean(accept[~same]) <= far:
            best = max(best, np.mean(accept[same]))
    return best


def brute_val_threshold(dist, same, folds, far_target):
    """Mean over folds of the largest candidate threshold ('same iff dist < t') with training FAR <= target."""
    chosen = []
    for test in np.array_split(np.arange(len(dist)), folds):
        train = np.setdiff1d(np.arange(len(dist)), test)
        u = np.unique(dist[train])
        candidates = [u[0] - 1.0, *((u[:-1] + u[1:]) / 2), u[-1] + 1.0]
        chosen.append(max(t for t in candidates if np.mean(dist[train][~same[train]] < t) <= far_target))
    return np.mean(chosen)


@pytest.mark.parametrize("seed", [0, 1])
def test_verification_records_its_roc_and_val_threshold(seed):
    rng = np.random.default_rng(seed)
    same = rng.random(600) < 0.5
    dist = np.round(np.where(same, rng.normal(0.8, 0.25, 600), rng.normal(1.3, 0.2, 600)), 2)  # with ties
    r = evaluate_distances(dist, same, num_folds=10, far_target=0.01)
    assert r.roc_far == ROC_FARS and len(ROC_FARS) == 41 and ROC_FARS[0] == pytest.approx(1e-4)
    np.testing.assert_allclose(r.roc_tar, [brute_roc_tar(dist, same, f) for f in ROC_FARS], atol=1e-12)
    assert r.val_threshold == pytest.approx(brute_val_threshold(dist, same, 10, 0.01))
    assert r.far_target == 0.01


def test_roc_and_cmc_pictures_draw_the_curves_where_the_axes_say():
    from distface.eval.plots import CURVE, Axes, cmc_curve_image, roc_curve_image

    same = np.arange(200) % 2 == 0
    r = evaluate_distances(np.where(same, 0.5, 1.5), same)  # perfect: TAR 1 at every FAR
    roc = roc_curve_image(r)
    assert roc.dtype == np.uint8 and roc.shape == (480, 640, 3)
    col, row = Axes((1e-4, 1.0), (0.0, 1.0), log_x=True).to_pixel(1e-2, 1.0)
    assert tuple(roc[round(row), round(col)]) == CURVE

    emb, identities = clustered(0, [10] * 10)
    result = identification_report(emb, identities)
    cmc = cmc_curve_image(result)
    col, row = Axes((1.0, 10.0), (0.0, 1.0)).to_pixel(10, result.cmc[-1])
    assert cmc.shape == (480, 640, 3) and tuple(cmc[round(row), round(col) - 2]) == CURVE
