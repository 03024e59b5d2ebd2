"""distface train --config configs/debug.yaml [--set section.key=value ...] [--resume]

Wiring only: config -> runtime -> data -> state -> step -> checkpoints -> loop. Bad input (config, data, pairs)
stops before training with one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import sys

from distface.checked_config import load_config
from distface.config import InputError
from distface.console import add_verbose, quiet_tensorflow


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="distface train", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="YAML experiment file (defaults apply to missing keys)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=100 (repeatable)")
    p.add_argument("--strategy", help="shorthand for --set train.strategy=NAME")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in train.out_dir")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    add_verbose(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_tensorflow(args.verbose)
    overrides = list(args.set) + ([f"train.strategy={args.strategy}"] if args.strategy else [])
    try:
        cfg = load_config(args.config, overrides)
        from distface.training.session import Session

        session = Session(cfg, resume=args.resume, quiet=args.quiet)
    except (InputError, OSError) as err:  # bad input: one line; anything else keeps its traceback
        print(f"distface: {err}", file=sys.stderr)
        return 2
    from distface.training.checkpoint import CheckpointWriteError
    from distface.training.trainer import TrainingStopped

    try:
        session.train()
    except InputError as err:  # a record that cannot be decoded, under data.bad_images: fail
        print(f"distface: {err}", file=sys.stderr)
        return 2
    except (TrainingStopped, CheckpointWriteError) as err:
        print(f"distface: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
