"""The Horovod engine on 2 ranks (horovodrun -np 2 on localhost) == one device: sharded head loss, gradients and
parameters after 3 SGD steps for every head kind, odd C and C < B; SUM-aggregated centers."""
import os
import shutil
import sys

import numpy as np
import pytest

from equivalence import build, full_weight, loss_and_grads, make_config, make_problem, train
from distface.parallel.single import SingleEngine

HOROVODRUN = shutil.which("horovodrun", path=os.path.dirname(sys.executable))
pytestmark = pytest.mark.skipif(HOROVODRUN is None, reason="horovod is not installed (DISTFACE_NO_HOROVOD=1)")


@pytest.fixture(scope="module")
def ranks(horovod_two_ranks):
    """The equivalence part of the session's one 2-rank Horovod run (tests/hvd_two_ranks.py)."""
    return horovod_two_ranks["equivalence"]


def reference(kind, num_classes, seed, **kwargs):
    problem = make_problem(num_classes, 8, seed=seed)
    cfg = make_config(kind, 8, "replicated", **kwargs)
    single = SingleEngine()
    return loss_and_grads(build(single, cfg, problem), problem), train(build(single, cfg, problem), problem)


@pytest.mark.parametrize("kind, num_classes", [(k, 10) for k in ("arcface", "combined", "cosface", "softmax",
                                                                 "sphereface")] + [("arcface", 1001),
                                                                                   ("combined", 3)])
def test_sharded_head_equals_single_device(ranks, kind, num_classes):
    grads, params = reference(kind, num_classes, seed=num_classes)
    tag = f"{kind}_{num_classes}"
    for r in ranks:
        np.testing.assert_allclose(r[f"{tag}/loss"], grads["loss"], rtol=1e-5)
        np.testing.assert_allclose(r[f"{tag}/kernel"], params["kernel"], rtol=1e-5, atol=1e-6)
    d_emb = np.concatenate([r[f"{tag}/d_emb"] for r in ranks])
    np.testing.assert_allclose(d_emb, grads["d_emb"][0], rtol=1e-5, atol=1e-7)
    d_weight = full_weight({i: r[f"{tag}/d_weight"] for i, r in enumerate(ranks)}, num_classes)
    np.testing.assert_allclose(d_weight, grads["d_weight"][0], rtol=1e-5, atol=1e-7)
    weight = full_weight({i: r[f"{tag}/weight"] for i, r in enumerate(ranks)}, num_classes)
    np.testing.assert_allclose(weight, params["weight_blocks"][0], rtol=1e-5, atol=1e-6)


def test_centers_sum_over_ranks(ranks):
    """2 ranks x B/2 give the centers of 1 replica x B after 3 steps (counts n_j over the global batch)."""
    _, params = reference("softmax", 10, seed=7, center_weight=0.1)
    assert np.abs(params["centers"]).max() > 0
    for r in ranks:
        np.testing.assert_allclose(r["center/centers"], params["centers"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r["center/kernel"], params["kernel"], rtol=1e-5, atol=1e-6)
