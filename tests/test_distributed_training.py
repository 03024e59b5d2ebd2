"""Real ORL training on 2 replicas, as users start it: MirroredStrategy over 2 logical CPUs, and horovodrun with
2 ranks. Both lower the loss; only the chief prints, writes TensorBoard, eval results and the main checkpoint."""
import os
import re
import shutil
import subprocess
import sys

import pytest

HOROVODRUN = shutil.which("horovodrun", path=os.path.dirname(sys.executable))
ARGS = ["-m", "distface.train", "--config", "distface/configs/debug.yaml", "--set", "data.batch_size=16",
        "--set", "model.image_size=[56, 48]", "--set", "train.steps=40", "--set", "train.log_every=5",
        "--set", "train.checkpoint_every=20", "--set", "train.eval_every=0", "--set", "eval.flip=false"]


def losses(stdout: str) -> list[float]:
    return [float(x) for x in re.findall(r"\| loss ([0-9.]+)", stdout)]


def check_run(out, stdout):
    values = losses(stdout)
    assert len(values) == 8, stdout  # 40 steps / log_every 5, printed once (by the chief only)
    assert sum(values[-2:]) < 0.7 * sum(values[:2]), values
    assert len(list((out / "tb").glob("events.out.tfevents*"))) == 1  # one event file, the chief's
    assert len((out / "eval.jsonl").read_text().splitlines()) == 1
    assert sorted(p.name for p in (out / "checkpoints").glob("ckpt-*.index")) == ["ckpt-20.index", "ckpt-40.index"]
    assert stdout.count("eval step 40") == 1


def test_mirrored_two_replicas(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, *ARGS, "--strategy", "mirrored", "--set", "train.cpu_replicas=2",
                           "--set", f"train.out_dir={out}"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "engine mirrored x2 | global batch 32" in proc.stdout
    check_run(out, proc.stdout)
    assert not list((out / "checkpoints").glob("process*"))  # one process holds every block


@pytest.mark.skipif(HOROVODRUN is None, reason="horovod is not installed (DISTFACE_NO_HOROVOD=1)")
def test_horovod_two_ranks(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([HOROVODRUN, "-np", "2", "-H", "localhost:2", sys.executable, *ARGS,
                           "--set", f"train.out_dir={out}"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "engine horovod x2 | global batch 32" in proc.stdout
    assert "[1]<stdout>:step" not in proc.stdout  # rank 1 trains quietly
    check_run(out, proc.stdout)
    # Rank 1's head block (and its momentum) are saved by rank 1 itself, under its own directory.
    assert sorted(p.name for p in (out / "checkpoints" / "process1").glob("ckpt-*.index")) == \
        ["ckpt-20.index", "ckpt-40.index"]
