"""The head step without block-sized copies: the cosine against unnormalised rows and its gradient, the fused
momentum update, and Partial FC whose sampled gradient stays sparse (`optim.head_update: dense | lazy`)."""
import contextlib

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import tensor_conversion_registry

from equivalence import build, make_config, make_problem, per_replica
from distface.config import OptimConfig
from distface.heads.classifier import cosine_to_rows, inverse_row_norms
from distface.ops import gradients
from distface.ops.gradients import SparseRows
from distface.training.optim import Optimizer
from distface.parallel.single import SingleEngine
from distface.parallel.tfdist import mirrored_engine

LR, MOMENTUM, DECAY = 0.1, 0.9, 5e-4
_forbidden = []


def _refuse_sparse_to_dense(value, dtype=None, name=None, as_ref=False):
    # Rows of a matrix (a weight block's gradient); the tape may densify [B] vectors (the gather of own rows).
    if _forbidden and value.values.shape.rank != 1:
        raise AssertionError(f"sparse rows {value.values.shape} were converted to a dense tensor")
    return NotImplemented  # the next conversion function (TensorFlow's own) does it


tensor_conversion_registry.register_tensor_conversion_function(tf.IndexedSlices, _refuse_sparse_to_dense, priority=1)


@contextlib.contextmanager
def no_densifying():
    _forbidden.append(True)
    try:
        yield
    finally:
        _forbidden.pop()


def test_the_guard_can_fail():
    with no_densifying(), pytest.raises(AssertionError, match="converted to a dense tensor"):
        tf.convert_to_tensor(tf.IndexedSlices(tf.ones([1, 2]), tf.constant([0]), tf.constant([3, 2])))


def test_cosine_to_rows_and_its_gradient_equal_normalising_w():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 7))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    w = rng.normal(size=(11, 7)) * 3.0
    upstream = rng.normal(size=(5, 11))
    xt, wt = tf.constant(x), tf.Variable(w)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        cosine = cosine_to_rows(xt, wt, inverse_row_norms(wt))
        loss = tf.reduce_sum(cosine * upstream)
    dx, dw = tape.gradient(loss, [xt, wt])
    # Closed form: cos = x ŵ^T with ŵ = w / |w|; dŵ = g^T x, dw = (dŵ - ŵ (dŵ . ŵ)) / |w|.
    norms = np.linalg.norm(w, axis=1, keepdims=True)
    unit = w / norms
    d_unit = upstream.T @ x
    np.testing.assert_allclose(cosine.numpy(), x @ unit.T, rtol=1e-12)
    np.testing.assert_allclose(dx.numpy(), upstream @ unit, rtol=1e-12)
    np.testing.assert_allclose(dw.numpy(), (d_unit - unit * np.sum(d_unit * unit, axis=1, keepdims=True)) / norms,
                               rtol=1e-10, atol=1e-14)


def optimizer(head_update="dense"):
    cfg = OptimConfig(type="sgdw", lr=LR, momentum=MOMENTUM, weight_decay=DECAY, warmup_steps=0,
                      schedule="constant", head_update=head_update)
    return Optimizer(cfg, 100, SingleEngine(), global_batch=8)


def one_update(head_update, grad, w0, m0, ok=True):
    opt = optimizer(head_update)
    var, slot = tf.Variable(w0), tf.Variable(m0)
    with no_densifying():
        tf.function(lambda: opt.apply({"g": {"w": gradients.of(grad)}}, {"g": {"w": var}},
                                      {"g": {"momentum": {"w": slot}}}, 0, ok))()
    return var.numpy(), slot.numpy()


@pytest.fixture
def block():
    rng = np.random.default_rng(1)
    w0, m0 = rng.normal(size=(9, 4)).astype(np.float32), rng.normal(size=(9, 4)).astype(np.float32)
    rows = np.array([1, 4, 7])
    values = rng.normal(size=(3, 4)).astype(np.float32)
    dense = np.zeros_like(w0)
    dense[rows] = values
    return w0, m0, rows, values, dense


def reference(w, m, g):
    """Keras SGD's rule in float64: w <- w - lr wd w; m <- momentum m - lr g; w <- w + m."""
    w, m, g = (a.astype(np.float64) for a in (w, m, g))
    m = MOMENTUM * m - LR * g
    return w - LR * DECAY * w + m, m


def assert_update(got, want, atol):
    """(w, m) pairs agree, slot first: a wrong momentum explains a wrong weight."""
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=atol)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6, atol=atol)


def sampled(rows, values, shape):
    return tf.IndexedSlices(tf.constant(values), tf.constant(rows), tf.constant(shape))


def test_dense_update_equals_keras_rule(block):
    w0, m0, _, _, dense = block
    assert_update(one_update("dense", tf.constant(dense), w0, m0), reference(w0, m0, dense), atol=1e-6)


