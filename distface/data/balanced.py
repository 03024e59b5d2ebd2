"""Identity-balanced batches for triplet training: P identities x K images each (FaceNet), so every anchor has
positives in its batch. Workers draw from disjoint identity sets, so other replicas only add negatives."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from distface.data.folders import ImageList
from distface.data.pipeline import decode_image, preprocess
from distface.losses.sampler import identity_balanced_batches


def balanced_dataset(source: ImageList, *, identities_per_batch: int, images_per_identity: int,
                     image_size: Sequence[int], seed: int, flip: bool = True, num_shards: int = 1,
                     shard_index: int = 0) -> tf.data.Dataset:
    """Endless batches (images [P*K, h, w, 3] float32, labels [P*K] int32) of this worker's identities."""
    labels = np.asarray(source.labels)
    mine = np.flatnonzero(labels % num_shards == shard_index)  # identities r, r+N, r+2N, ... (disjoint)
    paths = np.asarray(source.paths)[mine]
    batches = identity_balanced_batches(labels[mine], identities_per_batch, images_per_identity,
                                        seed=seed + 7919 * shard_index)
    indices = tf.data.Dataset.from_generator(lambda: batches, output_signature=tf.TensorSpec([None], tf.int64))
    paths_t, labels_t = tf.constant(paths), tf.constant(labels[mine], tf.int32)

    def load(position, index):
        image = decode_image(tf.gather(paths_t, index))
        flip_seed = tf.stack([tf.constant(seed, tf.int64), position])
        return preprocess(image, image_size, training=flip, seed=flip_seed), tf.gather(labels_t, index)

    ds = indices.unbatch().enumerate().map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(identities_per_batch * images_per_identity, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
