"""distface launch [options] [--] [distface.train arguments]

Starts distface.train on one machine or many: Horovod ranks (horovodrun, Gloo or MPI), one process with
MirroredStrategy over this machine's GPUs, MultiWorkerMirroredStrategy workers (TF_CONFIG per worker, from
--workers or a SLURM allocation), or the single-device debug mode. Arguments after -- (and any this launcher does
not know) go to `python -m distface.train`; the engine is passed as --strategy. --dry-run prints what each node
would run and starts nothing. --verbose among the training arguments shows TensorFlow's own log lines, horovodrun's
included.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

from distface.launch import plan, slurm, supervise
from distface.launch.errors import LaunchError


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="distface launch", description=__doc__.split("\n\n")[1].replace("\n", " "),
                                allow_abbrev=False)
    p.add_argument("--engine", choices=("auto",) + plan.ENGINES, default="auto",
                   help="auto: horovod with --hosts, --hostfile or --np; multiworker with --workers; mirrored "
                        "with --gpus > 1; else single")
    p.add_argument("--np", type=int, help="processes: Horovod ranks (default: the hosts' slots, or --gpus), or "
                                          "local multiworker workers")
    p.add_argument("--gpus", type=int, help="GPUs per node: mirrored uses this many; Horovod runs one rank per GPU; "
                                            "each multiworker worker gets this many (CUDA_VISIBLE_DEVICES)")
    p.add_argument("--module", default="distface.train", help="Python module to run (default: distface.train)")
    p.add_argument("-x", "--env", action="append", default=[], metavar="NAME[=VALUE]",
                   help="environment variable for every process (NAME alone: its value here); repeatable")
    p.add_argument("--dry-run", action="store_true", help="print what each node would run; start nothing")
    hvd = p.add_argument_group("Horovod across machines")
    hosts = hvd.add_mutually_exclusive_group()
    hosts.add_argument("--hosts", help="host:slots,... (horovodrun -H), e.g. node1:8,node2:8")
    hosts.add_argument("--hostfile", help="Horovod hostfile: one 'host slots=N' per line")
    controller = hvd.add_mutually_exclusive_group()
    controller.add_argument("--gloo", dest="controller", action="store_const", const="gloo",
                            help="Gloo controller (default; built into distface's Horovod)")
    controller.add_argument("--mpi", dest="controller", action="store_const", const="mpi",
                            help="MPI controller (needs mpirun and Horovod built with MPI)")
    tfd = p.add_argument_group("MultiWorkerMirroredStrategy across machines")
    cluster = tfd.add_mutually_exclusive_group()
    cluster.add_argument("--workers", help="host:port of every worker, in order (worker 0 is the chief)")
    cluster.add_argument("--slurm", action="store_true",
                         help="take the nodes and this task's rank from SLURM (SLURM_JOB_NODELIST, SLURM_NTASKS, "
                              "SLURM_PROCID); also gives Horovod its hosts")
    tfd.add_argument("--worker-index", type=int, help="which of --workers this node runs (default: all, "
                                                      "when every worker is on this machine)")
    tfd.add_argument("--port", type=int, default=plan.DEFAULT_PORT,
                     help=f"--slurm: port of a node's first worker (default {plan.DEFAULT_PORT})")
    tfd.add_argument("--start-timeout", type=float, default=300.0,
                     help="seconds to wait for the workers on other nodes to open their ports (default 300)")
    if argv is None:
        argv = sys.argv[1:]
    ours, rest = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    opts, unknown = p.parse_known_args(ours)
    return opts, unknown + rest


def environment(specs: list[str], env: dict[str, str]) -> dict[str, str]:
    out = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not name.isidentifier():
            raise LaunchError(f"-x {spec!r}: expected NAME or NAME=VALUE")
        if not sep and name not in env:
            raise LaunchError(f"-x {name}: not set here; pass -x {name}=VALUE")
        out[name] = value if sep else env[name]
    return out


def choose_engine(o: argparse.Namespace) -> str:
    if o.engine != "auto":
        return o.engine
    if o.slurm:
        raise LaunchError("--slurm: choose --engine multiworker (one launcher per task, under srun) or "
                          "--engine horovod (one launcher per job)")
    if o.hosts or o.hostfile:
        return "horovod"
    if o.workers:
        return "multiworker"
    if o.np and o.np > 1:
        return "horovod"
    return "mirrored" if o.gpus and o.gpus > 1 else "single"


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise LaunchError(message)


def build_job(o: argparse.Namespace, train_args: list[str], env: dict[str, str]) -> plan.Job:
    """The job these options describe (validated; nothing is started)."""
    _check("--strategy" not in train_args and not any(a.startswith("--strategy=") for a in train_args),
           "choose the engine with --engine, not --strategy (the launcher passes --strategy itself)")
    for name in ("np", "gpus"):
        _check(getattr(o, name) is None or getattr(o, name) >= 1, f"--{name}: must be >= 1")
    engine = choose_engine(o)
    extra_env = environment(o.env, env)
    horovod_only = dict(hosts=o.hosts, hostfile=o.hostfile, controller=o.controller)
    worker_only = {"workers": o.workers, "worker-index": o.worker_index}
    if engine != "horovod":
        for name, value in horovod_only.items():
            _check(value is None, f"--{name} is for --engine horovod, not {engine}")
    if engine != "multiworker":
        for name, value in worker_only.items():
            _check(value is None, f"--{name} is for --engine multiworker, not {engine}")
    if engine in ("single", "mirrored"):
        _check(not o.slurm, f"--slurm is for --engine multiworker or horovod, not {engine}")
        _check(o.np is None, f"--np is for horovod or multiworker; {engine} is one process")
        _check(engine == "mirrored" or (o.gpus or 1) == 1, "single runs on one device: use --engine mirrored "
                                                           "or horovod for more GPUs")
        return plan.single_process_job(engine, o.gpus, o.module, train_args, extra_env)
    if engine == "horovod":
        if o.slurm:
            _check(o.hosts is None and o.hostfile is None, "--slurm gives the hosts; drop --hosts/--hostfile")
            _check(slurm.procid(env) == 0, "--engine horovod --slurm runs once per job (in the batch script, not "
                                           "under srun): horovodrun starts every rank")
            slots = o.gpus or int(env.get("SLURM_GPUS_ON_NODE", "0") or 0)
            _check(slots > 0, "--slurm with horovod: pass --gpus N (ranks per node); SLURM_GPUS_ON_NODE is not set")
            hosts = [(h, slots) for h in slurm.nodes(env)]
        elif o.hostfile:
            hosts = plan.read_hostfile(o.hostfile)
        elif o.hosts:
            hosts = plan.parse_hosts(o.hosts)
        else:
            hosts = [("localhost", o.np or o.gpus or 1)]
        return plan.horovod_job(hosts, o.np, o.hostfile, o.controller or "gloo", o.module, train_args, extra_env)
    # multiworker
    if o.slurm:
        _check(o.np is None, "--slurm gives the number of workers (SLURM_NTASKS); drop --np")
        _check(o.worker_index is None, "--slurm gives the worker index (SLURM_PROCID); drop --worker-index")
        hosts = slurm.task_hosts(env)
        workers = [(h, o.port + sum(1 for x in hosts[:i] if x == h)) for i, h in enumerate(hosts)]
        index = slurm.procid(env)
        how = "one per SLURM task (srun starts a launcher per task; task i runs worker i)"
    elif o.workers:
        _check(o.np is None, "--workers gives the number of workers; drop --np")
        workers, index = plan.parse_workers(o.workers), o.worker_index
        how = "one launcher per node, each with its --worker-index"
    else:
        _check(o.worker_index is None, "--worker-index needs --workers")
        workers, index = [("localhost", p) for p in plan.free_ports(o.np or 1)], None
        how = "all on this machine"
    return plan.multiworker_job(workers, index, o.gpus, o.module, train_args, extra_env,
                                how + "; worker 0 is the chief")


def _check_runnable(job: plan.Job) -> None:
    if len(job.here) > 1 and job.remote_here():
        raise LaunchError("--worker-index is required when workers run on other hosts: start one launcher per "
                          "worker (--dry-run prints them all)")
    first = job.commands[job.here[0]].argv[0]
    if os.sep not in first and shutil.which(first) is None:
        hint = " (Horovod: launch/setup.sh without DISTFACE_NO_HOROVOD)" if first == "horovodrun" else ""
        raise LaunchError(f"{first}: not found{hint}")
    if "--mpi" in job.commands[job.here[0]].argv and shutil.which("mpirun") is None:
        raise LaunchError("--mpi: mpirun not found; use --gloo")


def main(argv: list[str] | None = None) -> int:
    opts, train_args = parse_args(argv)
    try:
        job = build_job(opts, train_args, dict(os.environ))
        if not opts.dry_run:
            _check_runnable(job)
    except LaunchError as err:
        print(f"launch: {err}", file=sys.stderr)
        return 2
    print(job.describe(everything=opts.dry_run), flush=True)
    if opts.dry_run:
        return 0
    return supervise.run(job, opts.start_timeout)
