"""Run by tests/test_horovod.py under `horovodrun -np 2`: the equivalence cases of tests/equivalence.py on the
Horovod engine; each rank writes its results to OUT/rank<r>.npz for the test to compare with one device."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402

from equivalence import HEADS, build, loss_and_grads, make_config, make_problem, train  # noqa: E402
from distface.parallel.horovod import HorovodEngine  # noqa: E402

GLOBAL_BATCH = 8
CASES = [(kind, 10) for kind in sorted(HEADS)] + [("arcface", 1001), ("combined", 3)]


def main(out_dir: str) -> None:
    engine = HorovodEngine()
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
    np.savez(os.path.join(out_dir, f"rank{engine.process_index}.npz"), **results)


if __name__ == "__main__":
    main(sys.argv[1])
