"""Per-replica training batches, by what the objective needs: BATCHES[name](cfg, source, num_shards, shard_index,
skip_batches, bad_records) -> endless tf.data.Dataset of (images float32 [b, h, w, 3], labels int32 [b]).

source is TrainingSet.source (distface.data.sources); with train.accumulate_steps K > 1 each element is K
micro-batches [K, b, ...]. `skip_batches` continues an interrupted run's stream
exactly; bad_records (distface.data.failures.BadRecords, for data.bad_images) drops and counts, or stops at, the
images that cannot be decoded. cache_plan says what shuffled_batches does with data.cache, for the chief to
print. TensorFlow is imported when a dataset is built, not with this module.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from distface.config import Config

if TYPE_CHECKING:
    import tensorflow as tf

    from distface.data.failures import BadRecords


def shuffled_batches(cfg: Config, source, num_shards: int, shard_index: int, skip_batches: int = 0,
                     bad_records: BadRecords | None = None) -> tf.data.Dataset:
    """data.batch_size examples of this shard, a fresh permutation of it each epoch (classification)."""
    from distface.data.augment import training_augment
    from distface.data.pipeline import train_dataset

    d = cfg.data
    return train_dataset(source, image_size=tuple(cfg.model.image_size), batch_size=d.batch_size,
                         seed=cfg.train.seed, flip=training_augment(d), num_shards=num_shards, shard_index=shard_index,
                         cache=d.cache, cache_budget=_budget(cfg), skip_batches=skip_batches,
                         bad_records=bad_records)


def cache_plan(cfg: Config, source, num_shards: int, shard_index: int) -> tuple[bool, str]:
    """(whether shuffled_batches caches this shard's decoded images, one line saying why, for the chief to print);
    data.cache: true that cannot fit raises InputError naming the size and the memory, before anything is read."""
    from distface.data.pipeline import shard_cache

    return shard_cache(source, cfg.data.cache, tuple(cfg.model.image_size), num_shards, shard_index, _budget(cfg))


def _budget(cfg: Config) -> int | None:
    gib = cfg.data.cache_budget_gib
    return int(gib * 2 ** 30) if gib > 0 else None


def balanced_batches(cfg: Config, source, num_shards: int, shard_index: int, skip_batches: int = 0,
                     bad_records: BadRecords | None = None) -> tf.data.Dataset:
    """data.identities_per_batch identities x data.images_per_identity images each (triplet mining), drawn from
    this shard's own identities."""
    from distface.data.augment import training_augment
    from distface.data.pipeline import balanced_dataset

    d = cfg.data
    return balanced_dataset(source, identities_per_batch=d.identities_per_batch,
                            images_per_identity=d.images_per_identity, image_size=tuple(cfg.model.image_size),
                            seed=cfg.train.seed, flip=training_augment(d), num_shards=num_shards,
                            shard_index=shard_index, skip_batches=skip_batches, bad_records=bad_records)


def accumulated(make_batches):
    """make_batches' stream grouped by train.accumulate_steps (K): K micro-batches [K, b, ...] per training step
    (the stream unchanged for K = 1); skip_batches counts steps."""
    def batches(cfg: Config, source, num_shards: int, shard_index: int, skip_batches: int = 0,
                bad_records: BadRecords | None = None) -> tf.data.Dataset:
        steps = cfg.train.accumulate_steps
        dataset = make_batches(cfg, source, num_shards, shard_index, skip_batches * steps, bad_records)
        return dataset if steps == 1 else dataset.batch(steps, drop_remainder=True)

    return batches


BATCHES = {"shuffled": accumulated(shuffled_batches), "identity_balanced": accumulated(balanced_batches)}


def batches_plan(name: str, cfg: Config, source, num_shards: int, shard_index: int) -> str | None:
    """What BATCHES[name] will do with this shard that a user should see (the data.cache decision), checked
    before anything is read or written (a batch larger than the shard, a cache that cannot fit raise InputError);
    None when there is nothing to say."""
    if name != "shuffled":
        return None
    from distface.data.pipeline import check_batch_fits, shard_size

    check_batch_fits(shard_size(source, num_shards, shard_index), cfg.data.batch_size, num_shards, shard_index)
    return cache_plan(cfg, source, num_shards, shard_index)[1]
