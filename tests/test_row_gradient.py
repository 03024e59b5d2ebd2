"""A full block's gradient never materialised: its rows from the factors (ops/row_gradient.py) against the closed
form, the guard's finiteness test and the clip's squares, the update written in place a range of rows at a time
(rows_in_place.py), and the traced step, which computes nothing of the block's size but views of its reads."""
import numpy as np
import pytest
import tensorflow as tf

from equivalence import build, make_config, make_problem, per_replica, train
from distface.config import OptimConfig
from distface.heads.classifier import block_scores
from distface.ops import gradients, row_chunks, row_gradient, rows_in_place
from distface.ops.row_gradient import RowGradient
from distface.training.optim import Optimizer
from distface.parallel.single import SingleEngine
from distface.parallel.tfdist import mirrored_engine

LR, MOMENTUM, DECAY = 0.1, 0.9, 5e-4


@pytest.fixture
def small_chunks(monkeypatch):
    # 16 rows of 4-byte floats: a chunk's end stays 64-byte aligned, as 8192 rows keep it (rows_in_place.py)
    for module in (rows_in_place, row_gradient, row_chunks):
        monkeypatch.setattr(module, "CHUNK_ROWS", 16)


def gradient_of(kind, w, x, upstream):
    """(RowGradient, the tape's dense weight gradient) of sum(scores * upstream)."""
    var = tf.Variable(w)
    with tf.GradientTape() as tape:
        scores, factors = block_scores(kind, var, tf.zeros([w.shape[0]]), tf.constant(x))
        loss = tf.reduce_sum(scores * upstream)
    dense, at_scores = tape.gradient(loss, [var, factors.scores])
    return RowGradient.from_upstream(at_scores, factors), dense.numpy()


def closed_form(kind, w, x, upstream):
    """dW in float64: g^T x (softmax); for cos against unit w: (dŵ - ŵ (dŵ . ŵ)) / |w| with dŵ = g^T x̂."""
    w, x, g = (a.astype(np.float64) for a in (w, x, upstream))
    if kind == "softmax":
        return g.T @ x
    norms = np.linalg.norm(w, axis=1, keepdims=True)
    unit, d_unit = w / norms, g.T @ (x / np.linalg.norm(x, axis=1, keepdims=True))
    return (d_unit - unit * np.sum(d_unit * unit, axis=1, keepdims=True)) / norms


def problem(rows=56, width=3, batch=5, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(rows, width)).astype(np.float32), rng.normal(size=(batch, width)).astype(np.float32),
            rng.normal(size=(batch, rows)).astype(np.float32))


@pytest.mark.parametrize("kind", ["arcface", "softmax"])
def test_rows_equal_the_closed_form_and_the_tapes_gradient(kind):
    w, x, upstream = problem()
    grad, dense = gradient_of(kind, w, x, upstream)
    want = closed_form(kind, w, x, upstream)
    np.testing.assert_allclose(dense, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad.whole().numpy(), want, rtol=1e-5, atol=1e-6)
    for lo, hi in [(0, 56), (0, 16), (5, 21), (48, 56)]:
        np.testing.assert_allclose(grad.rows(lo, tf.constant(w[lo:hi])).numpy(), want[lo:hi], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad.scaled(0.5).scaled(3.0).rows(5, tf.constant(w[5:21])).numpy(),
                               1.5 * want[5:21], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["arcface", "softmax"])
def test_square_sum_over_row_ranges(kind, small_chunks):
    w, x, upstream = problem()  # 56 rows: chunks of 16, 16, 16 and 8
    grad, _ = gradient_of(kind, w, x, upstream)
    want = closed_form(kind, w, x, upstream)
    np.testing.assert_allclose(grad.scaled(2.0).square_sum().numpy(), np.sum((2.0 * want) ** 2), rtol=1e-5)


