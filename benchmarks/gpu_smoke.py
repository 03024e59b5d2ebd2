"""The first run on a machine with GPUs: does distface train there, how fast, in how much memory.

    .venv/bin/python benchmarks/gpu_smoke.py [--out summary.json] [--budget-s 480] [--set KEY=VALUE ...]

Five parts, each in its own processes, within --budget-s seconds in all:
- single, mirrored: one step of each in-process engine over the visible GPUs, built as a run builds it (Session:
  iresnet50, sharded ArcFace, synthetic faces, batch 64 per GPU), with soft device placement off (an op pinned to a
  GPU without a GPU kernel fails) and the placement logged: a step op placed anywhere but on a GPU fails the part;
- sharded_head: benchmarks/sharded_head.py's head step at 1 M identities over every GPU, with each GPU's peak memory;
- precision: iresnet50's step time on one GPU in bfloat16 and float16 against float32 (train.mixed_precision);
- horovod: where Horovod has NCCL, a step of the horovod engine (a rank per GPU) and a 64 MiB all-reduce, timed.
It prints one JSON object (also to --out): TensorFlow's version, the GPUs, each part's status and figures; exit code
1 when a part failed. Without a GPU it refuses, before any work, with one line and exit code 2.
Written on a CPU-only machine, it has never run on a GPU: tests/test_gpu_smoke.py runs its CPU-side logic, and each
part small on the CPU.
"""
import argparse
import contextlib
import ctypes
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
from collections import Counter
from pathlib import Path

# Planned seconds of each part, in the order they run: guesses until a GPU run replaces them (7.25 minutes in all).
PARTS = {"single": 60, "mirrored": 75, "sharded_head": 60, "precision": 150, "horovod": 90}
LOGGED = ("single", "mirrored")  # the parts whose step's device placement is logged and checked
STEP = ["data.source=synthetic", "model.backbone=iresnet50", "model.image_size=[112, 112]",
        "model.embedding_size=512", "data.batch_size=64"]
