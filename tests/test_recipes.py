"""The recipes for the published data sets (distface/configs/<set>_<net>.yaml): each loads, carries the settings of
the insightface arcface_torch config of the same name, opens with the command that runs it and the result the peer
published, and without data.path stops with one line before anything is written."""
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distface.checked_config import load_config
from distface.config import shipped_configs

ROOT = Path(__file__).resolve().parents[1]

# The peer's configs as read at deepinsight/insightface 7fadd420 (master), recognition/arcface_torch/configs/<name>.py:
# the keys each file sets (ms1mv2_r50/r100 last changed in 4df192b1, the others in d9cb10e6). What they leave to
# configs/base.py: optimizer "sgd", gradient_acc 1. What train_v2.py fixes: CombinedMarginLoss(64, *margin_list),
# PartialFC_V2 (model parallel), torch.optim.SGD(momentum=0.9, weight_decay), PolynomialLRWarmup (power 1),
# clip_grad_norm_(backbone.parameters(), 5), 112x112 input (dataset.py), 8 GPUs in the README's command.
PEER = {
    "ms1mv2_r50": dict(margin_list=(1.0, 0.5, 0.0), network="r50", embedding_size=512, sample_rate=1.0, fp16=True,
                       momentum=0.9, weight_decay=5e-4, batch_size=128, lr=0.1, num_classes=85742,
                       num_image=5822653, num_epoch=20, warmup_epoch=0),
    "ms1mv2_r100": dict(margin_list=(1.0, 0.5, 0.0), network="r100", embedding_size=512, sample_rate=1.0, fp16=True,
                        momentum=0.9, weight_decay=5e-4, batch_size=128, lr=0.1, num_classes=85742,
                        num_image=5822653, num_epoch=20, warmup_epoch=0),
    "ms1mv3_r50": dict(margin_list=(1.0, 0.5, 0.0), network="r50", embedding_size=512, sample_rate=1.0, fp16=True,
                       momentum=0.9, weight_decay=5e-4, batch_size=128, lr=0.1, num_classes=93431,
                       num_image=5179510, num_epoch=20, warmup_epoch=0),
    "glint360k_r100": dict(margin_list=(1.0, 0.0, 0.4), network="r100", embedding_size=512, sample_rate=1.0,
                           fp16=True, momentum=0.9, weight_decay=1e-4, batch_size=128, lr=0.1, num_classes=360232,
                           num_image=17091657, num_epoch=20, warmup_epoch=0),
    "wf42m_pfc02_r100": dict(margin_list=(1.0, 0.0, 0.4), network="r100", embedding_size=512, sample_rate=0.2,
                             fp16=True, momentum=0.9, weight_decay=5e-4, batch_size=128, lr=0.1, num_classes=2059906,
                             num_image=42474557, num_epoch=20, warmup_epoch=0),
    "ms1mv2_mbf": dict(margin_list=(1.0, 0.5, 0.0), network="mbf", embedding_size=512, sample_rate=1.0, fp16=True,
                       momentum=0.9, weight_decay=1e-4, batch_size=128, lr=0.1, num_classes=85742,
                       num_image=5822653, num_epoch=40, warmup_epoch=0),
}
PEER_OPTIMIZER, PEER_GRADIENT_ACC, PEER_SCALE, PEER_CLIP, PEER_GPUS = "sgd", 1, 64.0, 5.0, 8
NETWORKS = {"r50": "iresnet50", "r100": "iresnet100", "mbf": "mobilefacenet"}
# arcface_torch's README, "Training on Single-Host GPU": IJB-C TAR@FAR=1e-4 (%) of the model of each config.
PUBLISHED_IJBC_1E4 = {"ms1mv2_r50": "95.97", "ms1mv2_r100": "96.37", "ms1mv3_r50": "96.37",
                      "glint360k_r100": "97.55", "wf42m_pfc02_r100": "97.70", "ms1mv2_mbf": "93.61"}
RECIPES = sorted(PEER)
MISSING_PATH = "distface: data.path: required when data.source is recordio\n"


def head_type(m1: float, m2: float, m3: float) -> str:
    """distface's head for arcface_torch's margin_list: its two special cases by name, else the combined margin."""
    if m1 == 1.0 and m3 == 0.0:
        return "arcface"
    if m1 == 1.0 and m2 == 0.0:
        return "cosface"
    return "combined"


def opening_comment(name: str) -> str:
    """The recipe's opening comment block as one line of text (the '#' and line breaks dropped)."""
    lines = shipped_configs()[name].read_text().splitlines()
    block = [line for line in lines[:next(i for i, line in enumerate(lines) if not line.startswith("#"))]]
    return " ".join(line.lstrip("#").strip() for line in block)


@pytest.fixture
def pack(tmp_path) -> Path:
    """A folder that passes the config's check of data.path (the pack itself is read only when training starts)."""
    folder = tmp_path / "pack"
    folder.mkdir()
    (folder / "train.rec").touch()
    return folder