def overflowing(kind):
    """Finite factors whose gradient overflows."""
    w, x, upstream = problem()
    if kind == "softmax":  # one upstream entry times a large embedding
        x[1] *= 1e20
        upstream[1, 3] = 1e30
    else:  # embeddings are normalised: the rows of S = g / |w| add up past float32's range
        x[:] = x[0]
        w[3] *= 1e-3
        upstream[:, 3] = 3e38 * np.linalg.norm(w[3])
    return w, x, upstream


@pytest.mark.parametrize("kind", ["arcface", "softmax"])
@pytest.mark.parametrize("case", ["finite", "inf upstream", "nan upstream", "overflow", "large but finite"])
def test_non_finite_count_is_zero_exactly_when_every_element_is_finite(kind, case, small_chunks):
    w, x, upstream = problem()
    if case == "inf upstream":
        upstream[2, 26] = np.inf
    elif case == "nan upstream":
        upstream[0, 53] = np.nan
    elif case == "overflow":
        w, x, upstream = overflowing(kind)
    elif case == "large but finite":  # past the bound the factors prove: the rows are counted
        upstream[1, 3] = 3e37
    grad, dense = gradient_of(kind, w, x, upstream)
    want = np.sum(~np.isfinite(dense))
    assert (want == 0) == (case in ("finite", "large but finite"))
    assert grad._surely_finite().numpy() == (case == "finite")
    assert grad.non_finite_count().numpy() == want


def optimizer(in_place="auto"):
    cfg = OptimConfig(type="sgdw", lr=LR, momentum=MOMENTUM, weight_decay=DECAY, warmup_steps=0,
                      schedule="constant", head_update_in_place=in_place)
    return Optimizer(cfg, 100, SingleEngine(), global_batch=8)


def update(grad, w0, m0, ok=True, xla=False, in_place="auto"):
    opt, var, slot = optimizer(in_place), tf.Variable(w0), tf.Variable(m0)
    tf.function(lambda: opt.apply({"g": {"w": gradients.of(grad)}}, {"g": {"w": var}},
                                  {"g": {"momentum": {"w": slot}}}, 0, ok), jit_compile=xla)()
    return var.numpy(), slot.numpy()


@pytest.mark.parametrize("rows", [48, 56, 5], ids=["whole chunks", "chunks and a tail", "tail only"])
@pytest.mark.parametrize("kind", ["arcface", "softmax"])
def test_update_in_row_ranges_equals_the_dense_gradients_update(kind, rows, small_chunks):
    w, x, upstream = problem(rows=rows, width=3)  # rows of 12 bytes: a 2-D row slice would not alias
    m0 = np.random.default_rng(3).normal(size=w.shape).astype(np.float32)
    grad, dense = gradient_of(kind, w, x, upstream)
    got = update(grad.scaled(0.5), w, m0)
    m = MOMENTUM * m0.astype(np.float64) - LR * 0.5 * closed_form(kind, w, x, upstream)
    np.testing.assert_allclose(got[1], m, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got[0], w - LR * DECAY * w.astype(np.float64) + m, rtol=1e-5, atol=1e-7)
    # The reference: the dense gradient applied whole (optim.head_update_in_place: off).
    dense_update = update(tf.constant(dense * 0.5), w, m0, in_place="off")
    for a, b in zip(got, dense_update):
        # the rule's terms rounded by XLA's fused pass and by TensorFlow's kernels: an ulp of the operands
        # (|w|, |m| up to 3) where they cancel
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=3e-7)
    for a, b in zip(update(grad.scaled(0.5), w, m0, in_place="off"), dense_update):  # off makes it whole first
        np.testing.assert_array_equal(a, b)
    # A dense gradient of a matrix of CHUNK_ROWS rows or more (a replicated head's): the rule a range of rows at
    # a time in place.
    for a, b in zip(update(tf.constant(dense * 0.5), w, m0), got):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=3e-7)
    # Inside XLA (a whole-step jit_compile) the rows cannot be written in place: the dense gradient is applied.
    for a, b in zip(update(grad.scaled(0.5), w, m0, xla=True), dense_update):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)  # XLA's arithmetic: an ulp apart
    refused = update(grad, w, m0, ok=False)
    np.testing.assert_array_equal(refused[0], w)
    np.testing.assert_array_equal(refused[1], m0)


