"""What a user's shell shows: distface's own lines, warnings and errors, and none of TensorFlow's start-up notes
(absl's pre-initialisation banner, oneDNN, CUDA probing, CPU features) or its logged copies of errors distface
reports itself, unless --verbose.

TensorFlow reads its log level once, when it loads, and absl writes the lines it logs while TensorFlow loads to
stderr whatever the level: so the level is set and the import done here, before anything else imports
TensorFlow, with the process's stderr (file descriptor 2, which C++ writes to) passed through a filter.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import tempfile

# absl's banner, its info and warning lines ("I0000 00:00:..."), and the CPU-feature note's second line
START_UP_NOTE = re.compile(rb"^(WARNING: All log messages before absl::InitializeLog\(\)|[IW]\d{4} \d\d:\d\d:"
                            rb"|To enable the following instructions:)")


def add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", help="also show TensorFlow's own log lines")


def quiet_tensorflow(verbose: bool = False) -> None:
    """Before the first TensorFlow import: hide its log lines (unless verbose), then import it."""
    if verbose or "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # C++: only fatal errors
    for logger in ("tensorflow", "absl"):  # Python: their warnings (retracing, eager collectives, saving)
        logging.getLogger(logger).setLevel(logging.ERROR)
    with _start_up_notes_dropped():
        import tensorflow  # noqa: F401


@contextlib.contextmanager
def _start_up_notes_dropped():
    """Everything written to file descriptor 2 inside the block, minus TensorFlow's start-up notes, written back
    after it."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().splitlines(keepends=True) if not START_UP_NOTE.match(line)]
            if kept:
                sys.stderr.buffer.write(b"".join(kept))
                sys.stderr.flush()