def test_dense_with_a_sparse_gradient_equals_the_dense_gradient_update(block):
    w0, m0, rows, values, dense = block
    assert_update(one_update("dense", sampled(rows, values, w0.shape), w0, m0),
                  one_update("dense", tf.constant(dense), w0, m0), atol=1e-7)


def test_dense_sparse_update_in_chunks_with_a_partial_last_chunk(block, monkeypatch):
    w0, m0, rows, values, dense = block
    monkeypatch.setattr(gradients, "CHUNK_ROWS", 4)  # 9 rows: chunks of 4, 4 and 1
    assert_update(one_update("dense", sampled(rows, values, w0.shape), w0, m0), reference(w0, m0, dense), atol=1e-6)


@pytest.mark.parametrize("head_update", ["dense", "lazy"])
def test_a_refused_step_changes_nothing(block, head_update):
    w0, m0, rows, values, dense = block
    for grad in (tf.constant(dense), sampled(rows, values, w0.shape)):
        got = one_update(head_update, grad, w0, m0, ok=False)
        np.testing.assert_array_equal(got[0], w0)
        np.testing.assert_array_equal(got[1], m0)


def test_lazy_updates_only_the_sampled_rows(block):
    w0, m0, rows, values, dense = block
    w, m = one_update("lazy", sampled(rows, values, w0.shape), w0, m0)
    assert_update((w[rows], m[rows]), reference(w0[rows], m0[rows], values), atol=1e-6)
    others = np.setdiff1d(np.arange(len(w0)), rows)
    np.testing.assert_array_equal(w[others], w0[others])
    np.testing.assert_array_equal(m[others], m0[others])


@pytest.mark.parametrize("head_update", ["dense", "lazy"])
def test_partial_fc_step_keeps_the_sampled_gradient_sparse(head_update):
    num_classes = 400
    problem = make_problem(num_classes, 8, seed=9)
    cfg = make_config("arcface", 8, "sharded")
    cfg.head.sample_rate, cfg.optim.head_update = 0.1, head_update
    trainer = build(SingleEngine(), cfg, problem)
    head, x, y = trainer.state.head, tf.constant(problem["x"]), tf.constant(problem["labels"])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(head(trainer.runtime.collectives, trainer.state.backbone(x), y, trainer.state.step).loss)
    assert isinstance(tape.gradient(loss, head.weight), tf.IndexedSlices)
    before = head.weight.numpy()
    with no_densifying():
        trainer.train_step(x, y)
    changed = np.flatnonzero(np.any(head.weight.numpy() != before, axis=1))
    if head_update == "lazy":  # the sampled rows: ceil(0.1 * 400) = 40, the batch's classes among them
        assert len(changed) == 40 and set(problem["labels"]) <= set(changed)
    else:  # weight decay reaches every row
        assert len(changed) == num_classes


@pytest.mark.parametrize("head_update", ["dense", "lazy"])
def test_partial_fc_reads_only_rows_of_a_mirrored_block(head_update):
    """Under MirroredStrategy a block is an ON_READ variable, and tf.gather on it reads the whole component first
    (a copy of the block in copy-on-read mode, every step): the step must reach each replica's block only
    through row gathers and the update's ops, never a whole read."""
    engine = mirrored_engine(cpu_replicas=2)
    problem = make_problem(400, 8, seed=9)
    cfg = make_config("arcface", 4, "sharded")
    cfg.head.sample_rate, cfg.optim.head_update = 0.1, head_update
    trainer = build(engine, cfg, problem)
    x, y = per_replica(engine, problem["x"]), per_replica(engine, problem["labels"])
    graph = trainer.train_step.get_concrete_function(x, y).graph
    blocks = [c.handle for c in engine.local_components(trainer.state.head.weight).values()]
    readers = [sorted({op.type for op in inner.consumers()}) for outer, inner in graph.captures
               if any(outer is b for b in blocks)]
    assert readers == [["If", "ResourceGather"]] * 2  # the gather, and the guarded update (If)


@pytest.mark.parametrize("rows", [[2, 0, 2, 5, 0], [0, 2, 5], [3]], ids=["repeated", "increasing", "one"])
def test_sparse_rows_combined_once_each(rows):
    values = np.random.default_rng(2).normal(size=(len(rows), 4)).astype(np.float32)
    with no_densifying():
        got = tf.function(lambda: SparseRows.combined(tf.constant(rows), tf.constant(values), tf.constant([6, 4])).tensor)()
    assert isinstance(got, tf.IndexedSlices)
    assert list(got.indices.numpy()) == sorted(set(rows))  # each row once, increasing
    want = np.zeros((6, 4), np.float64)
    np.add.at(want, rows, values)
    np.testing.assert_allclose(got.values.numpy(), want[got.indices.numpy()], rtol=1e-6)
