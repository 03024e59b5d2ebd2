"""Sharded head on 2 MirroredStrategy replicas == the unsharded head on 1 device, same global batch and the same
full weight matrix: loss, gradients (embeddings and weight blocks) and parameters after 3 SGD steps."""
import numpy as np
import pytest

from equivalence import HEADS, build, full_weight, loss_and_grads, make_config, make_problem, train
from distface.ops import row_chunks, rows_in_place
from distface.ops import row_gradient
from distface.parallel.single import SingleEngine
from distface.parallel.tfdist import mirrored_engine

GLOBAL_BATCH = 8


@pytest.fixture(scope="module")
def mirrored():
    return mirrored_engine(cpu_replicas=2)


def reference(kind, problem, **cfg_kwargs):
    cfg = make_config(kind, GLOBAL_BATCH, "replicated", **cfg_kwargs)
    single = SingleEngine()
    return loss_and_grads(build(single, cfg, problem), problem), train(build(single, cfg, problem), problem)


def sharded(engine, kind, problem, **cfg_kwargs):
    cfg = make_config(kind, GLOBAL_BATCH // 2, "sharded", **cfg_kwargs)
    return loss_and_grads(build(engine, cfg, problem), problem), train(build(engine, cfg, problem), problem)


def assert_equivalent(ref, dist, num_classes):
    (ref_g, ref_p), (dist_g, dist_p) = ref, dist
    np.testing.assert_allclose(dist_g["loss"], ref_g["loss"], rtol=1e-5)
    np.testing.assert_allclose(np.concatenate(dist_g["d_emb"]), ref_g["d_emb"][0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.concatenate(dist_g["degrees"]), ref_g["degrees"][0], rtol=1e-5, atol=1e-4)
    d_weight = full_weight(dict(enumerate(dist_g["d_weight"])), num_classes)
    np.testing.assert_allclose(d_weight, ref_g["d_weight"][0], rtol=1e-5, atol=1e-7)
    for key in ("kernel", "bias"):
        np.testing.assert_allclose(dist_p[key], ref_p[key], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(full_weight(dist_p["weight_blocks"], num_classes),
                               ref_p["weight_blocks"][0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("num_classes", [10, 1001, 3], ids=["C=10", "odd C=1001", "C<B"])
@pytest.mark.parametrize("kind", sorted(HEADS))
def test_sharded_equals_single_device(mirrored, kind, num_classes):
    problem = make_problem(num_classes, GLOBAL_BATCH, seed=num_classes)
    ref = reference(kind, problem)
    assert ref[0]["loss"] > 0 and np.abs(ref[0]["d_weight"][0]).max() > 0  # a non-trivial case
    assert_equivalent(ref, sharded(mirrored, kind, problem), num_classes)


def test_label_smoothing_and_clipping_are_equivalent(mirrored):
    problem = make_problem(11, GLOBAL_BATCH, seed=3)
    kwargs = dict(label_smoothing=0.1, clip_norm=0.05)
    assert_equivalent(reference("arcface", problem, **kwargs), sharded(mirrored, "arcface", problem, **kwargs), 11)


@pytest.mark.parametrize("kind", ["arcface", "softmax"])
def test_block_updated_in_ranges_of_rows_is_equivalent(mirrored, kind, monkeypatch):
    """Blocks of 501 rows in ranges of 16 (31 and a tail of 5), clipped (the squares come from the ranges too)."""
    for module in (rows_in_place, row_gradient, row_chunks):
        monkeypatch.setattr(module, "CHUNK_ROWS", 16)
    problem = make_problem(1001, GLOBAL_BATCH, seed=7)
    kwargs = dict(clip_norm=0.05)
    assert_equivalent(reference(kind, problem, **kwargs), sharded(mirrored, kind, problem, **kwargs), 1001)


def test_replicated_head_on_two_replicas_equals_single_device(mirrored):
    problem = make_problem(10, GLOBAL_BATCH, seed=5)
    single = reference("cosface", problem)[1]
    cfg = make_config("cosface", GLOBAL_BATCH // 2, "replicated")
    dist = train(build(mirrored, cfg, problem), problem)
    np.testing.assert_allclose(dist["kernel"], single["kernel"], rtol=1e-5, atol=1e-6)
    for block in dist["weight_blocks"].values():  # every replica holds the same full matrix
        np.testing.assert_allclose(block, single["weight_blocks"][0], rtol=1e-5, atol=1e-6)


def test_head_memory_per_replica_is_a_block(mirrored):
    """Weights + momentum per device are ceil(C/N)*d floats each, never C*d."""
    num_classes = 1001
    trainer = build(mirrored, make_config("arcface", 4, "sharded"), make_problem(num_classes, GLOBAL_BATCH))
    sharded = trainer.state.sharded_state()
    head_state = [*sharded["params"].values(), *sharded["momentum"].values()]
    assert len(head_state) == 2  # the block and its momentum
    per_device = {}
    for var in head_state:
        for component in mirrored.local_results(var):
            per_device[component.device] = per_device.get(component.device, 0) + int(np.prod(component.shape))
    assert len(per_device) == 2
    assert all(n == 501 * 8 * 2 for n in per_device.values()), per_device
    assert not any(int(np.prod(v.shape)) >= num_classes * 8 for v in trainer.state.replicated_state())


def test_centers_sum_over_replicas(mirrored):
    """2 replicas x B/2 give the centers of 1 replica x B after 3 steps (n_j counted over the global batch)."""
    problem = make_problem(10, GLOBAL_BATCH, seed=7)
    single = train(build(SingleEngine(), make_config("softmax", GLOBAL_BATCH, "replicated", center_weight=0.1),
                         problem), problem)
    dist = train(build(mirrored, make_config("softmax", GLOBAL_BATCH // 2, "sharded", center_weight=0.1),
                       problem), problem)
    assert np.abs(single["centers"]).max() > 0
    np.testing.assert_allclose(dist["centers"], single["centers"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dist["kernel"], single["kernel"], rtol=1e-5, atol=1e-6)


def test_partial_fc_sampling():
    """sample_rate < 1: every positive class of the batch is kept, ceil(rate * P) columns in all (more only if
    the positives need it), labels remapped to the kept columns; the loss is the softmax CE over those columns."""
    import tensorflow as tf

    problem = make_problem(40, GLOBAL_BATCH, seed=11)
    cfg = make_config("softmax", GLOBAL_BATCH, "sharded")
    cfg.head.type, cfg.head.scale, cfg.head.sample_rate = "normface", 10.0, 0.25
    trainer = build(SingleEngine(), cfg, problem)
    head, labels = trainer.state.head, tf.constant(problem["labels"])
    valid = tf.ones([40], tf.bool)
    index, remapped = head._sample(labels, valid, tf.constant(3, tf.int64), tf.constant(0))
    index, remapped = index.numpy(), remapped.numpy()
    assert len(index) == max(10, len(set(problem["labels"]))) and np.all(np.diff(index) > 0)
    assert set(problem["labels"]) <= set(index)
    np.testing.assert_array_equal(index[remapped], problem["labels"])
    again, _ = head._sample(labels, valid, tf.constant(4, tf.int64), tf.constant(0))
    assert not np.array_equal(again.numpy(), index)  # a new subset each step

    embeddings = trainer.state.backbone(problem["x"])
    trainer.state.step.assign(3)
    loss = head(SingleEngine().collectives, embeddings, labels, trainer.state.step).loss
    x = embeddings.numpy() / np.linalg.norm(embeddings.numpy(), axis=1, keepdims=True)
    w = problem["weight"][index] / np.linalg.norm(problem["weight"][index], axis=1, keepdims=True)
    logits = 10.0 * x.astype(np.float64) @ w.T
    expected = np.log(np.exp(logits).sum(1)) - logits[np.arange(GLOBAL_BATCH), remapped]
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)
