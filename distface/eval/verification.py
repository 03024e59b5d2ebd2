"""Face verification on labelled pairs: LFW's 10-fold accuracy, VAL@FAR, ROC AUC and EER.

The protocol is facenet's / insightface's, but every threshold is chosen exactly instead of on a grid.
Conventions, fixed here once:

- A pair is predicted "same" iff ``dist < threshold`` (strict).
- Candidate thresholds on a set of distances are the midpoints between consecutive distinct distances,
  plus ``min - 1`` (accepts nothing) and ``max + 1`` (accepts everything). Thresholds inside one gap
  are indistinguishable on that set; the midpoint stands for the gap.
- Folds are consecutive and unshuffled (LFW's pairs.txt is fold-blocked), ``np.array_split`` sized.
- Standard deviations are over folds with ``ddof=0``, as facenet reports them.
- A fold with no different pairs has FAR 0; a test fold with no same pairs has no VAL and is left out
  of ``val`` / ``val_std`` (NaN if every fold is like that).
- The ROC is kept at the fixed FARs ``ROC_FARS`` (TAR at FAR <= f over all pairs, exact: no interpolation),
  so every record holds the same 41 points however many pairs there are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ROC_FARS = tuple(float(f) for f in np.logspace(-4, 0, 41))  # 10 per decade, 1e-4 .. 1


class DegenerateEmbeddings(ValueError):
    """Embeddings that cannot be compared (NaN, Inf, or a row of zeros): a diverged or collapsed model."""


@dataclass(frozen=True)
class VerificationResult:
    accuracy: float  # mean test-fold accuracy
    accuracy_std: float
    threshold: float  # mean accuracy threshold chosen on the training folds
    val: float  # mean test-fold TPR at the VAL threshold
    val_std: float
    far: float  # mean test-fold FAR at the VAL threshold
    auc: float  # over all pairs
    eer: float  # over all pairs
    num_pairs: int
    val_threshold: float = float("nan")  # mean VAL threshold (a distance) chosen on the training folds
    far_target: float = 1e-3  # the FAR val_threshold was chosen for
    roc_far: tuple[float, ...] = ()  # ROC_FARS
    roc_tar: tuple[float, ...] = ()  # TAR at FAR <= roc_far[i], over all pairs


def pair_distances(emb1: np.ndarray, emb2: np.ndarray) -> np.ndarray:
    """Euclidean distance between the L2-normalised rows of emb1 and emb2, float64, shape [N].

    facenet and insightface threshold the *squared* distance; rates are identical (squaring is monotone
    on distances), only the reported threshold differs.
    """
    a = _check_embeddings(emb1, "emb1")
    b = _check_embeddings(emb2, "emb2")
    if a.shape != b.shape:
        raise ValueError(f"emb1 and emb2 must have the same shape, got {a.shape} and {b.shape}")
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.linalg.norm(a - b, axis=1)


def evaluate(
    emb1: np.ndarray, emb2: np.ndarray, issame, num_folds: int = 10, far_target: float = 1e-3
) -> VerificationResult:
    """Verification metrics of embedding pairs (emb1[i], emb2[i]) labelled by issame[i]."""
    return evaluate_distances(pair_distances(emb1, emb2), issame, num_folds, far_target)


def evaluate_distances(
    dist: np.ndarray, issame, num_folds: int = 10, far_target: float = 1e-3
) -> VerificationResult:
    """Verification metrics of pair distances labelled by issame (smaller distance = more alike).

    Per fold, on the other folds: the accuracy threshold maximises accuracy (ties: the smallest
    threshold); the VAL threshold is the largest whose FAR <= far_target. Both are then applied to
    the test fold. No interpolation of FAR (facenet's interp1d breaks on plateaus of equal FAR).
    """
    dist = np.asarray(dist, dtype=np.float64)
    if dist.ndim != 1:
        raise ValueError(f"distances must be 1-D, got shape {dist.shape}")
    if np.isnan(dist).any():
        raise ValueError("distances contain NaN: training diverged?")
    if np.isinf(dist).any():
        raise ValueError("distances contain Inf")
    same = _as_issame(issame)
    n = len(dist)
    if len(same) != n:
        raise ValueError(f"got {n} distances but {len(same)} issame labels")
    if n == 0:
        raise ValueError("no pairs to evaluate")
    if not same.any() or same.all():
        raise ValueError("issame must contain both same and different pairs")
    if num_folds < 2:
        raise ValueError(f"num_folds must be >= 2 (thresholds are chosen on other folds), got {num_folds}")
    if n < num_folds:
        raise ValueError(f"{n} pairs cannot be split into {num_folds} folds")
    if not 0.0 <= far_target <= 1.0:
        raise ValueError(f"far_target must be in [0, 1], got {far_target}")

    acc, thr, val, far, val_thr = [], [], [], [], []
    for test in np.array_split(np.arange(n), num_folds):
        train = np.ones(n, dtype=bool)
        train[test] = False
        t_acc, t_val = _choose_thresholds(dist[train], same[train], far_target)
        thr.append(t_acc)
        val_thr.append(t_val)
        acc.append(np.mean((dist[test] < t_acc) == same[test]))
        accept, is_same = dist[test] < t_val, same[test]
        val.append(accept[is_same].mean() if is_same.any() else np.nan)
        far.append(accept[~is_same].mean() if (~is_same).any() else 0.0)

    val = np.asarray(val)
    val = val[~np.isnan(val)]
    tpr, fpr = _roc(dist, same)
    auc, eer = _auc_eer(tpr, fpr)
    return VerificationResult(
        accuracy=float(np.mean(acc)),
        accuracy_std=float(np.std(acc)),
        threshold=float(np.mean(thr)),
        val=float(val.mean()) if val.size else float("nan"),
        val_std=float(val.std()) if val.size else float("nan"),
        far=float(np.mean(far)),
        auc=auc,
        eer=eer,
        num_pairs=n,
        val_threshold=float(np.mean(val_thr)),
        far_target=far_target,
        roc_far=ROC_FARS,
        # fpr never decreases along the sweep: the last candidate with FAR <= f has the largest TAR.
        roc_tar=tuple(float(tpr[np.searchsorted(fpr, f, side="right") - 1]) for f in ROC_FARS),
    )


def _sweep(dist: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ascending candidate thresholds and, per candidate, the same / different pairs it accepts.

    O(N log N): one sort, then cumulative counts over the distinct distances. Candidate j accepts
    exactly the pairs with distance <= u[j-1] (candidate 0 accepts none); equal distances move together.
    """
    u, inv = np.unique(dist, return_inverse=True)
    tp = np.concatenate([[0], np.cumsum(np.bincount(inv[same], minlength=len(u)))])
    fa = np.concatenate([[0], np.cumsum(np.bincount(inv[~same], minlength=len(u)))])
    mid = (u[:-1] + u[1:]) / 2
    # The midpoint of two adjacent floats can round down onto the lower one, which `<` would reject.
    mid = np.where(mid > u[:-1], mid, u[1:])
    thresholds = np.concatenate([[u[0] - 1.0], mid, [u[-1] + 1.0]])
    return thresholds, tp, fa


def _choose_thresholds(dist: np.ndarray, same: np.ndarray, far_target: float) -> tuple[float, float]:
    """(accuracy threshold, VAL threshold) chosen on one training set."""
    thresholds, tp, fa = _sweep(dist, same)
    n_diff = int((~same).sum())
    correct = tp + (n_diff - fa)
    t_acc = thresholds[np.argmax(correct)]  # argmax takes the first maximum: the smallest threshold
    far = fa / n_diff if n_diff else np.zeros(len(fa))
    # FAR never decreases with the threshold and is 0 at candidate 0, so a last admissible one exists.
    t_val = thresholds[np.flatnonzero(far <= far_target)[-1]]
    return float(t_acc), float(t_val)


def _roc(dist: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(TPR, FPR) at every candidate threshold of all pairs, ascending."""
    _, tp, fa = _sweep(dist, same)
    return tp / same.sum(), fa / (~same).sum()


def _auc_eer(tpr: np.ndarray, fpr: np.ndarray) -> tuple[float, float]:
    """ROC AUC (trapezoid; a tie between a same and a different pair counts 1/2) and EER."""
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    # g = FAR - FRR rises from -1 to 1 along the ROC; EER is where the polyline crosses g = 0.
    g = fpr - (1.0 - tpr)
    j = int(np.argmax(g >= 0))  # >= 1 since g[0] = -1
    a = -g[j - 1] / (g[j] - g[j - 1])
    eer = float(fpr[j - 1] + a * (fpr[j] - fpr[j - 1]))
    return auc, eer


def _check_embeddings(emb: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(emb, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be [num_pairs, dim], got shape {x.shape}")
    if np.isnan(x).any():
        row = int(np.argwhere(np.isnan(x))[0, 0])
        raise DegenerateEmbeddings(f"embeddings contain NaN: training diverged? ({name} row {row})")
    if np.isinf(x).any():
        row = int(np.argwhere(np.isinf(x))[0, 0])
        raise DegenerateEmbeddings(f"embeddings contain Inf: training diverged? ({name} row {row})")
    zero = np.flatnonzero(~np.any(x, axis=1))
    if zero.size:
        raise DegenerateEmbeddings(f"{name} row {zero[0]} is all zeros: it has no direction to normalise")
    return x


def _as_issame(issame) -> np.ndarray:
    a = np.asarray(issame)
    if a.ndim != 1:
        raise ValueError(f"issame must be 1-D, got shape {a.shape}")
    if a.dtype == bool:
        return a
    if a.dtype.kind in "iuf" and np.isin(a, (0, 1)).all():
        return a.astype(bool)
    raise ValueError(f"issame must be boolean-like (bool, or numbers that are all 0 or 1), got dtype {a.dtype}")
