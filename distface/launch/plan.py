"""What runs where: the commands of a job, built from the launcher's options. Nothing is started here.

A Job is the list of every process the job needs (one per node for tf.distribute workers, one horovodrun for all
Horovod ranks) and which of them this invocation starts: --dry-run prints them all, a run starts its own.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import sys
from dataclasses import dataclass, field

from distface.launch.errors import LaunchError
from distface.parallel import STRATEGIES

ENGINES = tuple(name for name in STRATEGIES if name != "auto")  # the launcher resolves auto itself (cli.py)
DEFAULT_PORT = 23456
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
CONTROLLERS = {"gloo": "Gloo", "mpi": "MPI"}


@dataclass(frozen=True)
class Command:
    title: str  # "worker 1 on gpu02", "horovodrun", ...
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # set on top of the launcher's own environment
    address: tuple[str, int] | None = None  # a tf.distribute worker's host and port

    def shell(self) -> str:
        """The command as one shell line, environment assignments first."""
        return " ".join([f"{k}={shlex.quote(v)}" for k, v in self.env.items()] + [shlex.quote(a) for a in self.argv])


@dataclass(frozen=True)
class Job:
    summary: str  # one line: what the job is and how to start it
    commands: list[Command]
    here: list[int]  # indices of the commands this invocation starts

    def describe(self, everything: bool = True) -> str:
        shown = range(len(self.commands)) if everything else self.here
        lines = [f"# {self.summary}"]
        for i in shown:
            command = self.commands[i]
            if len(self.commands) > 1:
                lines.append(f"# {command.title}")
            lines.append(command.shell())
        return "\n".join(lines)

    def remote_here(self) -> bool:
        """Whether this invocation would start a worker that belongs on another host."""
        return any(self.commands[i].address and not is_local(self.commands[i].address[0]) for i in self.here)

    def peers(self) -> list[tuple[str, int]]:
        """Addresses of the workers started elsewhere (by their own launchers)."""
        return [c.address for i, c in enumerate(self.commands) if i not in self.here and c.address]


def is_local(host: str) -> bool:
    return host in LOCAL_HOSTS or host == socket.gethostname()


def program(name: str) -> str:
    """How to call a program: its bare name when PATH finds this very file (so printed commands read as typed),
    else its full path. Looked up beside this interpreter first, so an unactivated virtualenv works."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    path = sys.executable if name == "python" else (beside if os.access(beside, os.X_OK) else shutil.which(name))
    if path is None:
        return name
    found = shutil.which(name)
    return name if found and os.path.abspath(found) == os.path.abspath(path) else path


def train_command(module: str, engine: str, train_args: list[str]) -> list[str]:
    return [program("python"), "-m", module, "--strategy", engine, *train_args]


def parse_hosts(text: str, option: str = "--hosts") -> list[tuple[str, int]]:
    """"a:8,b:8" -> [("a", 8), ("b", 8)]; a host without ":slots" has 1 slot (as horovodrun counts)."""
    hosts = []
    for item in text.split(","):
        host, sep, slots = item.strip().partition(":")
        if not host or (sep and not slots.isdigit()) or (sep and int(slots) < 1):
            raise LaunchError(f"{option}: expected host:slots[,host:slots...], got {text!r}")
        hosts.append((host, int(slots) if sep else 1))
    return hosts


def read_hostfile(path: str) -> list[tuple[str, int]]:
    """Horovod's hostfile: one "host slots=N" per line, # comments."""
    try:
        lines = open(path).read().splitlines()
    except OSError as err:
        raise LaunchError(f"--hostfile: cannot read {path}: {err.strerror}") from None
    hosts = []
    for number, line in enumerate(lines, 1):
        words = line.split("#")[0].split()
        if not words:
            continue
        slots = [w.partition("=")[2] for w in words[1:] if w.startswith("slots=")]
        if len(words) > 2 or len(words) != 1 + len(slots) or (slots and not slots[0].isdigit()):
            raise LaunchError(f"--hostfile: {path}:{number}: expected 'host slots=N', got {line.strip()!r}")
        hosts.append((words[0], int(slots[0]) if slots else 1))
    if not hosts:
        raise LaunchError(f"--hostfile: {path} lists no hosts")
    return hosts


