"""Checkpoints: tf.train.CheckpointManager over the trainer's state, plus the resolved config beside them.

Replicated state (backbone, replicated head, momentum, step, centers) is written once, by the chief, to
`checkpoints/`. Sharded head blocks (and their momentum) are written under their global replica id by the process
that holds them: the chief's blocks go with the rest, another process p writes `checkpoints/process<p>/`.
CheckpointManager writes each checkpoint under a new name and updates its `checkpoint` index file last, so a
write cut short is never picked up as the latest.
"""
from __future__ import annotations

from pathlib import Path

import tensorflow as tf
import yaml

from distface.config import Config, load_config, to_dict

CONFIG_NAME = "config.yaml"


def save_config(cfg: Config, directory: str | Path) -> Path:
    path = Path(directory) / CONFIG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)
    return path


def load_run_config(run_dir: str | Path) -> Config:
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a distface run directory (no {CONFIG_NAME})")
    return load_config(path)


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _block_items(trainer) -> dict:
    """{"replica_<r>": {"<i>": this process's copy of sharded variable i for replica r}}."""
    sharded = trainer.sharded_variables + trainer.optimizer.slots[len(trainer.replicated_variables):]
    blocks: dict = {}
    for index, var in enumerate(sharded):
        for replica, component in trainer.engine.local_components(var).items():
            blocks.setdefault(f"replica_{replica}", {})[str(index)] = component
    return blocks


def make_manager(trainer, run_dir: str | Path, max_to_keep: int = 3) -> tf.train.CheckpointManager:
    """This process's checkpoint manager (see the module docstring for who writes what)."""
    engine = trainer.engine
    items = dict(head_blocks=_block_items(trainer))
    directory = checkpoint_dir(run_dir)
    if engine.is_chief:
        items.update(backbone=trainer.backbone, step=trainer.step,
                     head=trainer.replicated_variables[len(trainer.backbone.trainable_variables):],
                     momentum=trainer.optimizer.slots[:len(trainer.replicated_variables)])
        if trainer.centers is not None:
            items["centers"] = trainer.centers
    else:
        directory = directory / f"process{engine.process_index}"
    return tf.train.CheckpointManager(tf.train.Checkpoint(**items), str(directory), max_to_keep=max_to_keep)


def restore_backbone(backbone, run_dir: str | Path) -> str:
    """Load only the backbone weights of the latest checkpoint of a run (for evaluation and export)."""
    latest = tf.train.latest_checkpoint(str(checkpoint_dir(run_dir)))
    if latest is None:
        raise FileNotFoundError(f"{checkpoint_dir(run_dir)}: no checkpoint found")
    tf.train.Checkpoint(backbone=backbone).restore(latest).expect_partial().assert_existing_objects_matched()
    return latest
