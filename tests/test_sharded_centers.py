"""Sharded center-loss centers (loss.center_sharding: sharded): 2 replicas (MirroredStrategy and Horovod) x B/2
with each replica holding its class block's centers == 1 device x B with replicated centers, after 3 steps:
centers, center loss, loss and gradients; C odd, labels repeated within and across replicas and blocks. The block
is ceil(C/2) rows; a checkpoint written on 2 replicas resumes on 1 and 4 with the same centers."""
import os
import shutil
import sys

import numpy as np
import pytest

from equivalence import build, full_weight, make_config, make_problem, objective_loss_and_grads, train

HOROVODRUN = shutil.which("horovodrun", path=os.path.dirname(sys.executable))
GLOBAL_BATCH, NUM_CLASSES = 16, 101
# Blocks of 51 on 2 replicas (0..50 | 51..100 + 1 padding row): repeats within a replica, across replicas,
# on both sides of the block boundary, and the last class.
LABELS = [100, 3, 50, 3, 51, 7, 100, 0, 50, 51, 99, 3, 12, 100, 60, 7]


def center_case(per_replica_batch: int, sharding: str):
    """(config, problem): arcface head with center loss; `sharding` for the head, centers placed by `auto`."""
    problem = make_problem(NUM_CLASSES, GLOBAL_BATCH, seed=15)
    problem["labels"] = np.array(LABELS, np.int32)
    cfg = make_config("arcface", per_replica_batch, sharding, center_weight=0.5, center_sharding="auto")
    cfg.loss.center_alpha = 0.3
    return cfg, problem


def single_device():
    from distface.parallel.single import SingleEngine

    cfg, problem = center_case(GLOBAL_BATCH, "replicated")
    trainer = build(SingleEngine(), cfg, problem)
    assert not trainer.state.sharded_centers  # auto: replicated beside a replicated head
    params = train(trainer, problem)
    return params, objective_loss_and_grads(trainer, problem)


@pytest.fixture(scope="module")
def reference():
    params, grads = single_device()
    assert np.abs(params["centers"]).max() > 0 and grads["center_loss"] > 0  # a non-trivial case
    return params, grads


@pytest.fixture(scope="module")
def mirrored():
    from distface.parallel.tfdist import mirrored_engine

    return mirrored_engine(cpu_replicas=2)


def assert_matches(reference, centers, kernel, loss, center_loss, d_emb, d_kernel):
    params, grads = reference
    np.testing.assert_allclose(centers, params["centers"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(kernel, params["kernel"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss, grads["loss"], rtol=1e-5)
    np.testing.assert_allclose(center_loss, grads["center_loss"], rtol=1e-5)
    np.testing.assert_allclose(d_emb, grads["d_emb"][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d_kernel, grads["d_kernel"][0], rtol=1e-5, atol=1e-6)


def test_mirrored_sharded_centers_equal_single_device(mirrored, reference):
    cfg, problem = center_case(GLOBAL_BATCH // 2, "sharded")
    trainer = build(mirrored, cfg, problem)
    state = trainer.state
    assert state.sharded_centers
    # Each device holds its block of ceil(101 / 2) = 51 rows; no replicated variable is C x d.
    assert [c.shape[0] for c in mirrored.local_results(state.centers)] == [51, 51]
    assert len({c.device for c in mirrored.local_results(state.centers)}) == 2
    assert not any(v is state.centers for v in state.replicated_state())  # never broadcast from the chief
    assert state.sharded_state()["params"]["centers"] is state.centers
    params = train(trainer, problem)
    grads = objective_loss_and_grads(trainer, problem)
    for block in params["center_blocks"].values():
        assert block.shape == (51, 8)
    assert not params["center_blocks"][1][-1].any()  # the padding row stays zero
    assert_matches(reference, full_weight(params["center_blocks"], NUM_CLASSES), params["kernel"], grads["loss"],
                   grads["center_loss"], np.concatenate(grads["d_emb"]), grads["d_kernel"][0])
    np.testing.assert_allclose(grads["d_kernel"][1], grads["d_kernel"][0], rtol=1e-6)


@pytest.mark.skipif(HOROVODRUN is None, reason="horovod is not installed (DISTFACE_NO_HOROVOD=1)")
def test_horovod_sharded_centers_equal_single_device(reference, horovod_two_ranks):
    ranks = horovod_two_ranks["centers"]  # the session's one 2-rank Horovod run (tests/hvd_two_ranks.py)
    assert [r["centers"].shape for r in ranks] == [(51, 8), (51, 8)]
    for r in ranks:
        centers = full_weight({i: q["centers"] for i, q in enumerate(ranks)}, NUM_CLASSES)
        assert_matches(reference, centers, r["kernel"], r["loss"], r["center_loss"],
                       np.concatenate([q["d_emb"] for q in ranks]), r["d_kernel"])


@pytest.mark.parametrize("overrides, message", [
    (["loss.center_sharding=blocks"], "loss.center_sharding: unknown center sharding 'blocks'"),
    (["loss.center_weight=0.1", "loss.center_sharding=sharded", "head.sharding=replicated"],
     "loss.center_sharding: sharded centers live beside the head's class blocks: needs head.sharding: sharded"),
])
def test_center_sharding_config_errors(overrides, message):
    from distface.checked_config import load_config
    from distface.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


@pytest.mark.parametrize("overrides, placement", [
    (["loss.center_weight=0.1"], "sharded"),  # auto beside the default sharded head
    (["loss.center_weight=0.1", "head.sharding=replicated"], "replicated"),
    (["loss.center_weight=0.1", "loss.center_sharding=replicated"], "replicated"),
    (["loss.center_sharding=sharded", "head.sharding=replicated"], None),  # no center loss: nothing to place
])
def test_center_sharding_resolves(overrides, placement):
    from distface.checked_config import load_config
    from distface.training.objectives import Classification
    from distface.parallel.single import SingleEngine

    objective = Classification(load_config(None, overrides), SingleEngine(), 11)
    got = None if objective.centers is None else ("sharded" if objective.centers.sharded else "replicated")
    assert got == placement


def test_checkpoint_from_two_replicas_resumes_on_one_and_four(tmp_path):
    """31 classes with sharded centers saved as 2 blocks of 16, read back as 1 block of 31 and 4 blocks of 8."""
    from distface.training.checkpoint import merge_head
    from test_reliability import probe, train as train_cli

    run = tmp_path / "run"
    train_cli(run, "--strategy", "mirrored", "--set", "train.cpu_replicas=2", "--set", "loss.center_weight=0.01",
              "--set", f"data.train_identities={list(range(1, 32))}".replace(" ", ""), steps=5)
    merged = merge_head(run)
    assert merged["centers"].shape == (31, 128) and np.abs(merged["centers"]).max() > 0
    for strategy, replicas in (("mirrored", 2), ("single", 1), ("mirrored", 4)):
        got = probe(run, tmp_path, strategy, replicas)
        np.testing.assert_array_equal(got["centers"], merged["centers"], err_msg=f"{strategy} x{replicas}")
