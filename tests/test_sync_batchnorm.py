"""Synchronized BatchNorm (model.sync_batchnorm): on 2 replicas (MirroredStrategy and Horovod) with different
local batches, the normalised activations, the loss, the gradients and the moving statistics after 3 steps equal one
device on the concatenated batch; with the flag off they do not. The layer itself against numpy (statistics over
unequal local batches, and the closed-form BatchNorm input gradient)."""
import os
import shutil
import sys

import numpy as np
import pytest
import tensorflow as tf

from equivalence import _per_replica_run, make_config, per_replica
from distface.training.trainer import Trainer
from distface.models import build_backbone
from distface.models.sync_batchnorm import SyncBatchNormalization
from distface.training.objectives import Classification
from distface.training.optim import Optimizer
from distface.training import schedules
from distface.parallel.single import SingleCollectives, SingleEngine
from distface.training.state import TrainState

HOROVODRUN = shutil.which("horovodrun", path=os.path.dirname(sys.executable))
GLOBAL_BATCH, NUM_CLASSES, D, IMAGE = 8, 10, 8, (16, 16)
PROBED = "stage1_bn"  # the first BatchNorm: its normalised output is compared directly


def problem():
    rng = np.random.default_rng(21)
    x = rng.normal(size=(GLOBAL_BATCH, *IMAGE, 3)).astype(np.float32)
    x[GLOBAL_BATCH // 2:] = 2.0 * x[GLOBAL_BATCH // 2:] + 0.5  # the replicas' batches differ in mean and spread
    tf.keras.utils.set_random_seed(3)
    weights = build_backbone("debug", IMAGE, D).get_weights()
    return dict(x=x, labels=rng.integers(0, NUM_CLASSES, GLOBAL_BATCH).astype(np.int32), weights=weights)


def trainer(engine, sync: bool, data: dict) -> Trainer:
    cfg = make_config("softmax", GLOBAL_BATCH // engine.num_replicas, "replicated")
    cfg.model.sync_batchnorm = sync
    with engine.scope():
        backbone = build_backbone("debug", IMAGE, D, 0.0, engine.collectives if sync else None)
    backbone.set_weights(data["weights"])  # every run starts from the same weights
    objective = Classification(cfg, engine, NUM_CLASSES)
    state = TrainState(engine, backbone, objective)
    optimizer = Optimizer(cfg.optim, 100, engine, schedules.global_batch(cfg, engine.num_replicas))
    return Trainer(cfg, engine, state, objective, optimizer)


def run(engine, sync: bool, data: dict) -> dict:
    """After 3 training steps: every replica's moving statistics; then, on the batch, the global loss, the reduced
    backbone gradients and the probed layer's normalised output (this replica's rows)."""
    t = trainer(engine, sync, data)
    state, collectives = t.state, engine.collectives
    x, labels = per_replica(engine, data["x"]), per_replica(engine, data["labels"])
    for _ in range(3):
        t.train_step(x, labels)
    # .value: the tf.Variable behind the Keras variable, whose per-device copies local_results lists
    moving = {v.path: [c.numpy() for c in engine.local_results(v.value)]
              for v in state.backbone.non_trainable_variables}
    probe = tf.keras.Model(state.backbone.inputs, state.backbone.get_layer(PROBED).output)
    variables = state.backbone.trainable_variables

    def replica_fn(images, y):
        with tf.GradientTape() as tape:
            embeddings = state.backbone(images, training=True)
            loss, _, _ = t.objective.loss(collectives, embeddings, y, state.step, t.global_batch)
        grads = engine.reduce_gradients(tape.gradient(loss, variables))
        return collectives.all_reduce_sum(loss), grads, probe(images, training=True)

    loss, grads, normalised = tf.function(lambda a, b: _per_replica_run(engine, replica_fn, a, b))(x, labels)
    return dict(moving=moving, loss=loss[0].numpy(), grads=[g[0].numpy() for g in grads],
                normalised=[n.numpy() for n in normalised])


@pytest.fixture(scope="module")
def data():
    return problem()


@pytest.fixture(scope="module")
def reference(data):
    return run(SingleEngine(), True, data)  # one replica: the plain layer over the whole batch


@pytest.fixture(scope="module")
def mirrored():
    from distface.parallel.tfdist import mirrored_engine

    return mirrored_engine(cpu_replicas=2)


def assert_equal_to_reference(ref, moving, loss, grads, normalised):
    for path, values in ref["moving"].items():
        for value in moving[path]:
            np.testing.assert_allclose(value, values[0], rtol=1e-5, atol=1e-6, err_msg=path)
    np.testing.assert_allclose(loss, ref["loss"], rtol=1e-5)
    for got, want in zip(grads, ref["grads"]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(normalised, ref["normalised"][0], rtol=1e-5, atol=1e-5)


def test_single_engine_keeps_the_plain_layer():
    model = build_backbone("debug", IMAGE, D, 0.0, SingleCollectives())
    assert not any(isinstance(layer, SyncBatchNormalization) for layer in model.layers)


def test_mirrored_sync_batchnorm_equals_one_device(mirrored, data, reference):
    assert not np.allclose(data["x"][:4].mean(), data["x"][4:].mean(), atol=0.3)
    synced = run(mirrored, True, data)
    assert_equal_to_reference(reference, synced["moving"], synced["loss"], synced["grads"],
                              np.concatenate(synced["normalised"]))


def test_mirrored_without_sync_differs(mirrored, data, reference):
    """The comparison can fail: per-replica statistics give other activations, loss and moving statistics."""
    local = run(mirrored, False, data)
    assert not np.allclose(np.concatenate(local["normalised"]), reference["normalised"][0], rtol=1e-3, atol=1e-3)
    assert not np.isclose(local["loss"], reference["loss"], rtol=1e-3)
    path = f"{PROBED}/moving_variance"
    assert not any(np.allclose(v, reference["moving"][path][0], rtol=1e-3) for v in local["moving"][path])


@pytest.mark.skipif(HOROVODRUN is None, reason="horovod is not installed (DISTFACE_NO_HOROVOD=1)")
def test_horovod_sync_batchnorm_equals_one_device(data, reference, horovod_two_ranks):
    ranks = horovod_two_ranks["sync_batchnorm"]  # the session's one 2-rank Horovod run (tests/hvd_two_ranks.py)
    normalised = np.concatenate([r["on/normalised"] for r in ranks])
    for r in ranks:
        moving = {path: [r[f"on/moving/{path}"]] for path in reference["moving"]}
        grads = [r[f"on/grad/{i}"] for i in range(len(reference["grads"]))]
        assert_equal_to_reference(reference, moving, r["on/loss"], grads, normalised)
        assert not np.isclose(r["off/loss"], reference["loss"], rtol=1e-3)  # per-rank statistics differ


class CountingCollectives(SingleCollectives):
    """One replica's collectives that record which member the layer calls."""

    def __init__(self):
        self.calls = []

    def all_reduce_sum(self, x):
        self.calls.append("all_reduce_sum")
        return x

    def all_gather(self, x):
        self.calls.append("all_gather")
        return x


def test_layer_talks_to_the_engine_through_one_all_reduce_sum():
    """What multiworker shares with mirrored: the layer needs the Collectives alone (StrategyCollectives serves
    both), one all_reduce_sum per call."""
    collectives = CountingCollectives()
    layer = SyncBatchNormalization(collectives)
    layer(tf.ones([2, 3]), training=True)
    layer(tf.ones([2, 3]), training=False)  # inference uses the moving statistics: no collective
    assert collectives.calls == ["all_reduce_sum"]


def test_unequal_local_batches_against_numpy(mirrored):
    """3 + 5 rows on 2 replicas: outputs normalised by the statistics of all 8 rows, and the input gradient of the
    partial losses sum_i w_i y_i is the closed-form BatchNorm gradient over the 8 rows."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(8, 4)).astype(np.float32) * [1.0, 3.0, 0.5, 2.0] + [0.0, 1.0, -2.0, 5.0]
    w = rng.normal(size=(8, 4)).astype(np.float32)
    parts = [slice(0, 3), slice(3, 8)]
    strategy = mirrored.strategy
    with strategy.scope():
        layer = SyncBatchNormalization(mirrored.collectives, epsilon=1e-3)
        layer.build((None, 4))

    def replica_fn(xs, ws):
        with tf.GradientTape() as tape:
            tape.watch(xs)
            y = layer(xs, training=True)
            partial = tf.reduce_sum(ws * y)
        return y, tape.gradient(partial, xs)

    def values(array):
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(array[parts[ctx.replica_id_in_sync_group]]))

    y, dx = tf.function(lambda a, b: strategy.run(replica_fn, args=(a, b)))(values(x), values(w))
    y = np.concatenate([t.numpy() for t in strategy.experimental_local_results(y)])
    dx = np.concatenate([t.numpy() for t in strategy.experimental_local_results(dx)])
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    mean, var = x64.mean(0), x64.var(0)
    normalised = (x64 - mean) / np.sqrt(var + 1e-3)
    np.testing.assert_allclose(y, normalised, rtol=1e-5, atol=1e-5)
    want = (w64 - w64.mean(0) - normalised * (w64 * normalised).mean(0)) / np.sqrt(var + 1e-3)
    np.testing.assert_allclose(dx, want, rtol=1e-4, atol=1e-5)
    moving = [v.numpy() for v in strategy.experimental_local_results(layer.moving_mean.value)]
    for value in moving:  # every replica's moving mean moved by the global mean
        np.testing.assert_allclose(value, 0.01 * mean, rtol=1e-5, atol=1e-6)
