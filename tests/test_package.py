"""The package a user installs: the wheel holds the launcher, the shipped configs and the license, declares
TensorFlow, and installed into a fresh virtualenv it trains, evaluates and answers --help from a folder outside the
checkout."""
import configparser
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # From a copy: setuptools builds in the source folder, and a stale build/ there could slip removed modules in.
    source = out / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "runs", "*.egg-info",
                                                                  "__pycache__", ".pytest_cache"))
    # No build isolation: the build uses this environment's setuptools, so no network is needed.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out), str(source)], check=True, capture_output=True, timeout=300)
    (built,) = out.glob("distface-*.whl")
    return built


def test_wheel_holds_launch_configs_and_license(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.name for p in (ROOT / "distface" / "configs").glob("*.yaml")}
    assert {"debug.yaml", "orl_arcface.yaml"} <= shipped
    assert {f"distface/configs/{name}" for name in shipped} <= names
    assert {f"distface/launch/{p.name}" for p in (ROOT / "distface" / "launch").glob("*.py")} <= names
    assert {"distface/cli.py", "distface/__main__.py"} <= names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "launch/"))]
    info = next(n for n in names if n.endswith(".dist-info/METADATA"))
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    metadata = Parser().parsestr(zipfile.ZipFile(wheel).read(info).decode())
    requires = metadata.get_all("Requires-Dist")
    assert "tensorflow==2.21.0" in requires
    assert 'tensorflow[and-cuda]==2.21.0; extra == "gpu"' in requires
    assert metadata["License-Expression"] == "Apache-2.0"
    entry_points = configparser.ConfigParser()
    entry_points.read_string(zipfile.ZipFile(wheel).read(info.replace("METADATA", "entry_points.txt")).decode())
    assert dict(entry_points["console_scripts"]) == {"distface": "distface.cli:main"}


def test_installed_wheel_trains_and_evaluates(wheel, tmp_path):
    """The wheel in a fresh virtualenv (its dependencies from this environment's site-packages, linked by a .pth
    file, which does not run this environment's editable install of the checkout), used from another folder."""
    fresh = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(fresh)
    python = fresh / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True, timeout=300)
    work = tmp_path / "elsewhere"
    work.mkdir()
    command = fresh / "bin" / "distface"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing but the fresh environment

    def run(*args):
        return subprocess.run([command, *args], cwd=work, env=env, capture_output=True, text=True, timeout=600)

    where = subprocess.run([python, "-c", "import distface; print(distface.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site)), where
    assert run("--help").returncode == 0
    trained = run("train", "--config", "debug", "--set", "train.steps=20", "--set", "model.image_size=[56, 48]",
                  "--quiet")
    assert trained.returncode == 0, trained.stderr
    (folder,) = (work / "runs").iterdir()
    assert folder.name.startswith("debug-") and (folder / "checkpoints" / "manifest-20.json").is_file()
    evaluated = run("eval", "--checkpoint", str(folder))
    assert evaluated.returncode == 0, evaluated.stderr
    assert "pairs: accuracy" in evaluated.stdout
    dry = run("launch", "--np", "2", "--dry-run", "--", "--config", "debug")
    assert dry.returncode == 0 and "-m distface.train" in dry.stdout, dry.stderr
