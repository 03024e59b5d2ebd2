"""benchmarks/gpu_smoke.py on a machine without GPUs: the refusal, the arguments, the budget, the summary, and each
part run small on the CPU through the same processes and reports a GPU run uses (the engine step's placement log is
read from TensorFlow's real output: every op on the CPU, so the check fails it)."""
import importlib.util
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tensorflow as tf

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_smoke.py"
_spec = importlib.util.spec_from_file_location("gpu_smoke", SCRIPT)
smoke = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(smoke)

SMALL = ["--set=model.backbone=debug", "--set=model.image_size=[56, 48]", "--set=data.batch_size=8",
         "--set=model.embedding_size=128"]
HOROVODRUN = shutil.which("horovodrun", path=os.path.dirname(sys.executable))


def run_small(name: str, *extra: str, gpus: int = 1, timeout: float = 240) -> dict:
    return smoke.run_process(name, smoke.part_command(name, smoke.parse_args([*SMALL, *extra]), gpus), timeout)


def test_without_a_gpu_it_refuses_in_one_line(tmp_path):
    out = tmp_path / "summary.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})  # no GPU, on any machine
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1, proc.stderr  # TensorFlow's start-up lines are held back
    line = proc.stderr.strip()
    assert line.startswith(f"gpu_smoke: no GPU visible to TensorFlow (TensorFlow {tf.__version__} ")
    assert "CUDA_VISIBLE_DEVICES=''" in line and line.endswith("; this script is for a machine with GPUs")
    assert not out.exists()


def test_refusal_names_tensorflows_last_error():
    log = ("I0000 00:00:1.0 port.cc:153] oneDNN custom operations are on.\n"
           "E0000 00:00:2.0 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)\n")
    line = smoke.refusal("2.21.0", True, log)
    assert "(TensorFlow 2.21.0 built with CUDA" in line and "; failed call to cuInit: UNKNOWN ERROR (303))" in line
    assert "oneDNN" not in smoke.refusal("2.21.0", False, log) and "without CUDA" in smoke.refusal("2.21.0", False, "")


def test_arguments():
    args = smoke.parse_args([])
    assert (args.out, args.budget_s, args.set, args.head_classes, args.part) == (None, 480.0, [], 1_000_000, None)
    args = smoke.parse_args(["--out", "s.json", "--budget-s", "300", "--set", "a.b=1", "--set=c.d=[1, 2]"])
    assert (args.out, args.budget_s, args.set) == ("s.json", 300.0, ["a.b=1", "c.d=[1, 2]"])
    for bad in (["--budget-s", "0"], ["--part", "everything"], ["--head-classes", "many"]):
        with pytest.raises(SystemExit) as stop:
            smoke.parse_args(bad)
        assert stop.value.code == 2


def test_part_commands():
    args = smoke.parse_args(["--head-classes", "5000", "--set", "data.batch_size=32"])
    own = [sys.executable, str(SCRIPT), "--part", "precision", "--head-classes", "5000", "--set=data.batch_size=32"]
    assert smoke.part_command("precision", args, 4) == own
    assert smoke.horovod_command("/venv/bin/horovodrun", 4) == ["/venv/bin/horovodrun", "-np", "4", "-H", "localhost:4",
                                                                 "--gloo"]
    horovod = smoke.part_command("horovod", args, 4)
    assert horovod[0].endswith("horovodrun") and horovod[1:6] == ["-np", "4", "-H", "localhost:4", "--gloo"]
    assert horovod[6:] == own[:3] + ["horovod"] + own[4:]


def test_the_budget_holds_even_when_every_part_overruns():
    needs = list(smoke.PARTS.values())
    assert sum(needs) <= smoke.parse_args([]).budget_s  # the default budget starts every part
    assert smoke.part_timeout(480, 60, 375) == 105  # its plan and the slack the later parts leave
    assert smoke.part_timeout(100, 60, 375) == 60  # at least its plan: the later parts are dropped instead
    assert smoke.part_timeout(59, 60, 0) is None
    for budget in (480, 400, 200, 30):
        left, started = budget, 0
        for i, need in enumerate(needs):
            timeout = smoke.part_timeout(left, need, sum(needs[i + 1:]))
            if timeout is not None:  # the part runs into its timeout
                left, started = left - timeout, started + 1
            assert left >= 0
        assert started == len(needs) if budget >= sum(needs) else started < len(needs)


def test_a_spent_budget_starts_no_part():
    results = smoke.run_parts(smoke.parse_args([]), 2, deadline=time.monotonic() + 1)
    for name in ("single", "mirrored", "sharded_head", "precision"):
        assert results[name]["status"] == "failed" and results[name]["error"].startswith("not started: ")
    missing = smoke.horovod_missing()  # Horovod without NCCL is skipped whatever the budget
    assert results["horovod"]["status"] == ("skipped" if missing else "failed")
    assert smoke.summary("2.21.0", [], results)[1] == 1