def parse_workers(text: str) -> list[tuple[str, int]]:
    """"a:23456,b:23456" -> [("a", 23456), ("b", 23456)]."""
    workers = []
    for item in text.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise LaunchError(f"--workers: expected host:port[,host:port...], got {text!r}")
        workers.append((host, int(port)))
    if len(set(workers)) != len(workers):
        raise LaunchError(f"--workers: the same host:port appears twice in {text!r}")
    return workers


def free_ports(count: int) -> list[int]:
    """Ports free on this machine now (held open together, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(workers: list[tuple[str, int]], index: int) -> str:
    """The TF_CONFIG of worker `index` of a MultiWorkerMirroredStrategy cluster (worker 0 is the chief)."""
    cluster = {"worker": [f"{host}:{port}" for host, port in workers]}
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}, separators=(",", ":"))


def visible_gpus(gpus: int | None, local_index: int) -> dict[str, str]:
    """CUDA_VISIBLE_DEVICES for the local_index-th process of a node that gives each process `gpus` GPUs."""
    if not gpus:
        return {}
    return {"CUDA_VISIBLE_DEVICES": ",".join(str(local_index * gpus + g) for g in range(gpus))}


def horovod_job(hosts: list[tuple[str, int]], np: int | None, hostfile: str | None, controller: str,
                module: str, train_args: list[str], env: dict[str, str]) -> Job:
    slots = sum(s for _, s in hosts)
    np = np or slots
    if np > slots:
        raise LaunchError(f"--np {np} is more than the {slots} slots of {format_hosts(hosts)}")
    where = ["-hostfile", hostfile] if hostfile else ["-H", format_hosts(hosts)]
    argv = [program("horovodrun"), "-np", str(np), *where, f"--{controller}",
            *train_command(module, "horovod", train_args)]
    remote = any(h not in LOCAL_HOSTS for h, _ in hosts)
    how = ("run this on one of them: horovodrun starts every rank (over ssh on the other hosts)" if remote
           else "horovodrun starts every rank on this machine")
    summary = f"horovod: {np} processes on {format_hosts(hosts)} ({CONTROLLERS[controller]}); {how}"
    return Job(summary, [Command("horovodrun", argv, env)], [0])


def format_hosts(hosts: list[tuple[str, int]]) -> str:
    return ",".join(f"{h}:{s}" for h, s in hosts)


def multiworker_job(workers: list[tuple[str, int]], index: int | None, gpus: int | None, module: str,
                    train_args: list[str], env: dict[str, str], how: str) -> Job:
    """One command per worker; this invocation starts worker `index`, or every worker when None."""
    if index is not None and not 0 <= index < len(workers):
        raise LaunchError(f"--worker-index {index}: the cluster has workers 0..{len(workers) - 1}")
    commands = []
    for i, (host, port) in enumerate(workers):
        local_index = sum(1 for h, _ in workers[:i] if h == host)  # its place among the workers of its node
        worker_env = {"TF_CONFIG": tf_config(workers, i), **visible_gpus(gpus, local_index), **env}
        commands.append(Command(f"worker {i} on {host}", train_command(module, "multiworker", train_args),
                                worker_env, (host, port)))
    here = list(range(len(workers))) if index is None else [index]
    return Job(f"multiworker: {len(workers)} workers, {how}", commands, here)


def single_process_job(engine: str, gpus: int | None, module: str, train_args: list[str],
                       env: dict[str, str]) -> Job:
    what = {"single": "one process, one device",
            "mirrored": f"one process, MirroredStrategy over {gpus or 'all visible'} GPUs"}[engine]
    command = Command(engine, train_command(module, engine, train_args), {**visible_gpus(gpus, 0), **env})
    return Job(f"{engine}: {what}", [command], [0])
