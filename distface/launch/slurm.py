"""Reading a SLURM allocation: node lists ("gpu[01-03,07],cpu1"), tasks per node ("2(x3),1"), this task's rank."""
from __future__ import annotations

import re
from typing import Mapping

from distface.launch.errors import LaunchError


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if depth < 0 or depth > 1:
            raise LaunchError(f"SLURM_JOB_NODELIST: unbalanced brackets in {text!r}")
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise LaunchError(f"SLURM_JOB_NODELIST: unbalanced brackets in {text!r}")
    return parts + [text[start:]]


def _expand_range(item: str, nodelist: str) -> list[str]:
    """"07" -> ["07"]; "01-03" -> ["01", "02", "03"] (zero padding kept)."""
    lo, sep, hi = item.partition("-")
    if not lo.isdigit() or (sep and not hi.isdigit()):
        raise LaunchError(f"SLURM_JOB_NODELIST: bad range {item!r} in {nodelist!r}")
    if not sep:
        return [lo]
    if int(hi) < int(lo):
        raise LaunchError(f"SLURM_JOB_NODELIST: empty range {item!r} in {nodelist!r}")
    return [str(n).zfill(len(lo)) for n in range(int(lo), int(hi) + 1)]


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compressed host list -> host names, in order: "node[01-02],gpu[1,3]" -> node01 node02 gpu1 gpu3.
    Several bracket groups in one name expand as a product ("r[1-2]n[1-2]" -> r1n1 r1n2 r2n1 r2n2)."""
    hosts: list[str] = []
    for part in _split_top(nodelist.strip()):
        if not part:
            raise LaunchError(f"SLURM_JOB_NODELIST: empty host name in {nodelist!r}")
        names = [""]
        for prefix, group in re.findall(r"([^\[\]]*)(?:\[([^\]]*)\])?", part):
            choices = [v for item in group.split(",") for v in _expand_range(item, nodelist)] if group else [""]
            names = [n + prefix + c for n in names for c in choices]
        hosts.extend(names)
    return hosts


def tasks_per_node(spec: str, num_nodes: int) -> list[int]:
    """SLURM_TASKS_PER_NODE ("2(x3),1") -> one count per node ([2, 2, 2, 1])."""
    counts: list[int] = []
    for item in spec.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item.strip())
        if not match:
            raise LaunchError(f"SLURM_TASKS_PER_NODE: cannot read {spec!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    if len(counts) != num_nodes:
        raise LaunchError(f"SLURM_TASKS_PER_NODE: {spec!r} gives {len(counts)} nodes, "
                          f"SLURM_JOB_NODELIST has {num_nodes}")
    return counts


def _int(env: Mapping[str, str], name: str) -> int:
    value = env.get(name)
    if value is None:
        raise LaunchError(f"{name} is not set: --slurm runs inside a SLURM job (sbatch, srun)")
    if not value.isdigit():
        raise LaunchError(f"{name}: expected an integer, got {value!r}")
    return int(value)


def nodes(env: Mapping[str, str]) -> list[str]:
    if "SLURM_JOB_NODELIST" not in env:
        raise LaunchError("SLURM_JOB_NODELIST is not set: --slurm runs inside a SLURM job (sbatch, srun)")
    return expand_nodelist(env["SLURM_JOB_NODELIST"])


def task_hosts(env: Mapping[str, str]) -> list[str]:
    """The host of every task of the step, by SLURM_PROCID (block distribution: a node's tasks are consecutive)."""
    hosts = nodes(env)
    ntasks = _int(env, "SLURM_NTASKS")
    if "SLURM_TASKS_PER_NODE" in env:
        counts = tasks_per_node(env["SLURM_TASKS_PER_NODE"], len(hosts))
    elif ntasks % len(hosts) == 0:
        counts = [ntasks // len(hosts)] * len(hosts)
    else:
        raise LaunchError(f"SLURM_NTASKS={ntasks} does not split evenly over {len(hosts)} nodes; "
                          "set SLURM_TASKS_PER_NODE")
    placed = [host for host, count in zip(hosts, counts) for _ in range(count)]
    if len(placed) != ntasks:
        raise LaunchError(f"SLURM_NTASKS={ntasks} but SLURM_TASKS_PER_NODE places {len(placed)} tasks")
    return placed


def procid(env: Mapping[str, str]) -> int:
    return _int(env, "SLURM_PROCID")
