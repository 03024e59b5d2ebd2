"""train.accumulate_steps: K micro-batches of B per replica are one update of the K·B mean. On 2 MirroredStrategy
replicas and 2 Horovod ranks (tests/hvd_two_ranks.py) with the sharded head, K x B equals 1 x K·B on one device for
the loss, the gradients (read from the first update of plain SGD) and the parameters after 3 updates; Partial FC
accumulates the micro-batches' sampled rows."""
import numpy as np
import pytest
import tensorflow as tf

from equivalence import build, full_weight, make_config, make_problem, per_replica
from test_horovod import HOROVODRUN
from distface.parallel.single import SingleEngine
from distface.parallel.tfdist import mirrored_engine

CLASSES, GLOBAL, K = 12, 16, 2


def micro_batches(engine, array: np.ndarray, steps: int):
    """Replica r's rows [r·n, (r+1)·n) of the global batch as `steps` micro-batches [steps, n / steps, ...]."""
    n = len(array) // engine.num_replicas

    def rows(replica):
        own = array[replica * n:(replica + 1) * n]
        return tf.constant(own.reshape(steps, n // steps, *own.shape[1:]))

    strategy = getattr(engine, "strategy", None)
    if strategy is None:
        return rows(engine.process_index)
    return strategy.experimental_distribute_values_from_function(lambda ctx: rows(ctx.replica_id_in_sync_group))


def run(engine, steps: int, problem: dict, **optim) -> dict:
    cfg = make_config("arcface", GLOBAL // engine.num_replicas // steps, "sharded")
    cfg.train.accumulate_steps = steps
    cfg.optim.type, cfg.optim.momentum = "sgd", 0.0
    for key, value in optim.items():
        setattr(cfg.optim, key, value)
    trainer = build(engine, cfg, problem)
    assert trainer.global_batch == GLOBAL
    if steps == 1:
        x, labels = per_replica(engine, problem["x"]), per_replica(engine, problem["labels"])
    else:
        x, labels = micro_batches(engine, problem["x"], steps), micro_batches(engine, problem["labels"], steps)
    backbone = trainer.state.backbone.layers[0]
    out = {"loss": [], "kernel": [], "blocks": []}
    for _ in range(3):
        metrics = trainer.train_step(x, labels)
        out["loss"].append(float(engine.local_results(metrics.scalars["loss"])[0]))
        out["kernel"].append(backbone.kernel.numpy())
        out["blocks"].append({r: c.numpy() for r, c in engine.local_components(trainer.state.head.weight).items()})
    return out


def accumulation_problem() -> dict:
    problem = make_problem(CLASSES, GLOBAL, seed=5)
    problem["labels"][:4] = [0, 11, 0, 11]  # labels in both class blocks, in both micro-batches
    return problem


def assert_equal_training(accumulated: dict, whole: dict, initial: dict) -> None:
    """Loss, gradients (from the first update of plain SGD: g = (w0 - w1) / lr - wd·w0) and parameters after each
    of the 3 updates; `weight` holds the full head after each update."""
    np.testing.assert_allclose(accumulated["loss"], whole["loss"], rtol=1e-5)
    lr, wd = 0.1, 5e-4
    for name in ("kernel", "weight"):
        grads = [(initial[name] - r[name][0]) / lr - wd * initial[name] for r in (whole, accumulated)]
        np.testing.assert_allclose(grads[1], grads[0], rtol=1e-4, atol=1e-5 * np.abs(grads[0]).max())
        for step in range(3):
            np.testing.assert_allclose(accumulated[name][step], whole[name][step], rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name} after update {step + 1}")
    assert whole["loss"][0] != whole["loss"][2]  # the updates moved the model


def with_full_weight(run_out: dict) -> dict:
    return {**run_out, "weight": [full_weight(blocks, CLASSES) for blocks in run_out["blocks"]]}


@pytest.mark.parametrize("engine_name", ["single", "mirrored"])
def test_k_micro_batches_equal_one_batch_of_k_times_b(engine_name):
    engine = SingleEngine() if engine_name == "single" else mirrored_engine(cpu_replicas=2)
    problem = accumulation_problem()
    whole = with_full_weight(run(SingleEngine(), 1, problem))
    assert_equal_training(with_full_weight(run(engine, K, problem)), whole, problem)


@pytest.mark.skipif(HOROVODRUN is None, reason="horovod is not installed (DISTFACE_NO_HOROVOD=1)")
def test_k_micro_batches_on_two_horovod_ranks_equal_one_batch_of_k_times_b(horovod_two_ranks):
    ranks = horovod_two_ranks["accumulation"]
    problem = accumulation_problem()
    accumulated = {"loss": list(ranks[0]["loss"]), "kernel": list(ranks[0]["kernel"]),
                   "weight": [full_weight({r: rank["weight"][step] for r, rank in enumerate(ranks)}, CLASSES)
                              for step in range(3)]}
    for rank in ranks[1:]:
        np.testing.assert_array_equal(rank["kernel"], ranks[0]["kernel"])  # replicated: the ranks agree
    assert_equal_training(accumulated, with_full_weight(run(SingleEngine(), 1, problem)), problem)


def test_partial_fc_accumulates_every_micro_batchs_sampled_rows():
    """Each micro-batch samples its own rows (its positives always): the update moves every positive of the K·B."""
    engine = mirrored_engine(cpu_replicas=2)
    classes = 400
    problem = make_problem(classes, GLOBAL, seed=6)
    cfg = make_config("arcface", GLOBAL // 2 // K, "sharded")
    cfg.train.accumulate_steps, cfg.head.sample_rate, cfg.optim.head_update = K, 0.05, "lazy"
    trainer = build(engine, cfg, problem)
    before = problem["weight"]
    trainer.train_step(micro_batches(engine, problem["x"], K), micro_batches(engine, problem["labels"], K))
    blocks = {r: c.numpy() for r, c in engine.local_components(trainer.state.head.weight).items()}
    moved = set(np.flatnonzero(np.any(full_weight(blocks, classes) != before, axis=1)))
    assert set(problem["labels"]) <= moved
    assert len(moved) < classes  # lazy: only sampled rows
