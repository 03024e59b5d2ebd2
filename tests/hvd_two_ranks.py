"""Run once per test session under `horovodrun -np 2` (the `horovod_two_ranks` fixture in tests/conftest.py) for the
tests that compare the Horovod engine on 2 ranks with one device, so they share one Horovod start-up:

  equivalence     tests/test_horovod.py: the equivalence cases of tests/equivalence.py (every head kind, odd C and
                  C < B; SUM-aggregated centers)
  centers         tests/test_sharded_centers.py: the sharded center-loss centers case
  sync_batchnorm  tests/test_sync_batchnorm.py: the synchronized (and, for contrast, the plain) BatchNorm runs
  accumulation    tests/test_accumulation.py: 2 accumulated micro-batches per update

Each rank writes each part's results to OUT/<part>/rank<r>.npz for the tests to compare with one device."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402

from equivalence import HEADS, build, loss_and_grads, make_config, make_problem, objective_loss_and_grads  # noqa: E402
from equivalence import train  # noqa: E402
from distface.parallel.horovod import HorovodEngine  # noqa: E402

GLOBAL_BATCH = 8
CASES = [(kind, 10) for kind in sorted(HEADS)] + [("arcface", 1001), ("combined", 3)]


def equivalence(engine) -> dict:
    results = {}
    for kind, num_classes in CASES:
        problem = make_problem(num_classes, GLOBAL_BATCH, seed=num_classes)
        cfg = make_config(kind, GLOBAL_BATCH // 2, "sharded")
        grads = loss_and_grads(build(engine, cfg, problem), problem)
        params = train(build(engine, cfg, problem), problem)
        tag = f"{kind}_{num_classes}"
        results[f"{tag}/loss"] = grads["loss"]
        results[f"{tag}/d_emb"] = grads["d_emb"][0]
        results[f"{tag}/d_weight"] = grads["d_weight"][0]
        results[f"{tag}/kernel"] = params["kernel"]
        results[f"{tag}/weight"] = params["weight_blocks"][engine.process_index]
    problem = make_problem(10, GLOBAL_BATCH, seed=7)
    centers = train(build(engine, make_config("softmax", GLOBAL_BATCH // 2, "sharded", center_weight=0.1),
                          problem), problem)
    results["center/centers"] = centers["centers"]
    results["center/kernel"] = centers["kernel"]
    return results


def centers(engine) -> dict:
    from test_sharded_centers import GLOBAL_BATCH, center_case

    cfg, problem = center_case(GLOBAL_BATCH // 2, "sharded")
    trainer = build(engine, cfg, problem)
    params = train(trainer, problem)
    grads = objective_loss_and_grads(trainer, problem)
    return dict(kernel=params["kernel"], centers=params["center_blocks"][engine.process_index], loss=grads["loss"],
                center_loss=grads["center_loss"], d_emb=grads["d_emb"][0], d_kernel=grads["d_kernel"][0])


def sync_batchnorm(engine) -> dict:
    from test_sync_batchnorm import problem, run

    data = problem()
    results = {}
    for tag, sync in (("on", True), ("off", False)):
        r = run(engine, sync, data)
        results[f"{tag}/loss"] = r["loss"]
        results[f"{tag}/normalised"] = r["normalised"][0]
        results.update({f"{tag}/grad/{i}": g for i, g in enumerate(r["grads"])})
        results.update({f"{tag}/moving/{path}": values[0] for path, values in r["moving"].items()})
    return results


def accumulation(engine) -> dict:
    from test_accumulation import K, accumulation_problem, run

    out = run(engine, K, accumulation_problem())
    return dict(loss=np.array(out["loss"]), kernel=np.stack(out["kernel"]),
                weight=np.stack([blocks[engine.process_index] for blocks in out["blocks"]]))


PARTS = {"equivalence": equivalence, "centers": centers, "sync_batchnorm": sync_batchnorm,
         "accumulation": accumulation}


def main(out_dir: str) -> None:
    engine = HorovodEngine()
    for name, part in PARTS.items():
        os.makedirs(os.path.join(out_dir, name), exist_ok=True)
        np.savez(os.path.join(out_dir, name, f"rank{engine.process_index}.npz"), **part(engine))


if __name__ == "__main__":
    main(sys.argv[1])
