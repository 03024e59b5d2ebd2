"""Run by tests/test_sync_batchnorm.py under `horovodrun -np 2`: the synchronized (and, for contrast, the plain)
BatchNorm runs of that test on the Horovod engine; each rank writes OUT/rank<r>.npz for the test to compare."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402

from test_sync_batchnorm import problem, run  # noqa: E402
from distface.parallel.horovod import HorovodEngine  # noqa: E402


def main(out_dir: str) -> None:
    engine = HorovodEngine()
    data = problem()
    results = {}
    for tag, sync in (("on", True), ("off", False)):
        r = run(engine, sync, data)
        results[f"{tag}/loss"] = r["loss"]
        results[f"{tag}/normalised"] = r["normalised"][0]
        results.update({f"{tag}/grad/{i}": g for i, g in enumerate(r["grads"])})
        results.update({f"{tag}/moving/{path}": values[0] for path, values in r["moving"].items()})
    np.savez(os.path.join(out_dir, f"rank{engine.process_index}.npz"), **results)


if __name__ == "__main__":
    main(sys.argv[1])
