"""Where a run writes when train.out_dir is not given: `runs/<config name>-<YYYYmmdd-HHMMSS>`, a new folder for
every run, so that the same command run twice keeps both; `--resume` continues the newest of that config's.

Every process of a run must write to the same folder, and their clocks and start times differ: the chief chooses
and the others take its choice through the runtime.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

RUNS = Path("runs")


def config_name(config: str | Path | None) -> str:
    """The run-name prefix for a --config value: a file's stem or a shipped config's name."""
    return Path(config).stem if config else "default"


def _stamp(folder: Path, name: str) -> int | None:
    """The YYYYmmddHHMMSS of `<name>-<YYYYmmdd-HHMMSS>` as one number, None for any other folder name."""
    match = re.fullmatch(re.escape(name) + r"-(\d{8})-(\d{6})", folder.name)
    return int(match[1] + match[2]) if match else None


def _folder(name: str, stamp: int, root: Path) -> Path:
    return root / f"{name}-{stamp // 1_000_000:08d}-{stamp % 1_000_000:06d}"


def newest_run(name: str, root: Path = RUNS) -> Path | None:
    """The newest `<root>/<name>-<stamp>` folder, if there is one."""
    stamps = [s for s in (_stamp(p, name) for p in root.glob(f"{name}-*") if p.is_dir()) if s is not None]
    return _folder(name, max(stamps), root) if stamps else None


def _new_stamp(name: str, root: Path) -> int:
    """Now, or the first later second whose folder does not exist yet."""
    now = time.time()
    while True:
        stamp = int(time.strftime("%Y%m%d%H%M%S", time.localtime(now)))
        if not _folder(name, stamp, root).exists():
            return stamp
        now += 1


def choose_run_folder(name: str, resume: bool, runtime, root: Path = RUNS) -> tuple[Path, bool]:
    """(the folder, whether it is an earlier run's), the chief's choice on every process: with `resume`, the newest
    run of `name`, else (or when there is none) a new one."""
    import tensorflow as tf

    newest = newest_run(name, root) if resume and runtime.is_chief else None
    stamp = _stamp(newest, name) if newest is not None else _new_stamp(name, root) if runtime.is_chief else 0
    # Distribution: the chief's choice, as a number every engine can broadcast.
    with runtime.scope():
        chosen = runtime.replicated_variable(tf.constant([stamp, newest is not None], tf.int64), "run_folder")
    runtime.broadcast_from_chief([chosen])
    stamp, earlier = (int(v) for v in chosen.numpy())
    return _folder(name, stamp, root), bool(earlier)
