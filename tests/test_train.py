"""End to end on ORL, single device: the loss goes down, checkpoints resume at the saved step, only bad input
exits 2."""
import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from distface.checked_config import load_config
from distface.config import parse_config, shipped_configs
from distface.training.session import Session

FAST = ["model.image_size=[56, 48]", "data.batch_size=16", "eval.flip=false", "train.log_every=1"]


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "distface.train", "--config", "distface/configs/debug.yaml", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("head", ["normface", "softmax"])
def test_thirty_steps_lower_the_loss(tmp_path, head):
    cfg = load_config("distface/configs/debug.yaml", FAST + [f"head.type={head}", f"train.out_dir={tmp_path}",
                                                    "train.steps=30", "optim.warmup_steps=5"])
    session = Session(cfg, quiet=True)
    losses = [float(session.trainer.train_step(*next(session.dataset)).scalars["loss"]) for _ in range(30)]
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


def test_resume_continues_at_saved_step(tmp_path):
    out = tmp_path / "run"
    common = [f"--set=train.out_dir={out}", "--set=train.checkpoint_every=2", "--set=train.log_every=2",
              *(f"--set={s}" for s in FAST)]
    first = cli(*common, "--set=train.steps=4")
    assert first.returncode == 0, first.stderr
    assert tf.train.latest_checkpoint(str(out / "checkpoints")).endswith("ckpt-4")

    again = cli(*common, "--set=train.steps=6")
    assert again.returncode == 2 and "--resume" in again.stderr  # never trains over an existing run silently

    resumed = cli(*common, "--set=train.steps=6", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "at step 4" in resumed.stdout and "step      6/6" in resumed.stdout
    assert "step      2/6" not in resumed.stdout  # steps 1..4 were not run again
    reader = tf.train.load_checkpoint(str(out / "checkpoints"))
    assert reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == 6

    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [4, 6]
    assert all(0.0 <= e["accuracy"] <= 1.0 and e["num_pairs"] == 900 for e in evals)
    assert (out / "config.yaml").is_file() and list((out / "tb").iterdir())


def test_eval_cli_reproduces_the_final_eval(tmp_path):
    out = tmp_path / "run"
    train = cli(f"--set=train.out_dir={out}", "--set=train.steps=3", "--set=train.checkpoint_every=0",
                *(f"--set={s}" for s in FAST))
    assert train.returncode == 0, train.stderr
    final = json.loads((out / "eval.jsonl").read_text().splitlines()[-1])
    proc = subprocess.run([sys.executable, "-m", "distface.eval", "--checkpoint", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"accuracy {100 * final['accuracy']:.2f} ±" in proc.stdout and "ckpt-3" in proc.stdout

    missing = subprocess.run([sys.executable, "-m", "distface.eval", "--checkpoint", str(tmp_path / "nope")],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "not a distface run directory" in missing.stderr


def test_train_from_recordio_and_eval_on_bin_set(tmp_path):
    """The insightface formats end to end: ORL s1..s30 packed to .rec, the eval pairs packed to .bin; the
    .bin evaluation equals the pairs-file evaluation of the same model."""
    from distface.data.orl import orl_root
    from distface.eval.runner import orl_pairs_file

    folder = tmp_path / "orl30"
    folder.mkdir()
    for i in range(1, 31):
        (folder / f"s{i}").symlink_to(orl_root() / f"s{i}")
    data = [sys.executable, "-m", "distface.data"]
    pack = subprocess.run([*data, "pack", str(folder), str(tmp_path / "train.rec"), "--extensions", ".pgm",
                           "--quiet"], capture_output=True, text=True, timeout=300)
    assert pack.returncode == 0, pack.stderr
    pairs = orl_pairs_file(load_config("distface/configs/debug.yaml").eval, tmp_path)
    binset = subprocess.run([*data, "bin", str(pairs), str(orl_root()), str(tmp_path / "orl_pairs.bin"), "--quiet"],
                            capture_output=True, text=True, timeout=300)
    assert binset.returncode == 0, binset.stderr
    out = tmp_path / "run"
    run = cli(f"--set=train.out_dir={out}", "--set=train.steps=3", "--set=data.source=recordio",
              f"--set=data.path={tmp_path}", f"--set=eval.bin_sets=[{tmp_path / 'orl_pairs.bin'}]",
              *(f"--set={s}" for s in FAST))
    assert run.returncode == 0, run.stderr
    assert "on 30 identities" in run.stdout
    pairs_eval, bin_eval = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert (pairs_eval["pairs"], bin_eval["pairs"]) == ("pairs", "orl_pairs")
    for key in ("accuracy", "auc", "eer", "val"):
        assert bin_eval[key] == pytest.approx(pairs_eval[key], abs=1e-12)


def test_the_shipped_configs_are_found():
    assert {"debug", "orl_arcface", "orl_triplet"} <= set(shipped_configs())


ORL_CONFIGS = sorted(name for name in shipped_configs() if not parse_config(name, data_path=False).data.num_classes)


@pytest.mark.parametrize("name", ORL_CONFIGS)
def test_every_config_trains(tmp_path, name):
    """Each shipped ORL config builds its backbone, head and data and takes finite steps (at a tiny batch). The
    recipes for the published sets need their data; benchmarks/rehearsal.py runs each at its real size."""
    small = ["data.batch_size=4", "data.identities_per_batch=2", "data.images_per_identity=2", "eval.flip=false",
             f"train.out_dir={tmp_path}", "train.steps=2"]
    session = Session(load_config(name, small), quiet=True)
    for _ in range(2):
        assert np.isfinite(float(session.trainer.train_step(*next(session.dataset)).scalars["loss"]))
