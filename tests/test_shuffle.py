"""Full-permutation shuffle and data.cache: auto (issue 13). Packs are sorted by identity, so each epoch must be a
permutation of the whole shard, per worker, resumable; the cache is used only when the decoded shard fits."""
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from distface.config import Config, ConfigError, InputError, parse_config
from distface.data.batches import cache_plan
from distface.data.folders import scan_identity_folders
from distface.data.pipeline import permuted_indices, shard_cache, train_dataset
from distface.data.recordio import RecordIOSource, write_recordio
from distface.data.tfrecord import TFRecordSource, write_tfrecord

IDENTITIES, PER_IDENTITY = 100, 20
N = IDENTITIES * PER_IDENTITY
SIZE = (4, 4)


@pytest.fixture(scope="module")
def sorted_sets(tmp_path_factory):
    """The same identity-sorted set of N images four ways; image i is constant colour (i % 256, i // 256, 0)."""
    root = tmp_path_factory.mktemp("faces")
    for i in range(N):
        folder = root / f"id{i // PER_IDENTITY}"
        folder.mkdir(exist_ok=True)
        Image.new("RGB", SIZE, (i % 256, i // 256, 0)).save(folder / f"{i % PER_IDENTITY}.png")
    images = scan_identity_folders(root)
    packs = tmp_path_factory.mktemp("packs")
    write_recordio(images, packs / "train.rec")
    files = write_tfrecord(images, packs / "train.tfrecord", num_files=4)
    pixels = np.zeros((N, *SIZE, 3), np.uint8)
    pixels[..., 0], pixels[..., 1] = (np.arange(N) % 256)[:, None, None], (np.arange(N) // 256)[:, None, None]
    return {"folder": images, "rec": RecordIOSource(packs), "tfrecord": TFRecordSource(files),
            "memory": (pixels, images.labels)}


def stream(source, batches, batch_size=50, **kwargs):
    """(image ids read back from the pixels, labels) of the first `batches` batches, unflipped."""
    ds = train_dataset(source, image_size=SIZE, batch_size=batch_size, seed=7, flip=False, **kwargs)
    x, y = zip(*[(x.numpy(), y.numpy()) for x, y in ds.take(batches)])
    pixels = np.rint(np.concatenate(x)[:, 0, 0] * 128 + 127.5).astype(int)
    ids, labels = pixels[:, 0] + 256 * pixels[:, 1], np.concatenate(y)
    np.testing.assert_array_equal(labels, ids // PER_IDENTITY)  # each label travels with its own image
    return ids, labels


CASES = [("folder", False), ("folder", True), ("rec", False), ("rec", True), ("tfrecord", False), ("memory", False)]


@pytest.mark.parametrize("kind, cache", CASES)
def test_workers_epochs_are_permutations_disjoint_covering_and_new_each_epoch(sorted_sets, kind, cache):
    shards, first_epochs = 3, []
    for index in range(shards):
        size = len(range(index, N, shards))  # 667, 667, 666: epochs end inside batches
        ids, _ = stream(sorted_sets[kind], -(-2 * size // 50), num_shards=shards, shard_index=index, cache=cache)
        epochs = ids[:size], ids[size:2 * size]
        for epoch in epochs:
            np.testing.assert_array_equal(np.sort(epoch), np.arange(index, N, shards))  # every key once
        assert np.mean(epochs[0] != epochs[1]) > 0.9  # the second epoch is a new order
        first_epochs.append(set(epochs[0]))
    assert sum(map(len, first_epochs)) == N and set.union(*first_epochs) == set(range(N))  # disjoint, covering


@pytest.mark.parametrize("kind, cache", CASES)
def test_resumed_stream_equals_the_uninterrupted_one(sorted_sets, kind, cache):
    source, skip = sorted_sets[kind], 17  # shard 1 of 2 has 1000 images: the resume crosses an epoch at batch 20
    whole = train_dataset(source, image_size=SIZE, batch_size=50, seed=3, num_shards=2, shard_index=1, cache=cache)
    resumed = train_dataset(source, image_size=SIZE, batch_size=50, seed=3, num_shards=2, shard_index=1, cache=cache,
                            skip_batches=skip)
    for (x, y), (rx, ry) in zip(whole.skip(skip).take(6), resumed.take(6), strict=True):
        np.testing.assert_array_equal(rx.numpy(), x.numpy())  # images, flips included
        np.testing.assert_array_equal(ry.numpy(), y.numpy())


def test_resume_reads_no_skipped_image(sorted_sets, monkeypatch):
    # 20 batches of 50 are half the first epoch: no read-ahead of the resumed stream reaches the next epoch.
    rec, skip = sorted_sets["rec"], 20
    skipped = set(stream(rec, skip, cache=False)[0])
    read = []
    original = RecordIOSource.read_image
    monkeypatch.setattr(RecordIOSource, "read_image", lambda self, i: read.append(i) or original(self, i))
    resumed = stream(rec, 4, cache=False, skip_batches=skip)[0]
    assert set(resumed) <= set(read) and not set(read) & skipped


def test_permuted_indices_resume_at_any_element():
    whole = np.array(list(permuted_indices(10, seed=5).take(35).as_numpy_iterator()))
    for start in (0, 3, 10, 27):
        got = np.array(list(permuted_indices(10, seed=5, start=start).take(35 - start).as_numpy_iterator()))
        np.testing.assert_array_equal(got, whole[start:])
    assert not np.array_equal(whole[:10], np.array(list(permuted_indices(10, seed=6).take(10).as_numpy_iterator())))


def distinct_identities(labels, batch_size):
    return [len(set(labels[k:k + batch_size])) for k in range(0, len(labels) - batch_size + 1, batch_size)]


def test_full_shuffle_mixes_identities_that_a_buffer_cannot(sorted_sets):
    # 64 uniform draws from 100 identities x 20 images hold about 48 identities; a shuffle buffer of 40 over the
    # identity-sorted list sees a window of about 5 identities.
    bound, batch = 30, 64
    for kind, cache in [("rec", False), ("folder", True)]:
        _, labels = stream(sorted_sets[kind], 20, batch_size=batch, cache=cache)
        assert min(distinct_identities(labels, batch)) > bound, kind
    buffered = tf.data.Dataset.from_tensor_slices(sorted_sets["folder"].labels).shuffle(40, seed=7)
    labels = np.array(list(buffered.take(20 * batch).as_numpy_iterator()))
    assert max(distinct_identities(labels, batch)) <= bound


def test_cache_auto_follows_the_budget_and_true_that_cannot_fit_stops(sorted_sets):
    rec, image_size = sorted_sets["rec"], (112, 112)  # 2000 x 112 x 112 x 3 = 75 MB decoded
    need = N * 112 * 112 * 3
    on, line = shard_cache(rec, "auto", image_size, budget=need)
    assert on and line.startswith("data.cache: auto -> on: ")
    on, line = shard_cache(rec, "auto", image_size, budget=need - 1)
    assert not on and line.startswith("data.cache: auto -> off: ") and "0.07 GiB" in line
    assert shard_cache(rec, "auto", image_size, num_shards=2, budget=need // 2)[0]  # a worker caches its shard only
    with pytest.raises(InputError, match=r"^data\.cache: true, .*2000 decoded images of 112x112x3 take 0\.07 GiB"):
        train_dataset(rec, image_size=image_size, batch_size=8, seed=0, cache=True, cache_budget=need - 1)
    off = "data.cache: false: the shard's 2000 images are read and decoded every epoch"
    assert shard_cache(rec, False, image_size) == (False, off)
    assert not shard_cache(sorted_sets["memory"], "true", image_size, budget=0)[0]  # decoded already: nothing to do

    cfg = Config()
    cfg.model.image_size, cfg.data.cache_budget_gib = list(image_size), 0.05
    assert not cache_plan(cfg, rec, 1, 0)[0] and cache_plan(cfg, rec, 2, 0)[0]  # 75 MB, 37 MB vs 54 MB
    cfg.data.cache = "true"
    with pytest.raises(InputError, match="data.cache: true"):
        cache_plan(cfg, rec, 1, 0)


def test_cache_config_takes_yaml_booleans_and_auto(tmp_path):
    assert parse_config().data.cache == "auto"
    assert parse_config(overrides=["data.cache=false"]).data.cache == "false"
    (tmp_path / "c.yaml").write_text("data:\n  cache: true\n  cache_budget_gib: 8\n")
    parsed = parse_config(tmp_path / "c.yaml").data
    assert (parsed.cache, parsed.cache_budget_gib) == ("true", 8.0)
    with pytest.raises(ConfigError, match=r"^data\.cache: expected one of auto, true, false, got 'yes please'"):
        parse_config(overrides=["data.cache=yes please"])
    with pytest.raises(ConfigError, match=r"^data\.cache_budget_gib: must be >= 0"):
        parse_config(overrides=["data.cache_budget_gib=-1"])