def test_every_recordio_config_is_a_recipe_with_a_peer():
    shipped = shipped_configs()
    assert set(RECIPES) <= set(shipped)
    recordio = {name for name, path in shipped.items()
                if (yaml.safe_load(path.read_text()).get("data") or {}).get("source") == "recordio"}
    assert recordio == set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_carries_the_peer_settings(name, pack):
    peer = PEER[name]
    cfg = load_config(name, [f"data.path={pack}"])
    d, m, h, o, t = cfg.data, cfg.model, cfg.head, cfg.optim, cfg.train
    assert (d.source, d.path) == ("recordio", str(pack))
    assert (d.num_classes, d.num_images) == (peer["num_classes"], peer["num_image"])
    assert d.batch_size == peer["batch_size"] and d.flip and d.augment == "none"
    assert (m.backbone, m.image_size, m.embedding_size) == (NETWORKS[peer["network"]], [112, 112],
                                                            peer["embedding_size"])
    m1, m2, m3 = peer["margin_list"]
    assert (h.type, h.scale, h.m1, h.m2, h.m3) == (head_type(m1, m2, m3), PEER_SCALE, m1, m2, m3)
    assert (h.sharding, h.sample_rate, h.margin_gradient) == ("sharded", peer["sample_rate"], "straight_through")
    assert (h.margin_warmup_start, h.margin_warmup_steps) == (0, 0)
    assert o.type == PEER_OPTIMIZER and o.lr == peer["lr"]
    assert o.lr_global_batch == peer["batch_size"] * PEER_GPUS
    assert (o.momentum, o.weight_decay) == (peer["momentum"], peer["weight_decay"])
    assert (o.schedule, o.poly_power) == ("poly", 1.0)
    assert (o.warmup_epochs, o.warmup_steps) == (peer["warmup_epoch"], 0)
    assert (o.clip_norm, o.clip_scope, o.head_update) == (PEER_CLIP, "backbone", "dense")
    assert t.epochs == peer["num_epoch"] and t.accumulate_steps == PEER_GRADIENT_ACC
    assert t.mixed_precision == ("float16" if peer["fp16"] else "none")
    assert cfg.eval.bin_sets == []  # paths: given with --set (the opening comment says how)


@pytest.mark.parametrize("name", RECIPES)
def test_opening_comment_runs_it_and_cites_the_peer(name):
    peer, text = PEER[name], opening_comment(name)
    first = shipped_configs()[name].read_text().splitlines()[0]
    assert re.fullmatch(rf"# horovodrun -np {PEER_GPUS} distface train --config {name} --set data.path=/\S+", first)
    assert f"distface launch --np {PEER_GPUS} -- --config {name} --set data.path=" in text
    assert f"arcface_torch's configs/{name}.py" in text
    glob = peer["batch_size"] * PEER_GPUS
    per_epoch = math.ceil(peer["num_image"] / glob)
    assert (f"{peer['batch_size']} per GPU x {PEER_GPUS} GPUs = {glob:,}. An epoch: ceil({peer['num_image']:,} / "
            f"{glob:,}) = {per_epoch:,} steps; {peer['num_epoch']} epochs: {per_epoch * peer['num_epoch']:,}.") in text
    assert f"{peer['num_classes']:,} identities, {peer['num_image']:,} images" in text
    assert "arcface_torch's published result" in text and "distface has not trained this recipe" in text
    assert f"IJB-C TAR@FAR=1e-4 {PUBLISHED_IJBC_1E4[name]} %" in text


@pytest.mark.parametrize("name", RECIPES)
def test_the_documented_verification_sets_load(name, pack):
    """The opening comment's --set for the .bin sets, pointed at a folder that holds them, passes validation."""
    text = opening_comment(name)
    data_path = re.search(r"--set data\.path=(\S+)", text)[1]
    setting = re.search(r"--set '(eval\.bin_sets=\[[^\]]*\])'", text)[1].replace(data_path, str(pack))
    names = ["lfw.bin", "cfp_fp.bin", "agedb_30.bin"]
    for bin_name in names:
        (pack / bin_name).touch()
    cfg = load_config(name, [f"data.path={pack}", setting])
    assert cfg.eval.bin_sets == [str(pack / n) for n in names]


@pytest.mark.parametrize("name", RECIPES)
def test_without_data_path_train_stops_with_one_line(name, tmp_path, monkeypatch, capsys):
    from distface.train import main

    monkeypatch.chdir(tmp_path)
    assert main(["--config", name]) == 2
    assert capsys.readouterr().err == MISSING_PATH
    assert list(tmp_path.iterdir()) == []  # no runs/ folder


def test_the_command_without_data_path_exits_2_with_one_line(tmp_path):
    """`distface train --config ms1mv3_r50` as a user types it, in an empty folder."""
    proc = subprocess.run([sys.executable, "-m", "distface", "train", "--config", "ms1mv3_r50"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stderr) == (2, MISSING_PATH), proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_training_md_tables_every_recipe():
    text = (ROOT / "docs" / "training.md").read_text()
    section = text.split("\n## Recipes\n", 1)[1].split("\n## ", 1)[0]
    for name in RECIPES:
        row = next((line for line in section.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, f"docs/training.md's Recipes table has no row for {name}"
        peer = PEER[name]
        assert f"{peer['batch_size'] * PEER_GPUS:,}" in row and f"| {peer['num_epoch']} |" in row, row
        assert f"{PUBLISHED_IJBC_1E4[name]} %" in row, row