def test_update_counts_the_writes_lost_in_copy_on_read_mode(small_chunks):
    @tf.function
    def add_one(var):
        return rows_in_place.update_rows([var], lambda lo, w: [w + 1.0])

    var = tf.Variable(tf.zeros([40, 3]))
    assert int(add_one(var)) == 0
    np.testing.assert_array_equal(var.numpy(), 1.0)
    tf.raw_ops.ResourceGather(resource=var.handle, indices=[0], dtype=tf.float32)  # reads now copy the variable
    assert int(add_one(var)) == 2  # 40 rows in chunks of 16: the two whole chunks' write and the last rows'
    np.testing.assert_array_equal(var.numpy(), 1.0)  # lost: counted, not applied


def reachable_ops(graph):
    """The ops a run of the traced function executes: what its outputs and stateful ops depend on (TensorFlow
    prunes the rest when it instantiates the function)."""
    todo = [t.op for t in graph.outputs] + [op for op in graph.get_operations() if op.op_def.is_stateful]
    seen = set()
    while todo:
        op = todo.pop()
        if op not in seen:
            seen.add(op)
            todo += [t.op for t in op.inputs] + list(op.control_inputs)
    return seen


@pytest.mark.parametrize("engine", ["single", "mirrored"])
@pytest.mark.parametrize("kind", ["arcface", "softmax"])
def test_a_full_block_step_computes_nothing_the_size_of_the_block(engine, kind, small_chunks):
    """Beside the block's reads and what passes them through (the custom gradient's IdentityN, the loops that read
    ranges of rows of them, StatelessWhile), nothing of the block's shape is computed: the dense gradient of the
    cosine's custom gradient is pruned, and the row norms and the update work on ranges of rows."""
    engine = SingleEngine() if engine == "single" else mirrored_engine(cpu_replicas=2)
    cfg = make_config(kind, 3, "sharded")  # a global batch of 3 or 6, not d = 8: no [B, C] tensor looks like a block
    data = make_problem(400, 3 * engine.num_replicas, seed=1)
    trainer = build(engine, cfg, data)
    x, y = per_replica(engine, data["x"]), per_replica(engine, data["labels"])
    graph = trainer.train_step.get_concrete_function(x, y).graph
    block = trainer.state.head.block_size, cfg.model.embedding_size
    sized = {op.type for op in reachable_ops(graph) for t in op.outputs if t.shape == block}
    assert "ReadVariableOp" in sized and sized <= {"ReadVariableOp", "IdentityN", "StatelessWhile"}


def ancestors(ops):
    """Every op the given ops depend on, through data and control edges."""
    todo, seen = list(ops), set()
    while todo:
        op = todo.pop()
        for parent in [t.op for t in op.inputs] + list(op.control_inputs):
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return seen


def writes_in_place(graph, op) -> bool:
    """Whether a control-flow op's functions (at any depth) hold an InplaceUpdate."""
    functions = [op.get_attr(a).name for a in ("then_branch", "else_branch", "body", "cond", "f")
                 if a in op.node_def.attr]
    for name in functions:
        body = graph._functions[name].graph
        if any(o.type == "InplaceUpdate" or writes_in_place(graph, o) for o in body.get_operations()):
            return True
    return False


