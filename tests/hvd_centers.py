"""Run by tests/test_sharded_centers.py under `horovodrun -np 2`: the sharded-centers case of that test on the
Horovod engine; each rank writes its results to OUT/rank<r>.npz for the test to compare with one device."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402

from equivalence import build, objective_loss_and_grads, train  # noqa: E402
from test_sharded_centers import GLOBAL_BATCH, center_case  # noqa: E402
from distface.parallel.horovod import HorovodEngine  # noqa: E402


def main(out_dir: str) -> None:
    engine = HorovodEngine()
    cfg, problem = center_case(GLOBAL_BATCH // 2, "sharded")
    trainer = build(engine, cfg, problem)
    params = train(trainer, problem)
    grads = objective_loss_and_grads(trainer, problem)
    np.savez(os.path.join(out_dir, f"rank{engine.process_index}.npz"), kernel=params["kernel"],
             centers=params["center_blocks"][engine.process_index], loss=grads["loss"],
             center_loss=grads["center_loss"], d_emb=grads["d_emb"][0], d_kernel=grads["d_kernel"][0])


if __name__ == "__main__":
    main(sys.argv[1])