def test_a_part_over_its_time_is_killed_with_its_children(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    code = ("import subprocess, sys, time\n"
            f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
            "time.sleep(120)\n")
    result = smoke.run_process("single", [sys.executable, "-c", code], timeout=3)
    assert result["status"] == "failed" and result["error"] == "timed out after 3 s" and result["seconds"] < 30
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{grandchild}").exists():
        time.sleep(0.1)  # killed; init reaps it
    assert not Path(f"/proc/{grandchild}").exists()


def placed(name: str, op: str, device: str) -> str:
    return f"{name}: ({op}): /job:localhost/replica:0/task:0/device:{device}:0"


def test_part_results():
    report = smoke.RESULT + '{"loss": 1.5, "replicas": 2}'
    failed = smoke.part_result("precision", "", "Traceback ...\nValueError: boom\n", 1)
    assert failed == {"status": "failed", "error": "exit code 1: ValueError: boom"}
    assert smoke.part_result("horovod", f"[0]<stdout>:{report}\n", "", 0) == {"status": "passed", "loss": 1.5,
                                                                              "replicas": 2}
    rank_error = f'[1]<stdout>:{smoke.RESULT}{{"error": "OSError: gone"}}\n[0]<stdout>:{report}\n'
    assert smoke.part_result("horovod", rank_error, "", 1)["error"] == "OSError: gone"
    assert smoke.part_result("horovod", report, "rank 1 died\n", 1)["error"] == "exit code 1: rank 1 died"

    setup = placed("VarHandleOp", "VarHandleOp", "CPU")  # before the step: not the step's
    step = [placed("images", "_Arg", "CPU"), placed("MatMul", "MatMul", "GPU"), placed("Relu", "Relu", "GPU"),
            placed("call", "StatefulPartitionedCall", "CPU")]  # plumbing and calls are not the step's kernels
    on_gpu = "\n".join([setup, smoke.STEP_BEGINS, *step, report])
    result = smoke.part_result("single", on_gpu, "", 0)
    assert result["status"] == "passed" and result["placement"] == {"ops_by_device": {"GPU": 2}, "off_gpu": []}
    off = smoke.part_result("mirrored", on_gpu.replace(report, placed("check", "Assert", "CPU") + "\n" + report), "", 0)
    assert off["status"] == "failed" and off["placement"]["off_gpu"] == ["check (Assert on CPU)"]
    assert off["error"] == "1 step ops placed off the GPU, e.g. check (Assert on CPU)"
    silent = smoke.part_result("single", f"{smoke.STEP_BEGINS}\n{report}\n", "", 0)
    assert silent["status"] == "failed" and silent["error"] == "no device placement was logged for the step"


def test_summary_and_exit_code():
    gpus = [{"name": "NVIDIA A100-SXM4-80GB", "compute_capability": [8, 0]}]
    passed = {"single": {"status": "passed"}, "horovod": {"status": "skipped", "nccl_built": False}}
    doc, code = smoke.summary("2.21.0", gpus, passed)
    assert code == 0 and doc == {"tensorflow": "2.21.0", "gpus": gpus, "failed": [], "parts": passed}
    doc, code = smoke.summary("2.21.0", gpus, {**passed, "precision": {"status": "failed", "error": "x"}})
    assert code == 1 and doc["failed"] == ["precision"]


def test_engine_step_on_the_cpu_fails_its_placement_check():
    result = run_small("single")
    assert result["status"] == "failed" and "step ops placed off the GPU" in result["error"], result
    assert math.isfinite(result["loss"]) and result["replicas"] == 1
    devices = result["placement"]["ops_by_device"]
    assert set(devices) == {"CPU"} and devices["CPU"] > 100 and len(result["placement"]["off_gpu"]) == 50


def test_precision_part_on_the_cpu():
    result = run_small("precision")
    assert result["status"] == "passed", result
    step_s = result["step_s"]
    assert set(step_s) == {"float32", "bfloat16", "float16"} and min(step_s.values()) > 0
    assert result["vs_float32"]["float16"] == pytest.approx(step_s["float16"] / step_s["float32"])


def test_sharded_head_part_on_the_cpu():
    result = run_small("sharded_head", "--head-classes", "1000")
    assert result["status"] == "passed", result
    assert result["classes"] == 1000 and result["head_bytes"] == 2 * 1000 * 512 * 4  # block and momentum, float32
    assert result["step_s"] > 0 and result["limit_s"] > 0 and result["gpu_peak_bytes"] == []


@pytest.mark.skipif(HOROVODRUN is None, reason="Horovod is not installed")
def test_horovod_part_on_the_cpu_under_horovodrun():
    result = run_small("horovod", gpus=2)
    assert result["status"] == "passed", result
    assert result["replicas"] == 2 and math.isfinite(result["loss"])
    import horovod.tensorflow as hvd

    assert result["allreduce_ms"] > 0 and result["bus_gb_s"] > 0 and result["nccl_built"] == bool(hvd.nccl_built())
