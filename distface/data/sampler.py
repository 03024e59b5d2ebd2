"""Identity-balanced batches (P identities × K images) so triplet mining always has positives: the sampler
(indices) and the key-order stage built on it, which names the files before any of them is read."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from distface.config import InputError
from distface.data.folders import ImageList


def identity_balanced_batches(
    labels: np.ndarray,
    identities_per_batch: int,
    images_per_identity: int,
    seed: int,
    drop_small: bool = True,
) -> Iterator[np.ndarray]:
    """Infinite iterator of int64 index arrays of length P·K into `labels`, grouped by identity.

    Each batch holds P distinct identities (P = identities_per_batch) with K images each
    (K = images_per_identity), drawn without replacement. Identities are visited without
    replacement within an epoch and reshuffled every epoch; the last < P identities of an epoch
    are skipped, as a remainder batch would not have P identities.
    drop_small=True: identities with fewer than K images are never used. drop_small=False: they
    are used too, their images drawn with replacement to fill K (so their indices repeat).
    Validates eagerly: ValueError when fewer than P identities are usable.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise InputError(f"labels must be 1-D, got shape {labels.shape}")
    p, k = identities_per_batch, images_per_identity
    if p < 1 or k < 1:
        raise InputError(
            f"identities_per_batch and images_per_identity must be >= 1, got {p} and {k}"
        )
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    # Image indices of each identity, in dataset order.
    groups = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    usable = [g for g in groups if len(g) >= k or not drop_small]
    if len(usable) < p:
        raise InputError(
            f"only {len(usable)} identities have >= {k} images (images_per_identity), "
            f"but identities_per_batch={p}"
        )
    return _batches(usable, p, k, np.random.default_rng(seed))


def _batches(
    groups: list[np.ndarray], p: int, k: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    while True:
        order = rng.permutation(len(groups))
        for start in range(0, len(order) - p + 1, p):
            yield np.concatenate(
                [
                    rng.choice(groups[i], size=k, replace=len(groups[i]) < k)
                    for i in order[start : start + p]
                ]
            ).astype(np.int64)


def balanced_keys(images: ImageList, identities_per_batch: int, images_per_identity: int, seed: int,
                  num_shards: int = 1, shard_index: int = 0) -> tf.data.Dataset:
    """Endless (path, int32 label) of this worker's P x K batches, one example per element, no image read yet.

    Validates eagerly, as identity_balanced_batches does. Each iteration of the dataset restarts the same stream.
    """
    p, k = identities_per_batch, images_per_identity
    labels = np.asarray(images.labels)
    # Distribution: worker r takes identities r, r+N, r+2N, ... (disjoint), so other replicas only add
    # negatives, and draws them in its own order.
    mine = np.flatnonzero(labels % num_shards == shard_index)
    labels, seed = labels[mine], seed + 7919 * shard_index
    identity_balanced_batches(labels, p, k, seed)  # raise now, not at the first batch
    batches = tf.data.Dataset.from_generator(lambda: identity_balanced_batches(labels, p, k, seed),
                                             output_signature=tf.TensorSpec([p * k], tf.int64))
    paths, labels_t = tf.constant(np.asarray(images.paths)[mine]), tf.constant(labels, tf.int32)
    return batches.unbatch().map(lambda i: (tf.gather(paths, i), tf.gather(labels_t, i)))
