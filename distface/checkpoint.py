"""distface checkpoint merge RUN_DIR --out HEAD.npz [--step N]: a checkpoint's head as one [C, d] array by class id,
whatever the world size that wrote it (the checkpoint format: distface.training.checkpoint)."""
from __future__ import annotations

import argparse
import os
import sys

from distface.console import add_verbose, quiet_tensorflow


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="distface checkpoint", description="checkpoint tools")
    sub = p.add_subparsers(dest="command", required=True)
    merge = sub.add_parser("merge", help="write a checkpoint's head as one [C, d] array (npz, by class id)")
    merge.add_argument("run_dir")
    merge.add_argument("--out", required=True, help="output .npz")
    merge.add_argument("--step", type=int, help="default: the latest complete checkpoint")
    add_verbose(merge)
    args = p.parse_args(argv)
    quiet_tensorflow(args.verbose)
    import numpy as np

    from distface.training.checkpoint import merge_head

    try:
        arrays = merge_head(args.run_dir, args.step)
    except (OSError, ValueError, KeyError) as err:
        print(f"distface: {err}", file=sys.stderr)
        return 2
    tmp = f"{args.out}.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {list(v.shape)}" for k, v in arrays.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