WARMUP, TIMED = 3, 10
ALLREDUCE_BYTES = 64 * 2 ** 20
RESULT = "gpu_smoke-result "  # a part's report: this prefix and its JSON, the last line it prints
STEP_BEGINS = "gpu_smoke-step-begins"  # the placement log of the logged step follows this line
# What TensorFlow's placer prints for each op of a function: "name: (OpType): /job:.../device:GPU:0"
PLACED = re.compile(r"^(\S+): \((\w+)\): /job:\S+/device:([A-Z_]+):\d+$")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/gpu_smoke.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", help="also write the JSON summary to this file")
    p.add_argument("--budget-s", type=float, default=480.0, help="wall time of all parts together (default 480)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override the steps' config, e.g. --set data.batch_size=32 (repeatable)")
    p.add_argument("--head-classes", type=int, default=1_000_000, help="identities of the sharded head part")
    p.add_argument("--part", choices=list(PARTS), help=argparse.SUPPRESS)  # run one part in this process
    args = p.parse_args(argv)
    if args.budget_s <= 0:
        p.error(f"--budget-s must be > 0, got {args.budget_s:g}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.part:
        return run_part(args)
    deadline = time.monotonic() + args.budget_s  # TensorFlow's start-up here counts too
    gpus, tf_version, cuda_build, log = visible_gpus()
    if not gpus:
        print(refusal(tf_version, cuda_build, log), file=sys.stderr)
        return 2
    sys.stderr.write(log)
    doc, code = summary(tf_version, gpus, run_parts(args, len(gpus), deadline))
    text = json.dumps(doc, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return code


# -- this process: the GPUs, the budget, the parts' processes, the summary ---------------------------------------------

def visible_gpus() -> tuple[list[dict], str, bool, str]:
    """The GPUs, TensorFlow's version, whether it is a CUDA build, and its start-up log (held back: a refusal is one
    line). Only physical devices are read; TensorFlow's runtime is not started here: the parts need the GPUs' memory."""
    with stderr_captured() as log:
        import tensorflow as tf

        details = [tf.config.experimental.get_device_details(gpu) for gpu in tf.config.list_physical_devices("GPU")]
    gpus = [{"name": d.get("device_name"), "compute_capability": d.get("compute_capability")} for d in details]
    return gpus, tf.__version__, tf.test.is_built_with_cuda(), log.text


@contextlib.contextmanager
def stderr_captured():
    """What the block writes to file descriptor 2 (TensorFlow's C++ logging bypasses sys.stderr), in `.text`."""
    captured, saved = types.SimpleNamespace(text=""), os.dup(2)
    sys.stderr.flush()
    with tempfile.TemporaryFile("w+") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.text = tmp.read()


def refusal(tf_version: str, cuda_build: bool, log: str) -> str:
    """The one line printed without a GPU: TensorFlow's build, CUDA_VISIBLE_DEVICES when set, its last error line."""
    why = [f"TensorFlow {tf_version} {'built with CUDA' if cuda_build else 'without CUDA'}"]
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        why.append(f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r}")
    why += [line.split("] ", 1)[-1] for line in log.splitlines() if re.match(r"E\d{4} ", line)][-1:]
    return f"gpu_smoke: no GPU visible to TensorFlow ({'; '.join(why)}); this script is for a machine with GPUs"


def part_timeout(left_s: float, need_s: float, later_need_s: float) -> float | None:
    """Seconds a part may run: its plan at least, and whatever the parts after it do not need; None (not started)
    when less than its plan is left, so a short budget drops the last parts rather than starving each."""
    return None if left_s < need_s else max(need_s, left_s - later_need_s)


def run_parts(args, gpus: int, deadline: float) -> dict:
    results = {}
    for i, (name, need) in enumerate(PARTS.items()):
        left = deadline - time.monotonic()
        timeout = part_timeout(left, need, sum(list(PARTS.values())[i + 1:]))
        missing = horovod_missing() if name == "horovod" else None
        if missing:
            results[name] = {"status": "skipped", "nccl_built": False, "reason": missing}
        elif timeout is None:
            results[name] = {"status": "failed", "error": f"not started: {left:.0f} s left, {need} s planned"}
        else:
            try:
                results[name] = run_process(name, part_command(name, args, gpus), timeout)
            except Exception as err:  # one part's failure is reported; the others still run
                results[name] = {"status": "failed", "error": one_line(err)}
    return results


def horovod_missing() -> str | None:
    try:
        import horovod.tensorflow as hvd
    except ImportError as err:
        return f"horovod.tensorflow does not import: {err}"
    return None if hvd.nccl_built() else "Horovod was built without NCCL (launch/setup.sh: DISTFACE_HOROVOD_GPU)"


def part_command(name: str, args, gpus: int) -> list[str]:
    command = [sys.executable, os.path.abspath(__file__), "--part", name, "--head-classes", str(args.head_classes),
               *(f"--set={item}" for item in args.set)]
    if name != "horovod":
        return command
    return horovod_command(shutil.which("horovodrun", path=os.path.dirname(sys.executable)) or "horovodrun",
                           gpus) + command


def horovod_command(horovodrun: str, ranks: int) -> list[str]:
    """One rank per GPU on this machine, started by Gloo (launch/setup.sh builds Horovod without MPI)."""
    return [horovodrun, "-np", str(ranks), "-H", f"localhost:{ranks}", "--gloo"]


def run_process(name: str, command: list[str], timeout: float) -> dict:
    started = time.monotonic()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as proc:
        try:
            result = part_result(name, *proc.communicate(timeout=timeout), proc.returncode)
        except subprocess.TimeoutExpired:
            # Its process group (horovodrun's ranks run in sessions of their own, which Horovod ends when horovodrun
            # dies); not read to the end, as one of those may hold the pipes a few seconds longer.
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            result = {"status": "failed", "error": f"timed out after {timeout:.0f} s"}
    return {**result, "seconds": round(time.monotonic() - started, 1)}


def part_result(name: str, stdout: str, stderr: str, returncode: int) -> dict:
    """A part's summary entry from its output: its report (a failed rank's first; horovodrun prefixes each rank's
    lines), the placement check of a logged step, or the process's last words."""
    reports = [json.loads(line.split(RESULT, 1)[1]) for line in stdout.splitlines() if RESULT in line]
    last_words = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "nothing on stderr")
    if not reports:
        return {"status": "failed", "error": f"exit code {returncode}: {last_words}"}
    result = next((report for report in reports if "error" in report), reports[-1])
    if name in LOGGED and "error" not in result:
        devices, off = placement(stdout)
        result["placement"] = {"ops_by_device": devices, "off_gpu": off[:50]}
        if not devices:
            result["error"] = "no device placement was logged for the step"
        elif off:
            result["error"] = f"{len(off)} step ops placed off the GPU, e.g. {', '.join(off[:3])}"
    if returncode and "error" not in result:  # e.g. another Horovod rank failed
        result["error"] = f"exit code {returncode}: {last_words}"
    return {"status": "failed" if "error" in result else "passed", **result}


def placement(stdout: str) -> tuple[dict, list[str]]:
    """The logged step's ops by device type, and those not on a GPU. Left out: the runtime's plumbing (types that start
    with "_": arguments, return values, transfers sit where their tensors live) and function calls (their ops are
    placed, and logged, one by one)."""
    devices, off = Counter(), []
    for match in map(PLACED.match, stdout.partition(STEP_BEGINS)[2].splitlines()):
        if match and not match[2].startswith("_") and not match[2].endswith("PartitionedCall"):
            devices[match[3]] += 1
            if match[3] != "GPU":
                off.append(f"{match[1]} ({match[2]} on {match[3]})")
    return dict(devices), off


def summary(tf_version: str, gpus: list[dict], results: dict) -> tuple[dict, int]:
    """The printed JSON and the exit code: 1 when a part failed (a skipped part, Horovod without NCCL, is none)."""
    failed = [name for name, result in results.items() if result["status"] == "failed"]
    return {"tensorflow": tf_version, "gpus": gpus, "failed": failed, "parts": results}, int(bool(failed))


def one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:500]


