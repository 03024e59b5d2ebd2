"""One self-overwriting progress line on stderr for the command-line tools: done/total, rate and ETA."""
from __future__ import annotations

import sys
import time


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class Progress:
    """progress(count, total): redrawn at most every half second, and once more at the end."""

    def __init__(self, verb: str, quiet: bool = False, unit: str = "images"):
        self.verb, self.quiet, self.unit, self.open_line, self.width = verb, quiet, unit, False, 0
        self.start = None  # the clock starts at the first item, after TensorFlow's start-up

    def __call__(self, count: int, total: int) -> None:
        now = time.perf_counter()
        if self.start is None:
            self.start, self.first, self.last = now, count, now
        if self.quiet or (now - self.last < 0.5 and count != total):
            return
        self.last = now
        rate = (count - self.first) / (now - self.start) if now > self.start else 0.0
        eta = f" | eta {format_duration((total - count) / rate)}" if rate > 0 and count != total else ""
        line = f"{self.verb} {count}/{total} {self.unit} | {rate:.0f} {self.unit}/s{eta}"
        self.width = max(self.width, len(line))  # spaces cover what a longer earlier line left
        print(f"\r{line.ljust(self.width)}", end="", file=sys.stderr, flush=True)
        self.open_line = count != total
        if count == total:
            print(file=sys.stderr)

    def close(self) -> None:
        """End a line left open by an interruption, so the next message starts on its own line."""
        if self.open_line:
            print(file=sys.stderr)
            self.open_line = False
