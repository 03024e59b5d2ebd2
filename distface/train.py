"""distface train --config NAME_OR_FILE [--set section.key=value ...] [--resume [RUN_DIR]]

Trains a backbone and its head as the config says (distface.training.session: the wiring), into train.out_dir or,
when that is not set, a new runs/<config name>-<YYYYmmdd-HHMMSS>. Bad input (config, data, pairs) stops before
training with one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distface.checked_config import load_config
from distface.config import InputError
from distface.console import add_verbose, quiet_tensorflow


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="distface train", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="a YAML experiment file, or the name of a shipped config (distface/configs/): "
                                    "debug, orl_arcface, ... (defaults apply to missing keys)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=100 (repeatable)")
    p.add_argument("--strategy", help="shorthand for --set train.strategy=NAME")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                   help="continue from the latest checkpoint of RUN_DIR, of train.out_dir, or (neither given) of "
                        "the newest runs/<config name>-* folder")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    add_verbose(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_tensorflow(args.verbose)
    overrides = list(args.set) + ([f"train.strategy={args.strategy}"] if args.strategy else [])
    try:
        cfg = load_config(args.config, overrides)
        if isinstance(args.resume, str):  # a folder, taken as it is (not through --set's YAML)
            if not Path(args.resume).is_dir():
                raise InputError(f"--resume: no such run folder: {args.resume}")
            cfg.train.out_dir = args.resume
        from distface.training.run_folder import config_name
        from distface.training.session import Session

        session = Session(cfg, resume=bool(args.resume), quiet=args.quiet, name=config_name(args.config))
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
