"""1:N identification of labelled embeddings: rank-k accuracy and the CMC curve (closed set), TPIR at FPIR (open set).

The protocol, fixed here once:

- Each identity's images are shuffled with ``np.random.default_rng(seed)``; its first ``gallery_per_identity``
  are its gallery, the rest its probes.
- Scores are cosine similarities of L2-normalised embeddings; a probe's score for an identity is that of the
  identity's most similar gallery image (nearest neighbour).
- Closed set: every identity is enrolled. A probe's rank is the number of identities scoring at least as much as
  its own (ties count against it); CMC(k) is the fraction of probes of rank <= k.
- Open set: the identities are split in two seeded halves and each half in turn is enrolled, while the probes of
  the other half probe as impostors (identities never seen), as IJB-C uses its two galleries; the scores of both
  rounds are pooled, so every probe is mated once and an impostor once. An impostor is a false positive iff its
  top score exceeds the threshold t; a mated probe is a true positive iff its own identity ranks first and its
  score exceeds t. t is the lowest threshold whose FPIR <= the target (the (a+1)-th highest impostor top score,
  a = floor(target x impostors)), which gives the highest TPIR the target allows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class IdentificationResult:
    rank1: float
    rank5: float
    cmc: tuple[float, ...]  # cmc[k - 1]: fraction of closed-set probes of rank <= k, k = 1 .. identities
    tpir: float  # open set, at `threshold`
    fpir: float  # open set, reached at `threshold` (<= fpir_target)
    fpir_target: float
    threshold: float  # cosine similarity (-inf: every impostor may be accepted)
    num_identities: int
    num_gallery: int  # gallery images
    num_probes: int  # closed-set probes
    num_mated: int  # open-set mated probes, both rounds
    num_impostors: int  # open-set impostor probes, both rounds

    def scalars(self) -> dict[str, float]:
        """For TensorBoard, beside the verification scalars of the same set."""
        return {"rank1": self.rank1, "rank5": self.rank5, f"tpir_fpir{self.fpir_target:g}": self.tpir}


def identification_report(embeddings: np.ndarray, identities: Sequence[str], gallery_per_identity: int = 1,
                          fpir_target: float = 1e-2, seed: int = 0) -> IdentificationResult:
    """Closed- and open-set identification of embeddings [N, d] labelled identities [N] (see the module docstring)."""
    emb, labels, names = _check(embeddings, identities, gallery_per_identity, fpir_target)
    gallery = gallery_split(labels, gallery_per_identity, seed)
    if gallery.all():
        raise ValueError(f"identification: every image is a gallery image at {gallery_per_identity} per identity: "
                         "no identity has a probe")
    ranks, _, _ = _probe_scores(emb, labels, gallery, np.arange(len(names)), ~gallery)
    cmc = np.array([np.mean(ranks <= k) for k in range(1, len(names) + 1)])

    halves = identity_halves(len(names), seed)
    mated_ranks, mated_scores, impostor_scores = [], [], []
    for enrolled, unseen in (halves, halves[::-1]):
        rank, score, _ = _probe_scores(emb, labels, gallery, enrolled, ~gallery & np.isin(labels, enrolled))
        mated_ranks.append(rank)
        mated_scores.append(score)
        impostor_scores.append(_probe_scores(emb, labels, gallery, enrolled, ~gallery & np.isin(labels, unseen))[2])
    mated_ranks, mated_scores = np.concatenate(mated_ranks), np.concatenate(mated_scores)
    impostors = np.sort(np.concatenate(impostor_scores))[::-1]
    allowed = math.floor(fpir_target * len(impostors) + 1e-9)  # false positives the target permits
    threshold = float(impostors[allowed]) if allowed < len(impostors) else -math.inf
    return IdentificationResult(
        rank1=float(cmc[0]), rank5=float(cmc[min(5, len(cmc)) - 1]), cmc=tuple(float(c) for c in cmc),
        tpir=float(np.mean((mated_ranks == 1) & (mated_scores > threshold))) if len(mated_ranks) else float("nan"),
        fpir=float(np.mean(impostors > threshold)), fpir_target=fpir_target, threshold=threshold,
        num_identities=len(names), num_gallery=int(gallery.sum()), num_probes=int((~gallery).sum()),
        num_mated=len(mated_ranks), num_impostors=len(impostors))


def format_identification(r: IdentificationResult) -> str:
    return (f"identification: rank-1 {100 * r.rank1:.2f} % | rank-5 {100 * r.rank5:.2f} % | "
            f"TPIR {100 * r.tpir:.2f} % @ FPIR {100 * r.fpir:.2f} % (target {100 * r.fpir_target:g} %) | "
            f"{r.num_identities} identities, {r.num_probes} probes, {r.num_impostors} impostor probes")


def _check(embeddings, identities, gallery_per_identity: int, fpir_target: float):
    emb = np.asarray(embeddings, np.float64)
    if emb.ndim != 2:
        raise ValueError(f"identification: embeddings must be [N, d], got shape {emb.shape}")
    if len(identities) != len(emb):
        raise ValueError(f"identification: {len(identities)} identities for {len(emb)} embeddings")
    if not np.all(np.isfinite(emb)):
        raise ValueError("identification: embeddings hold NaN or Inf: training diverged?")
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError(f"identification: embedding {int(np.argmin(norms))} is all zeros")
    if gallery_per_identity < 1:
        raise ValueError(f"identification: gallery_per_identity must be >= 1, got {gallery_per_identity}")
    if not 0 < fpir_target <= 1:
        raise ValueError(f"identification: fpir_target must be in (0, 1], got {fpir_target}")
    names, labels = np.unique(np.asarray(identities, dtype=str), return_inverse=True)
    if len(names) < 2:
        raise ValueError(f"identification: needs at least 2 identities, got {len(names)}")
    return emb / norms, labels, names


def gallery_split(labels: np.ndarray, per_identity: int, seed: int = 0) -> np.ndarray:
    """Bool [N] over integer labels: the gallery images, the first `per_identity` of each identity's seeded
    shuffle; the rest are its probes."""
    order = np.random.default_rng(seed).permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]  # grouped by identity, shuffled within
    position = np.arange(len(order)) - np.searchsorted(labels[order], labels[order])  # within its identity
    gallery = np.zeros(len(labels), bool)
    gallery[order[position < per_identity]] = True
    return gallery


def identity_halves(num_identities: int, seed: int = 0) -> list[np.ndarray]:
    """The open-set rounds' two halves of the identities (labels 0 .. num_identities - 1), seeded."""
    return np.array_split(np.random.default_rng(seed).permutation(num_identities), 2)


def _probe_scores(emb, labels, gallery, enrolled, probes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per probe (bool mask): the rank and score of its own identity among the enrolled ones (0 and -inf when it is
    not enrolled; ties count against it) and its top score; an identity scores its best gallery image."""
    keep = np.flatnonzero(gallery & np.isin(labels, enrolled))
    keep = keep[np.argsort(labels[keep], kind="stable")]
    ids, starts = np.unique(labels[keep], return_index=True)
    probes = np.flatnonzero(probes)
    rank, own, top = [], [], []
    # Blocks of probes keep the [probes, gallery] similarity matrix to about 2**24 entries at a time.
    for block in np.array_split(probes, max(1, math.ceil(len(probes) * len(keep) / 2 ** 24))):
        scores = np.maximum.reduceat(emb[block] @ emb[keep].T, starts, axis=1)
        column = np.minimum(np.searchsorted(ids, labels[block]), len(ids) - 1)
        mine = ids[column] == labels[block]
        score = np.where(mine, scores[np.arange(len(block)), column], -np.inf)
        rank.append(np.where(mine, np.sum(scores >= score[:, None], axis=1), 0))
        own.append(score)
        top.append(scores.max(axis=1))
    return np.concatenate(rank), np.concatenate(own), np.concatenate(top)