@pytest.mark.parametrize("engine", ["single", "mirrored"])
@pytest.mark.parametrize("kind", ["arcface", "softmax"])
@pytest.mark.parametrize("sharding", ["sharded", "replicated"])
def test_every_reader_of_the_blocks_forward_read_runs_before_the_in_place_update(engine, kind, sharding,
                                                                                 small_chunks):
    """The in-place update writes into the buffer the forward's read aliases: every op that runs and reads it
    (through the pass-through IdentityN of the custom gradient too) must be an ancestor of the update, or it could
    read rows already written."""
    engine = SingleEngine() if engine == "single" else mirrored_engine(cpu_replicas=2)
    cfg = make_config(kind, 3, sharding)
    data = make_problem(400, 3 * engine.num_replicas, seed=1)
    trainer = build(engine, cfg, data)
    x, y = per_replica(engine, data["x"]), per_replica(engine, data["labels"])
    graph = trainer.train_step.get_concrete_function(x, y).graph
    head = trainer.state.head
    block = (head.block_size if sharding == "sharded" else 400), cfg.model.embedding_size
    updates = [op for op in graph.get_operations() if op.type in ("If", "StatelessIf") and writes_in_place(graph, op)]
    assert len(updates) == engine.num_replicas  # the weight's and its momentum's writes share one update
    reads = [op for op in graph.get_operations() if op.type == "ReadVariableOp" and op.outputs[0].shape == block]
    readers, aliases = set(), [r.outputs[0] for r in reads]
    while aliases:  # the read, and what passes it through: Identity, and IdentityN's output at its position
        tensor = aliases.pop()
        for op in tensor.consumers():
            if op not in updates:
                readers.add(op)
            if op.type in ("Identity", "IdentityN"):
                aliases += [op.outputs[i] for i, t in enumerate(op.inputs) if t is tensor]
    readers &= reachable_ops(graph)  # the rest is pruned (the custom gradient's dense weight gradient)
    assert readers
    before = ancestors(updates)
    assert sorted(f"{op.type} {op.name}" for op in readers - before) == []


@pytest.mark.parametrize("engine", ["single", "mirrored"])
@pytest.mark.parametrize("sharding", ["sharded", "replicated"])
def test_training_with_the_update_in_place_off_equals_in_place(engine, sharding, small_chunks):
    """optim.head_update_in_place: off (the head's dense gradient through the fused momentum op) is the reference
    of the in-place row update (a sharded block's, and a replicated head's of CHUNK_ROWS rows or more): three steps
    of each, with weight decay, land on the same parameters."""
    make = (lambda: SingleEngine()) if engine == "single" else (lambda: mirrored_engine(cpu_replicas=2))
    data = make_problem(50, 6, seed=2)
    results = {}
    for mode in ("auto", "off"):
        runtime = make()
        cfg = make_config("arcface", 6 // runtime.num_replicas, sharding)
        cfg.optim.weight_decay, cfg.optim.head_update_in_place = 0.01, mode
        results[mode] = train(build(runtime, cfg, data), data)
    for name in ("kernel", "bias"):
        np.testing.assert_allclose(results["auto"][name], results["off"][name], rtol=1e-5, atol=1e-6)
    for replica, block in results["auto"]["weight_blocks"].items():
        np.testing.assert_allclose(block, results["off"]["weight_blocks"][replica], rtol=1e-5, atol=1e-6)


def test_a_run_stops_naming_every_cause_when_the_block_is_not_written_in_place(small_chunks):
    from distface.training.trainer import TrainingStopped, _check_in_place

    engine = SingleEngine()
    data = make_problem(50, 6, seed=2)
    trainer = build(engine, make_config("arcface", 6, "sharded"), data)
    x, y = per_replica(engine, data["x"]), per_replica(engine, data["labels"])
    _check_in_place(trainer, trainer.train_step(x, y))  # written in place: the check passes
    weight = trainer.state.head.weight
    tf.raw_ops.ResourceGather(resource=weight.handle, indices=[0], dtype=tf.float32)  # now in copy-on-read mode
    before = weight.numpy()
    metrics = trainer.train_step(x, y)
    assert float(metrics.in_place_misses) > 0
    np.testing.assert_array_equal(weight.numpy(), before)
    with pytest.raises(TrainingStopped, match="copy-on-read.*XLA auto-clustering.*64-byte aligned.*off"):
        _check_in_place(trainer, metrics)
