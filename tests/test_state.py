"""The training state by name: a head that adds a replicated variable needs no change anywhere else (reduced
gradient, momentum slot, broadcast, checkpoint), and no module re-derives the state from list positions."""
import re
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from equivalence import D, build, make_config, make_problem, per_replica
from distface.training.checkpoint import Checkpointer
from distface.heads.sharded import ShardedHead
from distface.heads.classifier import HeadOutput
from distface.training.trainer import Trainer
from distface.training.objectives import Classification
from distface.training.optim import Optimizer
from distface.training import schedules
from distface.parallel.single import SingleEngine
from distface.parallel.tfdist import mirrored_engine
from distface.training.state import TrainState

ROOT = Path(__file__).resolve().parents[1]


class TemperedHead(ShardedHead):
    """A toy head: the sharded head with a learned temperature that scales its loss (a new replicated variable)."""

    def __init__(self, cfg, runtime, num_classes, embedding_size, seed=0):
        super().__init__(cfg, runtime, num_classes, embedding_size, seed)
        self.replicated["temperature"] = runtime.replicated_variable(tf.constant(1.0), name="temperature",
                                                                     trainable=True)

    def __call__(self, collectives, embeddings, labels, step, label_smoothing=0.0):
        out = super().__call__(collectives, embeddings, labels, step, label_smoothing)
        return HeadOutput(out.loss * self.replicated["temperature"], out.angles, out.target_degrees)


def tempered_trainer(engine, per_replica_batch, problem):
    cfg = make_config("arcface", per_replica_batch, "sharded")
    reference = build(engine, cfg, problem)  # the plain head, its blocks set to the problem's weights
    objective = Classification(cfg, engine, len(problem["weight"]))
    objective.head = TemperedHead(cfg.head, engine, len(problem["weight"]), D)
    for replica, component in engine.local_components(objective.head.weight).items():
        component.assign(engine.local_components(reference.state.head.weight)[replica])
    state = TrainState(engine, reference.state.backbone, objective)
    optimizer = Optimizer(cfg.optim, 100, engine, schedules.global_batch(cfg, engine.num_replicas))
    return Trainer(cfg, engine, state, objective, optimizer)


def temperatures(trainer):
    return [float(c.numpy()) for c in trainer.runtime.local_results(trainer.state.head.replicated["temperature"])]


@pytest.fixture(scope="module")
def mirrored():
    return mirrored_engine(cpu_replicas=2)


def test_a_new_replicated_head_variable_needs_the_head_alone(mirrored, tmp_path):
    problem = make_problem(10, 8, seed=4)
    single, dist = tempered_trainer(SingleEngine(), 8, problem), tempered_trainer(mirrored, 4, problem)
    for trainer in (single, dist):
        assert "head/temperature" in trainer.state.trainable()["replicated"]
        assert "head/temperature" in trainer.state.slots["replicated"]["momentum"]  # a momentum slot, by name
        temperature = trainer.state.head.replicated["temperature"]
        assert any(v is temperature for v in trainer.state.replicated_state())  # broadcast from the chief
        x, y = per_replica(trainer.runtime, problem["x"]), per_replica(trainer.runtime, problem["labels"])
        for _ in range(3):
            trainer.train_step(x, y)
    # Trained like the backbone: gradient summed over replicas, equal on both, the single-device value.
    assert temperatures(single)[0] != 1.0
    np.testing.assert_allclose(temperatures(dist), [temperatures(single)[0]] * 2, rtol=1e-5)

    trained = temperatures(dist)
    layout = {"num_classes": 10, "embedding_size": D, "head": "arcface", "block_size": dist.state.head.block_size}
    Checkpointer(dist.state, mirrored, layout, tmp_path).save(3)
    dist.state.head.replicated["temperature"].assign(7.0)
    Checkpointer(dist.state, mirrored, layout, tmp_path).restore()
    assert temperatures(dist) == trained


def test_no_module_slices_variables_by_a_count():
    """The state is read by name: no `[:len(...)]`/`[count:]` cuts of variable or slot lists anywhere."""
    pattern = re.compile(r"(variables|slots|grads|state)\w*\[[^\]]*(len\(|count)[^\]]*:|"
                         r"(variables|slots|grads|state)\w*\[[^\]]*:[^\]]*(len\(|count)")
    hits = [f"{path.relative_to(ROOT)}:{no}: {line.strip()}"
            for folder in ("distface", "benchmarks", "tests") for path in (ROOT / folder).rglob("*.py")
            for no, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, hits


def test_heads_and_losses_see_a_small_collective_protocol():
    from distface.parallel.engine import Collectives

    members = {name for name in vars(Collectives) if not name.startswith("_")}
    assert members == {"num_replicas", "replica_id", "all_gather", "all_reduce_sum", "all_reduce_max", "gather_rows"}