# -- a part's process --------------------------------------------------------------------------------------------------

def run_part(args) -> int:
    import tensorflow as tf

    # Set before TensorFlow's context exists: functions are placed with the settings it started with.
    tf.config.set_soft_device_placement(False)
    tf.debugging.set_log_device_placement(args.part in LOGGED)
    part = {"single": engine_step, "mirrored": engine_step, "sharded_head": sharded_head_step,
            "precision": precision_steps, "horovod": horovod_step}[args.part]
    try:
        result = part(args)
    except Exception as err:  # its text goes to the summary
        result = {"error": one_line(err)}
    if result is not None:
        say(RESULT + json.dumps(result))
    return int(result is not None and "error" in result)


def say(line: str) -> None:
    """A line on stdout after what TensorFlow's C++ code has buffered there (the placement log)."""
    ctypes.CDLL(None).fflush(None)
    print(line, flush=True)


@contextlib.contextmanager
def session(args, *overrides: str):
    """A run's Session on synthetic faces in a throw-away folder (it writes its config and the ORL pairs there)."""
    from distface.checked_config import load_config
    from distface.training.session import Session

    with tempfile.TemporaryDirectory() as out_dir:
        yield Session(load_config(None, [*STEP, *args.set, *overrides, f"train.out_dir={out_dir}"]), quiet=True)


def finite(loss) -> float:
    value = float(loss)  # waits for the step
    if not math.isfinite(value):
        raise FloatingPointError(f"the step's loss is {value}")
    return value


def engine_step(args) -> dict:
    with session(args, f"train.strategy={args.part}") as run:
        batch = next(run.dataset)
        say(STEP_BEGINS)
        return {"loss": finite(run.trainer.train_step(*batch).scalars["loss"]), "replicas": run.runtime.num_replicas}


def horovod_step(args) -> dict | None:
    """A step of the horovod engine, then 64 MiB of ones all-reduced (SUM) from each rank's GPU; rank 0 reports."""
    import horovod.tensorflow as hvd
    import tensorflow as tf

    result = engine_step(args)
    ones = tf.ones([ALLREDUCE_BYTES // 4])
    hvd.allreduce(ones, op=hvd.Sum)  # the first sets up the communicators
    start = time.perf_counter()
    for _ in range(TIMED):
        total = hvd.allreduce(ones, op=hvd.Sum)
    if float(total[0]) != hvd.size():
        raise ArithmeticError(f"the all-reduce SUM of ones over {hvd.size()} ranks gave {float(total[0])}")
    seconds = (time.perf_counter() - start) / TIMED
    bus = ALLREDUCE_BYTES / seconds * 2 * (hvd.size() - 1) / hvd.size() / 1e9  # a ring's per-link traffic (nccl-tests)
    return {**result, "nccl_built": bool(hvd.nccl_built()), "allreduce_ms": seconds * 1e3,
            "bus_gb_s": bus} if hvd.rank() == 0 else None


def sharded_head_step(args) -> dict:
    """sharded_head.py's measure (the Trainer's head step, its matmul limit, peaks) over every GPU. This process is
    fresh, so a GPU's peak since it started is this configuration's."""
    import tensorflow as tf

    import sharded_head  # this script's folder is first on sys.path

    result = sharded_head.measure(argparse.Namespace(
        one_classes=args.head_classes, one_sharding="sharded", one_rate=1.0, engine="mirrored", dim=512, batch=64,
        replicas=max(len(tf.config.list_physical_devices("GPU")), 1), steps=5, head_update="dense",
        backbone="none", xla=False, optimizer="sgd"))
    return {**result, "classes": args.head_classes, "gpu_peak_bytes": [
        tf.config.experimental.get_memory_info(gpu.name)["peak"] for gpu in tf.config.list_logical_devices("GPU")]}


def precision_steps(args) -> dict:
    """Seconds per single-engine step on one fixed batch after warm-up, per mixed-precision mode; ratios to float32."""
    seconds = {}
    for mode, name in (("none", "float32"), ("bfloat16", "bfloat16"), ("float16", "float16")):
        with session(args, "train.strategy=single", f"train.mixed_precision={mode}") as run:
            batch = next(run.dataset)
            for _ in range(WARMUP):
                finite(run.trainer.train_step(*batch).scalars["loss"])
            start = time.perf_counter()
            for _ in range(TIMED):
                loss = run.trainer.train_step(*batch).scalars["loss"]
            finite(loss)
            seconds[name] = (time.perf_counter() - start) / TIMED
    return {"step_s": seconds, "vs_float32": {k: seconds[k] / seconds["float32"] for k in ("bfloat16", "float16")}}


if __name__ == "__main__":
    sys.exit(main())
