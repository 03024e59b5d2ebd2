"""Config: YAML + --set overrides into typed dataclasses; each class of bad input exits 2 naming the key."""
import re
import subprocess
import sys

import pytest

from distface.checked_config import load_config
from distface import config
from distface.config import Config, ConfigError


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_and_yaml_and_overrides(tmp_path):
    path = write(tmp_path, "model:\n  embedding_size: 64\noptim:\n  lr: 0.2\n")
    cfg = load_config(path, ["train.steps=7", "head.type=cosface", "data.flip=false", "optim.decay_steps=[3, 5]"])
    assert isinstance(cfg, Config)
    assert cfg.model.embedding_size == 64 and cfg.optim.lr == 0.2
    assert cfg.train.steps == 7 and cfg.head.type == "cosface" and cfg.data.flip is False
    assert cfg.optim.decay_steps == [3, 5]
    assert cfg.model.backbone == Config().model.backbone  # untouched keys keep the dataclass default
    assert isinstance(load_config(path, ["optim.lr=1"]).optim.lr, float)  # ints widen to float


@pytest.mark.parametrize("text, overrides, key", [
    ("model:\n  embeding_size: 3\n", [], "model.embeding_size: unknown key"),
    ("trian:\n  steps: 3\n", [], "trian: unknown key"),
    ("", ["optim.lr=-0.1"], "optim.lr: must be > 0"),
    ("", ["optim.head_update=eager"], "optim.head_update: unknown head update 'eager'"),
    ("", ["optim.lr=fast"], "optim.lr: expected a number"),
    ("", ["model.embedding_size=0"], "model.embedding_size: must be > 0"),
    ("", ["model.embedding_size=1.5"], "model.embedding_size: expected an integer"),
    ("", ["data.flip=maybe"], "data.flip: expected true or false"),
    ("", ["data.source=folder"], "data.path: required"),
    ("", ["data.source=folder", "data.path=/no/such/dir"], "data.path: no such directory"),
    ("", ["eval.pairs=/no/pairs.txt"], "eval.pairs: no such file"),
    ("", ["model.backbone=resnet9000"], "model.backbone: unknown backbone"),
    ("", ["head.type=magic"], "head.type: unknown head"),
    ("", ["head.m1=0.5"], "head.m1: must be >= 1"),
    ("", ["head.sphere_m=0"], "head.sphere_m: must be an integer >= 1"),
    ("", ["head.margin_warmup_steps=-1"], "head.margin_warmup_steps: must be >= 0"),
    ("", ["data.source=lfw"], "data.source: unknown source 'lfw' (known: folder, mnist, orl"),
    ("", ["loss.type=contrastive"], "loss.type: unknown loss type 'contrastive' (known: classification, triplet)"),
    ("", ["loss.center_variant=wen"], "loss.center_variant: unknown center variant 'wen' (known: facenet, paper)"),
    ("", ["loss.triplet_distance=cosine"], "loss.triplet_distance: unknown distance 'cosine'"),
    ("", ["loss.triplet_mining=hard"], "loss.triplet_mining: unknown mining 'hard'"),
    ("", ["train.strategy=ddp"], "train.strategy: unknown strategy 'ddp' (known: auto, horovod"),
    ("", ["loss.type=triplet", "data.batch_size=30"], "data.batch_size: must equal identities_per_batch"),
    ("", ["train.steps"], "--set 'train.steps': expected section.key=value"),
    ("model: 3\n", [], "model: expected a mapping"),
])
def test_bad_values_name_the_key(tmp_path, text, overrides, key):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), overrides)
    assert str(err.value).startswith(key.split(":")[0]) and key in str(err.value)


def test_missing_and_malformed_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "model: [\n"))


@pytest.mark.parametrize("args, key", [
    (["--set", "optim.lr=-1"], "optim.lr"),
    (["--set", "model.embedding_size=0"], "model.embedding_size"),
    (["--set", "data.source=folder", "--set", "data.path=/missing"], "data.path"),
    (["--set", "model.colour=blue"], "model.colour"),
    (["--set", "model.backbone=resnet9000"], "model.backbone"),  # registries read without TensorFlow's noise
    (["--set", "head.scale=0"], "head.scale"),
    (["--set", "train.steps=[1"], "train.steps: --set value '[1' is not valid YAML"),
    (["--set", "data.train_identities=[1]"], "data.source: the orl set holds 1 identity; training needs at least 2"),
    (["--set", "data.batch_size=400"], "data.batch_size: 400 is more than the 300 examples of shard 0 of 1"),
])
def test_cli_exits_2_with_one_line_and_writes_nothing(tmp_path, args, key):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "distface.train", "--set", f"train.out_dir={out}", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    # Config errors come before TensorFlow is imported; data errors after its start-up lines.
    # The tensorflow wheel on a machine without a GPU also logs its failed cuInit (an E line) at start-up.
    lines = [line for line in proc.stderr.strip().splitlines()
             if not re.match(r"(WARNING: All log|[IW]0000 |E0000 .*cuInit)", line)]
    assert len(lines) == 1 and key in lines[0], proc.stderr
    assert not out.exists()


def test_a_yaml_syntax_error_is_one_line_naming_the_file_and_place(tmp_path, capsys):
    from distface.train import main

    path = write(tmp_path, "train:\n  steps: 3\n model: [\n")
    assert main(["--config", str(path), "--set", f"train.out_dir={tmp_path / 'run'}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "line 3" in lines[0], lines
    assert not (tmp_path / "run").exists()


def test_every_shipped_config_loads(tmp_path):
    """The ORL configs as they are; a recipe (data.source recordio) once given the data.path it requires."""
    from pathlib import Path

    configs = sorted(Path(__file__).parent.parent.joinpath("distface", "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        needs_data = config.parse_config(path, data_path=False).data.source == "recordio"
        load_config(path, [f"data.path={tmp_path}"] if needs_data else [])
