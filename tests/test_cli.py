"""The `distface` command: every subcommand answers --help at once (no TensorFlow import before its arguments are
parsed), the old `python -m` paths still work, a run is quiet by default, and runs of one config never collide."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distface import cli
from distface.config import ConfigError, config_file, parse_config, shipped_configs
from distface.training import run_folder

ROOT = Path(__file__).resolve().parents[1]
START_UP_NOTES = ("WARNING: All log messages before absl::InitializeLog()", "oneDNN custom operations",
                  "cpu_feature_guard", "cuInit")


def distface(*args, cwd=ROOT, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "distface", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_every_command_answers_help_without_tensorflow():
    """Each subcommand's --help, parsed in one process that must not have imported TensorFlow afterwards."""
    code = ("import sys\nfrom distface.cli import COMMANDS, main\nfor name in COMMANDS:\n"
            "    try:\n        main([name, '--help'])\n    except SystemExit as e:\n        assert e.code == 0, name\n"
            "    assert 'tensorflow' not in sys.modules, name\nprint('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.endswith("ok\n"), proc.stderr


def test_help_of_every_command_is_fast():
    """`distface X --help` for every subcommand, as a user runs it: each exits 0 with its usage, all of them together
    well under 10 s (each answers in well under 1 s; a bound on the sum does not flake on a loaded machine)."""
    began = time.perf_counter()
    for name in cli.COMMANDS:
        proc = distface(name, "--help", timeout=30)
        assert proc.returncode == 0, (name, proc.stderr)
        assert proc.stdout.startswith(f"usage: distface {name}"), (name, proc.stdout[:200])
    assert time.perf_counter() - began < 10.0


def test_top_level_help_and_unknown_command():
    listed = distface("--help")
    assert listed.returncode == 0 and all(f"\n  {name} " in listed.stdout for name in cli.COMMANDS), listed.stdout
    unknown = distface("trian")
    assert unknown.returncode == 2 and unknown.stderr.startswith("distface: unknown command 'trian'")
    assert len(unknown.stderr.splitlines()) == 1


@pytest.mark.parametrize("module", ["distface.train", "distface.eval", "distface.export", "distface.embed",
                                    "distface.verify", "distface.data", "distface.models", "distface.figures",
                                    "distface.checkpoint", "launch"])
def test_old_module_paths_still_work(module):
    proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: distface"), proc.stderr


def test_start_up_notes_are_dropped_and_everything_else_kept():
    """The filter around TensorFlow's import, on what C++ and Python write to file descriptor 2."""
    code = r"""
import os, sys
from distface.console import _start_up_notes_dropped
with _start_up_notes_dropped():
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
    os.write(2, b"I0000 00:00:1796672847.999270    5664 port.cc:153] oneDNN custom operations are on.\n")
    os.write(2, b"W0000 00:00:1796672847.999270    5664 x.cc:1] a start-up warning\n")
    os.write(2, b"To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow\n")
    os.write(2, b"E0000 00:00:1796672847.999270    5664 x.cc:1] a real error\n")
    print("a Python warning", file=sys.stderr)
print("after", file=sys.stderr)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.stderr.splitlines() == ["E0000 00:00:1796672847.999270    5664 x.cc:1] a real error",
                                        "a Python warning", "after"]


def test_config_by_name(tmp_path, monkeypatch):
    shipped = shipped_configs()
    assert {"debug", "orl_arcface"} <= set(shipped) and all(p.is_file() for p in shipped.values())
    monkeypatch.chdir(tmp_path)
    assert config_file("debug") == config_file("debug.yaml") == shipped["debug"]
    assert parse_config("orl_arcface").head.type == "arcface"
    Path("debug.yaml").write_text("train:\n  steps: 7\n")  # a file at the path given wins
    assert config_file("debug.yaml") == Path("debug.yaml") and parse_config("debug.yaml").train.steps == 7
    assert config_file("debug") == shipped["debug"]
    with pytest.raises(ConfigError, match=r"^--config: no such file: nope \(nor a shipped config; shipped: debug, "):
        config_file("nope")
    with pytest.raises(ConfigError, match="no such file: sub/debug.yaml"):
        config_file("sub/debug.yaml")  # a path is a path: no shipped config is looked up for it


def test_run_folders(tmp_path, monkeypatch):
    assert run_folder.config_name("distface/configs/orl_arcface.yaml") == "orl_arcface"
    assert run_folder.config_name("debug") == "debug" and run_folder.config_name(None) == "default"
    assert run_folder.newest_run("debug", tmp_path) is None
    for name in ("debug-20261207-101500", "debug-20261207-091500", "debug-20261208-000000", "debug_x-20991231-000000",
                 "debug-2099", "debug-20991231-000000-old"):
        (tmp_path / name).mkdir()
    (tmp_path / "debug-20991231-000001").write_text("a file, not a run")
    assert run_folder.newest_run("debug", tmp_path) == tmp_path / "debug-20261208-000000"
    # a new folder in a second whose folder exists takes the next free second
    now = time.mktime((2026, 12, 7, 10, 15, 0, 0, 0, -1))
    monkeypatch.setattr(run_folder.time, "time", lambda: now)
    assert run_folder._new_stamp("debug", tmp_path) == 20261207101501
    assert run_folder._new_stamp("other", tmp_path) == 20261207101500


def test_runs_do_not_collide_and_resume_the_newest(tmp_path):
    """The same command twice: two run folders; --resume without a folder continues the newer one. What the user's
    shell shows (TF_CPP_MIN_LOG_LEVEL unset): distface's own lines, none of TensorFlow's start-up notes."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = str(ROOT)
    args = ["train", "--config", "debug", "--set", "train.steps=5", "--set", "model.image_size=[56, 48]",
            "--set", "train.checkpoint_every=5", "--set", "eval.flip=false"]
    first = distface(*args, cwd=tmp_path, env=env)
    second = distface(*args, cwd=tmp_path, env=env)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2 and all(r.name.startswith("debug-") for r in runs), runs
    assert all((r / "checkpoints" / "manifest-5.json").is_file() for r in runs)
    for proc in (first, second):
        shown = proc.stdout + proc.stderr
        assert not [n for n in START_UP_NOTES if n in shown], shown
        assert "training debug + arcface" in shown
    assert f"out runs/{runs[0].name}" in first.stdout + first.stderr
    resumed = distface(*args[:-4], "--set", "train.steps=7", "--set", "eval.flip=false", "--resume",
                       cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from runs/{runs[1].name}/checkpoints/ckpt-5 at step 5" in resumed.stdout + resumed.stderr
    assert sorted((tmp_path / "runs").iterdir()) == runs


def test_verbose_shows_tensorflow_lines():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    quiet = distface("models", "--summary", "debug", env=env)
    verbose = distface("models", "--summary", "debug", "--verbose", env=env)
    assert quiet.returncode == 0 and verbose.returncode == 0, quiet.stderr + verbose.stderr
    assert quiet.stdout == verbose.stdout and "debug" in quiet.stdout
    assert not [n for n in START_UP_NOTES if n in quiet.stderr], quiet.stderr
    assert "WARNING: All log messages before absl::InitializeLog()" in verbose.stderr


def test_resume_of_a_missing_run_folder_is_refused(tmp_path, capsys):
    from distface.train import main

    missing = tmp_path / "runs" / "debug-20261207-120000"
    assert main(["--config", "debug", "--resume", str(missing)]) == 2
    assert capsys.readouterr().err == f"distface: --resume: no such run folder: {missing}\n"
    assert not missing.exists()
