"""Faults and world-size changes: kill -9 then --resume equals an uninterrupted run; a checkpoint cut short is
never restored; a checkpoint written at 2 replicas resumes at 1 and 4 with the same model; a dead Horovod rank
ends the job; incompatible resumes stop with exit 2; the SavedModel export matches the training model."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from distface.training.checkpoint import complete_steps, merge_head

HERE = Path(__file__).parent
HOROVODRUN = shutil.which("horovodrun", path=os.path.dirname(sys.executable))
BASE = ["-m", "distface.train", "--config", "debug", "--quiet", "--set", "model.image_size=[56, 48]",
        "--set", "data.batch_size=8", "--set", "eval.flip=false", "--set", "train.checkpoint_every=5"]


def train(out, *args, steps=20, wait=True):
    cmd = [sys.executable, *BASE, "--set", f"train.out_dir={out}", "--set", f"train.steps={steps}", *args]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def state(run_dir, step):
    """Every float tensor of the chief's checkpoint at `step` (parameters, momentum, counters)."""
    reader = tf.train.load_checkpoint(str(Path(run_dir) / "checkpoints" / f"ckpt-{step}"))
    keys = [k for k in reader.get_variable_to_shape_map() if "save_counter" not in k]
    return {k: reader.get_tensor(k) for k in keys}


def kill_after(proc, run_dir, step, timeout=300):
    """SIGKILL the training process once the checkpoint of `step` is complete."""
    deadline = time.time() + timeout
    while step not in complete_steps(run_dir):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("engine", [[], ["--strategy", "mirrored", "--set", "train.cpu_replicas=2"]],
                         ids=["single", "mirrored-2"])
def test_kill9_then_resume_equals_uninterrupted(tmp_path, engine):
    train(tmp_path / "whole", *engine)
    proc = train(tmp_path / "cut", *engine, wait=False)
    kill_after(proc, tmp_path / "cut", 10)
    resumed = train(tmp_path / "cut", *engine, "--resume")
    assert resumed.returncode == 0
    whole, cut = state(tmp_path / "whole", 20), state(tmp_path / "cut", 20)
    assert whole.keys() == cut.keys() and len(whole) > 20
    for key in whole:
        np.testing.assert_array_equal(cut[key], whole[key], err_msg=key)


def test_adamw_resume_equals_uninterrupted(tmp_path):
    """AdamW's two moments (and its bias correction's update count) are checkpointed and restored."""
    adamw = ("--set", "optim.type=adamw", "--set", "optim.lr=0.001")
    train(tmp_path / "whole", *adamw, steps=10)
    train(tmp_path / "cut", *adamw, steps=5)
    train(tmp_path / "cut", *adamw, "--resume", steps=10)
    whole, cut = state(tmp_path / "whole", 10), state(tmp_path / "cut", 10)
    assert any("second_moment" in key for key in whole)
    for key in whole:
        np.testing.assert_array_equal(cut[key], whole[key], err_msg=key)


def test_checkpoint_cut_short_is_never_restored(tmp_path):
    """What a kill during a write leaves: index and data of the newest step, but no manifest."""
    out = tmp_path / "run"
    train(out, steps=10)
    directory = out / "checkpoints"
    for suffix in (".index", ".data-00000-of-00001"):
        shutil.copy(directory / f"ckpt-10{suffix}", directory / f"ckpt-15{suffix}")
    (directory / "ckpt-15.data-00000-of-00001").write_bytes(b"\0" * 100)  # torn write
    (directory / "checkpoint").write_text('model_checkpoint_path: "ckpt-15"\n')
    assert complete_steps(out) == [5, 10]
    proc = subprocess.run([sys.executable, *BASE[:-2], "--set", f"train.out_dir={out}", "--set", "train.steps=12",
                           "--resume"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "eval.jsonl").read_text().splitlines()[-1])["step"] == 12
    assert complete_steps(out)[-1] == 12


