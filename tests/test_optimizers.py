"""optim.type sgd | sgdw | adamw against float64 numpy transcriptions of the rules they name, over several updates
with a changing learning rate, through every gradient type (ops/gradients.py): a whole variable, a replicated head
updated a range of rows at a time, a sharded block's never-materialised RowGradient, and Partial FC's sampled rows
(dense and lazy). References:
- torch.optim.SGD (torch/optim/sgd.py, _single_tensor_sgd; momentum, dampening 0, nesterov off): d_p = g + wd·p;
  buf = d_p on the first step, else μ·buf + d_p; p -= lr·buf.
- Keras SGD with decoupled decay (keras/src/optimizers/sgd.py, plus the decay Keras applies first):
  p -= lr·wd·p; m = μ·m − lr·g; p += m.
- torch.optim.AdamW (torch/optim/adamw.py, _single_tensor_adamw; amsgrad off): p *= 1 − lr·wd;
  m = β1·m + (1−β1)·g; v = β2·v + (1−β2)·g²; p -= lr/(1−β1^t) · m / (sqrt(v)/sqrt(1−β2^t) + ε).
"""
import numpy as np
import pytest
import tensorflow as tf

from distface.config import OptimConfig
from distface.heads.classifier import block_scores
from distface.ops import gradients, row_chunks, row_gradient, rows_in_place
from distface.ops.row_gradient import RowGradient
from distface.parallel.single import SingleEngine
from distface.training.optim import Optimizer
from distface.training.rules import RULES

WD, MOMENTUM, BETAS, EPS = 5e-4, 0.9, (0.9, 0.999), 1e-8
RATES = [0.1, 0.05, 0.2, 0.01]  # one per update: the rules differ when the rate changes


class TorchSGD:
    def __init__(self):
        self.buf = None

    def step(self, p, g, lr):
        d_p = g + WD * p
        self.buf = d_p.copy() if self.buf is None else MOMENTUM * self.buf + d_p
        return p - lr * self.buf


class KerasSGDW:
    def __init__(self):
        self.m = 0.0

    def step(self, p, g, lr):
        p = p - lr * WD * p
        self.m = MOMENTUM * self.m - lr * g
        return p + self.m


class TorchAdamW:
    def __init__(self):
        self.m, self.v, self.t = 0.0, 0.0, 0

    def step(self, p, g, lr):
        self.t += 1
        b1, b2 = BETAS
        p = p * (1 - lr * WD)
        self.m = b1 * self.m + (1 - b1) * g
        self.v = b2 * self.v + (1 - b2) * g * g
        denom = np.sqrt(self.v) / np.sqrt(1 - b2 ** self.t) + EPS
        return p - lr / (1 - b1 ** self.t) * self.m / denom


REFERENCES = {"sgd": TorchSGD, "sgdw": KerasSGDW, "adamw": TorchAdamW}


class Rates:
    """A schedule of the RATES above, by update count."""

    def __call__(self, step):
        return tf.gather(tf.constant(RATES), tf.cast(step, tf.int32))


def optimizer(rule: str, head_update="dense", in_place="auto") -> Optimizer:
    cfg = OptimConfig(type=rule, momentum=MOMENTUM, weight_decay=WD, beta1=BETAS[0], beta2=BETAS[1], epsilon=EPS,
                      head_update=head_update, head_update_in_place=in_place)
    opt = Optimizer(cfg, len(RATES), SingleEngine(), global_batch=8)
    opt.schedule = Rates()
    return opt


def run(rule, w0, grad_at, head_update="dense", in_place="auto"):
    """w after each update; grad_at(step, var) gives the step's gradient in its tape form."""
    opt = optimizer(rule, head_update, in_place)
    var = tf.Variable(w0)
    slots = opt.build({"replicated": {"w": var}})
    step = tf.Variable(0, dtype=tf.int64)

    @tf.function
    def update():
        opt.apply({"replicated": {"w": gradients.of(grad_at(step, var))}}, {"replicated": {"w": var}}, slots, step)
        step.assign_add(1)

    history = []
    for _ in RATES:
        update()
        history.append(var.numpy().astype(np.float64))
    return history


def reference(rule, w0, dense_grads, rows=None):
    """The rule in float64 for the given gradients; `rows`: only these rows move (lazy)."""
    ref, w = REFERENCES[rule](), w0.astype(np.float64)
    history = []
    for g, lr in zip(dense_grads, RATES):
        new = ref.step(w if rows is None else w[rows], g if rows is None else g[rows], lr)
        w = new if rows is None else _with_rows(w, rows, new)
        history.append(w)
    return history


def _with_rows(w, rows, values):
    w = w.copy()
    w[rows] = values
    return w


def assert_histories(got, want, rtol=2e-6, atol=1e-7):
    for step, (a, b) in enumerate(zip(got, want)):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"after update {step + 1}")


RNG = np.random.default_rng(0)
W0 = RNG.normal(size=(40, 3)).astype(np.float32)
GRADS = RNG.normal(size=(len(RATES), 40, 3)).astype(np.float32)


