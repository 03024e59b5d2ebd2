"""Start a job's local processes and watch them: the first failure stops the others and becomes the exit code.

Never hangs on a dead peer: a local worker that exits non-zero or is killed ends the job at once; a worker on
another node (started by its own launcher) that never opens its port ends it after --start-timeout (once running,
tf.distribute's heartbeats notice a dead peer within seconds).
"""
from __future__ import annotations

import collections
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

from distface.console import START_UP_NOTE
from distface.launch.plan import Job

GRACE_S = 10.0  # after SIGTERM, before SIGKILL
FIRST_RANK = re.compile(r"^Process name: (\d+)$")


class Worker:
    """One child process (in its own process group) whose stderr is forwarded line by line and remembered, less
    TensorFlow's start-up notes from horovodrun itself (which imports it) unless the job runs with --verbose."""

    def __init__(self, title: str, argv: list[str], env: dict[str, str], prefix: str):
        self.title = title
        self.quiet = "--verbose" not in argv
        self.proc = subprocess.Popen(argv, env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        self.tail: collections.deque[str] = collections.deque(maxlen=200)
        self.pump = threading.Thread(target=self._forward, args=(prefix,), daemon=True)
        self.pump.start()

    def _forward(self, prefix: str) -> None:
        for raw in self.proc.stderr:
            if self.quiet and START_UP_NOTE.match(raw):
                continue
            line = raw.decode(errors="replace").rstrip("\n")
            if line.strip():
                self.tail.append(line)
            sys.stderr.write(f"{prefix}{line}\n")
            sys.stderr.flush()

    def _first_rank_error(self) -> list[str]:
        """horovodrun ends with its own traceback naming the first rank that failed ("Process name: 1"); that
        rank's stderr lines ("[1]<stderr>:...") say why."""
        named = [m.group(1) for m in map(FIRST_RANK.search, self.tail) if m]
        if not named:
            return []
        prefix = f"[{named[-1]}]<stderr>:"
        return [f"rank {named[-1]}: {line[len(prefix):]}" for line in self.tail if line.startswith(prefix)]

    def signal(self, signum: int) -> None:
        try:
            os.killpg(self.proc.pid, signum)  # the group: horovodrun's ranks and any helpers go too
        except ProcessLookupError:
            pass

    def error(self) -> str:
        code = self.proc.returncode
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        self.pump.join(timeout=2)
        last = (self._first_rank_error() or list(self.tail) or ["(no error output)"])[-1].strip()
        return f"{self.title} (pid {self.proc.pid}) {how}: {last}"


def _wait_for_peers(peers: list[tuple[str, int]], timeout: float, stop: threading.Event, failed: list[str]) -> None:
    """Record a failure if some peer's port stays closed for `timeout` seconds."""
    pending, deadline, last_error = list(peers), time.monotonic() + timeout, {}
    while pending and not stop.is_set():
        for peer in list(pending):
            try:
                socket.create_connection(peer, timeout=1.0).close()
                pending.remove(peer)
            except OSError as err:
                last_error[peer] = err.strerror or str(err)
        if pending and time.monotonic() > deadline:
            missing = ", ".join(f"{h}:{p} ({last_error[(h, p)]})" for h, p in pending)
            failed.append(f"no worker answered at {missing} within {timeout:.0f} s: is its launcher running, "
                          f"and can this node reach it?")
            return
        stop.wait(0.5)


def run(job: Job, start_timeout: float) -> int:
    """Run this node's share of the job; returns the exit code (the first failure's, else 0)."""
    many = len(job.here) > 1
    workers: list[Worker] = []
    failed: list[str] = []
    stop = threading.Event()
    interrupted: list[int] = []

    def on_signal(signum, _frame):
        interrupted.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for i in job.here:
            c = job.commands[i]
            workers.append(Worker(c.title, c.argv, c.env, f"[{c.title.split(' on ')[0]}] " if many else ""))
        threading.Thread(target=_wait_for_peers, args=(job.peers(), start_timeout, stop, failed),
                         daemon=True).start()
        code = None
        while code is None:
            time.sleep(0.2)
            bad = [w for w in workers if w.proc.poll() not in (None, 0)]
            if bad:
                failed.append(bad[0].error())
                code = bad[0].proc.returncode if bad[0].proc.returncode > 0 else 128 - bad[0].proc.returncode
            elif failed:
                code = 1
            elif interrupted:
                failed.append(f"stopped by {signal.Signals(interrupted[0]).name}")
                code = 128 + interrupted[0]
            elif all(w.proc.poll() == 0 for w in workers):
                code = 0
    finally:
        stop.set()
        _stop_all(workers)
        for w in workers:
            w.pump.join(timeout=2)
        for s, handler in previous.items():
            signal.signal(s, handler)
    if failed:
        print(f"launch: {failed[0]}", file=sys.stderr, flush=True)
    return code


def _stop_all(workers: list[Worker]) -> None:
    running = [w for w in workers if w.proc.poll() is None]
    for w in running:
        w.signal(signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    for w in running:
        try:
            w.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            w.signal(signal.SIGKILL)
            w.proc.wait()