@pytest.fixture(scope="module")
def two_replica_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reshard") / "run"
    train(out, "--strategy", "mirrored", "--set", "train.cpu_replicas=2", "--set", "head.type=cosface",
          "--set", "head.m3=0.3", "--set", "data.train_identities=[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,"
          "19,20,21,22,23,24,25,26,27,28,29,30,31]", steps=10)
    return out


def probe(run_dir, tmp_path, strategy, replicas):
    out = tmp_path / f"probe-{strategy}-{replicas}.npz"
    proc = subprocess.run([sys.executable, str(HERE / "reshard_probe.py"), str(run_dir), str(out), strategy,
                           str(replicas)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(np.load(out))


def test_resume_at_other_world_sizes(two_replica_run, tmp_path):
    """31 classes written as 2 blocks of 16, read back as 1 block of 31 and as 4 blocks of 8 (1 padding row)."""
    at2 = probe(two_replica_run, tmp_path, "mirrored", 2)
    merged = merge_head(two_replica_run)["weight"]
    assert merged.shape == (31, 128)
    for strategy, replicas in (("single", 1), ("mirrored", 4)):
        other = probe(two_replica_run, tmp_path, strategy, replicas)
        assert int(other["step"]) == 10
        np.testing.assert_array_equal(other["weight"], at2["weight"])
        np.testing.assert_array_equal(other["momentum"], at2["momentum"])
        # The backbone's convolutions block their sums by batch size (8, 4 or 2 images per replica): a few ulps
        # of the embeddings' scale (|e| up to ~7; seen: 1.2e-6).
        np.testing.assert_allclose(other["embeddings"], at2["embeddings"], rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose(other["loss"], at2["loss"], rtol=1e-6)
    np.testing.assert_array_equal(merged, at2["weight"])


def test_merge_cli(two_replica_run, tmp_path):
    out = tmp_path / "head.npz"
    proc = subprocess.run([sys.executable, "-m", "distface.checkpoint", "merge", str(two_replica_run),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.load(out)["weight"], merge_head(two_replica_run)["weight"])


RESUME_31 = ["--set", "head.m3=0.3", "--set", "data.train_identities=[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,"
             "20,21,22,23,24,25,26,27,28,29,30,31]", "--resume"]


@pytest.mark.parametrize("change, message", [
    ("model.embedding_size=64", "model.embedding_size: "), ("model.backbone=sphere20", "model.backbone: "),
    ("model.image_size=[112, 96]", "model.image_size: "), ("head.type=softmax", "saved with head ="),
    ("optim.type=adamw", "optim.type: ")])
def test_incompatible_resume_exits_2(two_replica_run, change, message):
    events = sorted((two_replica_run / "tb").iterdir())
    proc = subprocess.run([sys.executable, *BASE, "--set", f"train.out_dir={two_replica_run}", "--set", change,
                           "--set", "train.steps=12", *RESUME_31], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    ours = [line for line in proc.stderr.splitlines() if line.startswith("distface:")]
    assert len(ours) == 1 and message in ours[0] and "Traceback" not in proc.stderr, proc.stderr
    if message.startswith(("model.", "optim.")):  # refused before anything is written
        assert sorted((two_replica_run / "tb").iterdir()) == events


def test_resume_at_another_world_size_says_the_new_global_batch(two_replica_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(two_replica_run, out)
    proc = subprocess.run([sys.executable, *[a for a in BASE if a != "--quiet"], "--set", f"train.out_dir={out}",
                           "--set", "train.steps=11", "--set", "head.type=cosface", *RESUME_31],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the global batch is now 8 (saved at 16); learning rate in use" in proc.stdout + proc.stderr


def test_export_matches_training_model(two_replica_run, tmp_path):
    from distface.training.checkpoint import load_backbone
    from distface.data.orl import orl_split
    from distface.data.pipeline import eval_images
    from distface.eval.runner import embed

    export = subprocess.run([sys.executable, "-m", "distface.export", "--checkpoint", str(two_replica_run),
                             "--out", str(tmp_path / "saved")], capture_output=True, text=True, timeout=300)
    assert export.returncode == 0, export.stderr
    paths = list(orl_split([33]).paths[:4])
    cfg, backbone, _ = load_backbone(two_replica_run)
    expected = embed(backbone, eval_images(paths, cfg.model.image_size), flip=False)
    script = ("import sys, numpy as np, tensorflow as tf\n"
              f"m = tf.saved_model.load({str(tmp_path / 'saved')!r})\n"
              "x = np.load(sys.argv[1])\n"
              "f = m.signatures['embed_float'](images=tf.constant(x['float']))['embeddings'].numpy()\n"
              "u = m.signatures['serving_default'](images=tf.constant(x['uint8']))['embeddings'].numpy()\n"
              "assert not any(k.startswith('distface') for k in sys.modules)\n"
              "np.savez(sys.argv[2], float=f, uint8=u)\n")
    images = eval_images(paths, cfg.model.image_size)
    pixels = np.clip(np.rint(images * 128 + 127.5), 0, 255).astype(np.uint8)
    expected_uint8 = embed(backbone, (pixels.astype(np.float32) - 127.5) / 128, flip=False)
    np.savez(tmp_path / "in.npz", float=images, uint8=pixels)
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    np.testing.assert_allclose(got["float"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["uint8"], expected_uint8, rtol=1e-5, atol=1e-6)


def rank_pid(rank: int, marker: str) -> int | None:
    """The pid of the Horovod worker with HOROVOD_RANK=rank whose command line mentions `marker`."""
    for entry in Path("/proc").iterdir():
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if f"HOROVOD_RANK={rank}".encode() in env and marker.encode() in cmdline and b"distface.train" in cmdline:
            return int(entry.name)
    return None


@pytest.mark.skipif(HOROVODRUN is None, reason="horovod is not installed (DISTFACE_NO_HOROVOD=1)")
def test_dead_horovod_rank_ends_the_job_and_resume_continues(tmp_path):
    out = tmp_path / "run"
    cmd = [HOROVODRUN, "-np", "2", "-H", "localhost:2", sys.executable, *BASE, "--set", f"train.out_dir={out}"]
    job = subprocess.Popen([*cmd, "--set", "train.steps=100000"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        kill_after_step = 10
        deadline = time.time() + 300
        while kill_after_step not in complete_steps(out):
            assert job.poll() is None and time.time() < deadline, job.stderr.read()[-3000:]
            time.sleep(0.1)
        pid = rank_pid(1, str(out))
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed = time.time()
        job.wait(timeout=60)
        assert job.returncode != 0 and time.time() - killed < 60
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    last = complete_steps(out)[-1]
    resumed = subprocess.run([*cmd, "--set", f"train.steps={last + 5}", "--resume"], capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert complete_steps(out)[-1] == last + 5
    assert (out / "checkpoints" / "process1" / f"ckpt-{last + 5}.index").is_file()


def test_a_failed_checkpoint_write_is_one_line_and_leaves_no_partial_checkpoint(tmp_path):
    """Files cut at half a checkpoint's size (RLIMIT_FSIZE: the write fails as on a full disk) on a resume: its
    first checkpoint fails, the one it resumed from stays the last good one."""
    import resource

    out = tmp_path / "run"
    train(out, steps=5)  # the checkpoint of step 5, written normally
    data = max((out / "checkpoints").glob("ckpt-5.data-*"), key=lambda p: p.stat().st_size)
    limit = data.stat().st_size // 2

    def cut_writes():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([sys.executable, *BASE, "--set", f"train.out_dir={out}", "--set", "train.steps=10",
                           "--resume"], capture_output=True, text=True, timeout=300, preexec_fn=cut_writes)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    ours = [line for line in proc.stderr.splitlines() if line.startswith("distface:")]
    assert len(ours) == 1 and "checkpoint of step 10" in ours[0] and "last good checkpoint: step 5" in ours[0]
    assert str(out / "checkpoints") in ours[0]
    assert not list((out / "checkpoints").glob("*_temp*")) and complete_steps(out) == [5]