@pytest.fixture
def small_chunks(monkeypatch):
    """Ranges of 16 rows: 40 rows make two whole ranges and a tail, so a small block takes the large-block paths."""
    for module in (rows_in_place, row_chunks, row_gradient, gradients):
        monkeypatch.setattr(module, "CHUNK_ROWS", 16)


@pytest.mark.parametrize("rule", RULES)
def test_a_whole_variable_follows_the_rule(rule):
    got = run(rule, W0[:5], lambda step, var: tf.gather(tf.constant(GRADS[:, :5]), tf.cast(step, tf.int32)))
    assert_histories(got, reference(rule, W0[:5], GRADS[:, :5]))


@pytest.mark.parametrize("rule", RULES)
def test_a_large_dense_gradient_is_applied_in_row_ranges(rule, small_chunks):
    """A replicated head's gradient (CHUNK_ROWS rows or more): the rule written in place a range at a time."""
    got = run(rule, W0, lambda step, var: tf.gather(tf.constant(GRADS), tf.cast(step, tf.int32)))
    assert_histories(got, reference(rule, W0, GRADS))


X = RNG.normal(size=(len(RATES), 6, 3)).astype(np.float32)
UPSTREAM = RNG.normal(size=(len(RATES), 6, 40)).astype(np.float32)


def row_gradient_at(step, var):
    """A sharded block's gradient as its factors (ops/row_gradient.py), of the block's current weights."""
    k = tf.cast(step, tf.int32)
    _, factors = block_scores("arcface", var, None, tf.gather(tf.constant(X), k))
    return RowGradient.from_upstream(tf.gather(tf.constant(UPSTREAM), k), factors)


def row_gradient_reference(rule):
    """The same updates with the factors' dense gradient, of the reference's own weights, in float64."""
    ref, w = REFERENCES[rule](), W0.astype(np.float64)
    history = []
    for x, upstream, lr in zip(X, UPSTREAM, RATES):
        unit_x = x / np.linalg.norm(x, axis=1, keepdims=True)
        norms = np.linalg.norm(w, axis=1, keepdims=True)
        unit_w = w / norms
        d_unit = upstream.T @ unit_x  # d loss / d ŵ, then through ŵ = w / |w|
        w = ref.step(w, (d_unit - unit_w * np.sum(d_unit * unit_w, axis=1, keepdims=True)) / norms, lr)
        history.append(w)
    return history


@pytest.mark.parametrize("in_place", ["auto", "off"])
@pytest.mark.parametrize("rule", RULES)
def test_a_sharded_block_follows_the_rule(rule, in_place, small_chunks):
    got = run(rule, W0, row_gradient_at, in_place=in_place)
    assert_histories(got, row_gradient_reference(rule), rtol=1e-5, atol=1e-6)


ROWS = np.array([[1, 7, 20, 33], [0, 7, 16, 39], [5, 6, 7, 8], [2, 17, 18, 31]])  # sampled rows per update


def sampled_at(step, var):
    k = tf.cast(step, tf.int32)
    rows = tf.gather(tf.constant(ROWS), k)
    return tf.IndexedSlices(tf.gather(tf.gather(tf.constant(GRADS), k), rows), rows, tf.constant([40, 3]))


def sampled_dense():
    dense = np.zeros_like(GRADS)
    for k, rows in enumerate(ROWS):
        dense[k, rows] = GRADS[k, rows]
    return dense


@pytest.mark.parametrize("rule", RULES)
def test_partial_fc_dense_moves_every_row_with_g_zero_off_the_sample(rule, small_chunks):
    assert_histories(run(rule, W0, sampled_at, head_update="dense"), reference(rule, W0, sampled_dense()))


@pytest.mark.parametrize("rule", RULES)
def test_partial_fc_lazy_moves_only_the_sampled_rows(rule):
    """Each row keeps its own slots; with one sample throughout, the sampled rows follow the rule exactly."""
    rows = ROWS[0]

    def same_rows(step, var):
        k = tf.cast(step, tf.int32)
        return tf.IndexedSlices(tf.gather(tf.gather(tf.constant(GRADS), k), rows), tf.constant(rows),
                                tf.constant([40, 3]))

    assert_histories(run(rule, W0, same_rows, head_update="lazy"), reference(rule, W0, GRADS, rows=rows))


def test_the_rules_differ_where_the_issue_says():
    """Coupled decay through momentum acts ~1/(1 - μ) times the decoupled one, and the rules part when the rate
    changes: the references are not one rule under three names."""
    w, g = np.ones(1), np.zeros(1)
    coupled, decoupled = TorchSGD(), KerasSGDW()
    a, b = w, w
    for _ in range(200):
        a, b = coupled.step(a, g, 0.1), decoupled.step(b, g, 0.1)
    assert (1 - a[0]) / (1 - b[0]) > 5
    got = {rule: run(rule, W0[:5], lambda step, var: tf.constant(GRADS[0, :5]))[-1] for rule in RULES}
    assert not np.allclose(got["sgd"], got["sgdw"], rtol=1e-3)
    assert not np.allclose(got["sgd"], got["adamw"], rtol=1e-3)
