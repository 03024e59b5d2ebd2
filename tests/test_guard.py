"""Non-finite guard and mixed precision: a NaN batch is skipped everywhere (no variable changes, counted) and
training goes on; bfloat16/float16 backbones train with float32 heads."""
import itertools

import numpy as np
import pytest
import tensorflow as tf

from equivalence import build, make_config, make_problem, per_replica
from distface.checked_config import load_config
from distface.parallel.single import SingleEngine
from distface.parallel.tfdist import mirrored_engine
from distface.training.session import Session


def snapshot(trainer):
    """Parameters and momentum slots, every replica's copy."""
    variables = [v for group in trainer.state.trainable().values() for v in group.values()]
    variables += [v for group in trainer.state.slots for v in trainer.state.slot_variables(group)]
    return [np.concatenate([np.ravel(c.numpy()) for c in trainer.runtime.local_results(v)]) for v in variables]


@pytest.mark.parametrize("engine_name", ["single", "mirrored"])
def test_nan_batch_is_skipped_and_training_continues(engine_name):
    engine = SingleEngine() if engine_name == "single" else mirrored_engine(cpu_replicas=2)
    problem = make_problem(10, 8, seed=2)
    cfg = make_config("arcface", 8 // engine.num_replicas, "sharded", center_weight=0.1)
    trainer = build(engine, cfg, problem)
    good = per_replica(engine, problem["x"]), per_replica(engine, problem["labels"])
    trainer.train_step(*good)
    before = snapshot(trainer)
    poisoned = problem["x"].copy()
    poisoned[-1, 0] = np.nan  # one example, on the last replica only
    metrics = trainer.train_step(per_replica(engine, poisoned), good[1])
    assert np.isnan(float(metrics.scalars["loss"])) and float(metrics.scalars["train/skipped_steps"]) == 1
    for a, b in zip(before, snapshot(trainer)):
        np.testing.assert_array_equal(a, b)
    assert np.isfinite(trainer.state.centers.numpy()).all()
    metrics = trainer.train_step(*good)
    counters = trainer.state.counters
    assert np.isfinite(float(metrics.scalars["loss"])) and int(counters["bad_streak"].numpy()) == 0
    assert any(not np.array_equal(a, b) for a, b in zip(before, snapshot(trainer)))
    assert int(trainer.state.step.numpy()) == 3 and int(counters["skipped"].numpy()) == 1


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_mixed_precision_step(tmp_path, precision):
    cfg = load_config("distface/configs/debug.yaml", [f"train.mixed_precision={precision}", f"train.out_dir={tmp_path}",
                                             "model.image_size=[56, 48]", "data.batch_size=8"])
    session = Session(cfg, quiet=True)
    try:
        losses = [float(session.trainer.train_step(*next(session.dataset)).scalars["loss"]) for _ in range(3)]
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    assert np.isfinite(losses[-1])
    state = session.state
    assert state.backbone.layers[1].compute_dtype == precision
    assert all(v.dtype == tf.float32 for v in state.head.sharded.values())
    assert all(v.dtype == tf.float32 for v in state.backbone.trainable_variables)
    if precision == "float16":
        assert float(state.counters["loss_scale"].numpy()) <= 2.0 ** 15


@pytest.mark.parametrize("clean_first", [0, 1], ids=["aligned", "off-by-one"])
def test_training_stops_at_max_bad_steps_not_at_the_next_log_step(tmp_path, clean_first):
    """The streak is read every max_bad_steps steps; when it reaches the limit between two reads, the steps after
    it change nothing, so the run stops with exactly the limit's bad steps and no step past them counted."""
    from distface.training.trainer import TrainingStopped, train_loop

    class Quiet:
        def start(self, step):
            pass

        def log_step(self, step, metrics, lr):
            pass

    class NoCheckpoints:
        run_dir = tmp_path

        def save(self, step):
            raise AssertionError("a diverged run reached a checkpoint")

    engine = SingleEngine()
    problem = make_problem(10, 8, seed=2)
    cfg = make_config("arcface", 8, "sharded")
    cfg.train.steps, cfg.train.log_every, cfg.train.max_bad_steps, cfg.train.checkpoint_every = 100, 50, 3, 0
    trainer = build(engine, cfg, problem)
    poisoned = problem["x"].copy()
    poisoned[0, 0] = np.nan
    clean = [(tf.constant(problem["x"]), tf.constant(problem["labels"]))] * clean_first
    batches = itertools.chain(clean, iter(lambda: (tf.constant(poisoned), tf.constant(problem["labels"])), None))
    with pytest.raises(TrainingStopped, match="3 steps in a row"):
        train_loop(trainer, batches, NoCheckpoints(), lambda *a: [], Quiet())
    assert int(trainer.state.step.numpy()) == 3 + clean_first
    assert int(trainer.state.counters["skipped"].numpy()) == 3
