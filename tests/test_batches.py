"""Training sets by data.source (distface.data.sources) and the per-replica batch factories (distface.data.batches):
quiet sources, registry errors, independent triplet flips per worker, triplet resume without reading skipped files."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_data import marked_images, read_marked, take

from distface.config import Config, ConfigError
from distface.data.batches import BATCHES
from distface.data.folders import scan_identity_folders
from distface.data.sources import SOURCES, TrainingSet, train_source


def marked_tree(root, identities, per_identity):
    """root/id<k>/<j>.png holding test_data's marked image k * per_identity + j; the list of them."""
    for i, image in enumerate(marked_images(identities * per_identity)[0]):
        folder = root / f"id{i // per_identity}"
        folder.mkdir(exist_ok=True)
        Image.fromarray(image).save(folder / f"{i % per_identity}.png")
    return scan_identity_folders(root)


def folder_cfg(root, p=2, k=2, seed=3):
    cfg = Config()
    cfg.data.source, cfg.data.path = "folder", str(root)
    cfg.data.identities_per_batch, cfg.data.images_per_identity, cfg.data.batch_size = p, k, p * k
    cfg.model.image_size, cfg.train.seed = [8, 8], seed
    return cfg


def batches(name, cfg, source, num_shards=1, shard_index=0, skip_batches=0, count=10):
    return [(x.numpy(), y.numpy()) for x, y in
            BATCHES[name](cfg, source, num_shards, shard_index, skip_batches).take(count)]


# ---------------------------------------------------------------- sources

def test_train_source_is_quiet_and_summary_names_left_out_files(tmp_path, capsys):
    marked_tree(tmp_path, identities=2, per_identity=3)
    broken = tmp_path / "id1" / "9.png"
    broken.write_bytes(b"")
    cfg = folder_cfg(tmp_path)
    cfg.data.bad_images = "skip"
    trained = train_source(cfg)
    assert capsys.readouterr() == ("", "")  # rank 0 speaks: the chief prints the summary, every rank builds
    assert (trained.num_classes, trained.num_images, len(trained.source)) == (2, 6, 6)
    assert trained.left_out == [(str(broken), "empty file")]
    assert trained.summary() == (f"left out 1 of 7 images that are not complete image files "
                                 f"(data.bad_images: skip): {broken}: empty file")
    broken.unlink()
    assert train_source(cfg).summary() is None


def test_train_source_builds_each_kind():
    cfg = Config()
    cfg.data.train_identities = [1, 2]
    orl = train_source(cfg)
    assert (orl.num_classes, orl.num_images, orl.left_out) == (2, 20, [])
    cfg.data.source, cfg.data.synthetic_identities, cfg.data.synthetic_images_per_identity = "synthetic", 3, 2
    cfg.model.image_size = [16, 12]
    synthetic = train_source(cfg)
    images, labels = synthetic.source
    assert images.shape == (6, 16, 12, 3) and (synthetic.num_classes, synthetic.num_images) == (3, 6)


def test_unknown_source_is_a_config_error_listing_the_registry(monkeypatch):
    mine = TrainingSet((np.zeros((2, 8, 8, 3), np.uint8), np.arange(2, dtype=np.int32)), 2, 2)
    monkeypatch.setitem(SOURCES, "mine", lambda cfg: mine)
    cfg = Config()
    cfg.data.source = "hdf5"
    with pytest.raises(ConfigError) as info:
        train_source(cfg)
    message = str(info.value)
    assert message.startswith("data.source: ") and "'hdf5'" in message and "\n" not in message
    assert all(name in message for name in SOURCES)  # "mine" too: the names come from the registry
    cfg.data.source = "mine"
    assert train_source(cfg) is mine


# ---------------------------------------------------------------- batches

def test_factories_give_per_replica_batches(tmp_path):
    images = marked_tree(tmp_path, identities=4, per_identity=3)
    cfg = folder_cfg(tmp_path, p=2, k=3)
    for name in BATCHES:
        ds = BATCHES[name](cfg, images, 1, 0)
        assert ds.element_spec[0].shape.as_list() == [6, 8, 8, 3] and ds.element_spec[0].dtype.name == "float32"
        assert ds.element_spec[1].shape.as_list() == [6] and ds.element_spec[1].dtype.name == "int32"
    for x, y in batches("identity_balanced", cfg, images, count=4):
        ids, counts = np.unique(y, return_counts=True)
        assert len(ids) == 2 and np.all(counts == 3)


def test_triplet_flips_are_independent_per_worker(tmp_path):
    images = marked_tree(tmp_path, identities=8, per_identity=3)
    cfg = folder_cfg(tmp_path)
    flips = {}
    for shards, index in [(1, 0), (2, 0), (2, 1)]:
        x, y = take(BATCHES["identity_balanced"](cfg, images, shards, index), 12)
        ids, flips[shards, index] = read_marked(x)
        np.testing.assert_array_equal(images.labels[ids], y)  # each label travels with its own image
        assert np.all(y % shards == index)  # worker r draws identities r, r+N, ...
    assert 0.2 < flips[2, 1].mean() < 0.8
    assert not np.array_equal(flips[2, 0], flips[2, 1])  # the workers do not flip the same positions ...
    np.testing.assert_array_equal(flips[2, 0], flips[1, 0])  # ... and shard 0 keeps the single-device seed


def test_triplet_resume_reads_no_image_it_skips(tmp_path):
    images = marked_tree(tmp_path, identities=4, per_identity=4)
    cfg, skip = folder_cfg(tmp_path), 6
    whole = batches("identity_balanced", cfg, images, count=10)

    def shown(part):
        return {i for x, _ in part for i in read_marked(x)[0]}

    skipped_only = shown(whole[:skip]) - shown(whole[skip:])
    assert len(skipped_only) >= 2
    for i in skipped_only:  # a resume that decoded the skipped batches would fail on these
        Path(images.paths[i]).write_bytes(b"not an image")
    resumed = batches("identity_balanced", cfg, images, skip_batches=skip, count=len(whole) - skip)
    for (x, y), (rx, ry) in zip(whole[skip:], resumed, strict=True):
        np.testing.assert_array_equal(rx, x)
        np.testing.assert_array_equal(ry, y)
