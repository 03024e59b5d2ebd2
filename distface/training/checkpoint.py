"""Checkpoints that survive a kill and a change of world size.

Layout of `<run>/checkpoints/`:
- `ckpt-<step>.*`: written by the chief: replicated state (backbone, replicated head, momentum, step, counters,
  replicated centers) and the head blocks the chief's replicas hold;
- `process<p>/ckpt-<step>.*`: the head blocks (and their momentum, and the sharded centers' blocks) held by
  process p > 0 (Horovod ranks, tf.distribute workers);
- `manifest-<step>.json`: written by the chief last, after every process has saved: the class layout (classes,
  world size, block size) and where each block lives. A checkpoint without its manifest is incomplete (cut by a
  kill) and is never restored.

Head blocks are stored under their global replica id with a known block size, so the head is addressable by
global class id: a restore at another world size re-splits the rows (and their momentum) for its own blocks, and
`distface checkpoint merge` writes the whole [C, d] head.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import tensorflow as tf
import yaml

from distface.checked_config import load_config
from distface.config import Config, InputError, to_dict

CONFIG_NAME = "config.yaml"
BLOCKS = "head_blocks"


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


MODEL_KEYS = ("backbone", "image_size", "embedding_size")  # what the saved variables' shapes follow


def check_resume(cfg: Config, run_dir: str | Path) -> Config:
    """A resume keeps the saved run's model (else one line naming the key, before anything is built or written);
    returns the saved run's config."""
    saved = load_run_config(run_dir)
    for key in MODEL_KEYS:
        before, now = getattr(saved.model, key), getattr(cfg.model, key)
        if before != now:
            raise InputError(f"model.{key}: {run_dir} was saved with {before}, this config has {now} "
                             "(--resume continues the same model)")
    if saved.optim.type != cfg.optim.type:  # the slots hold one rule's state: another rule would misread them
        raise InputError(f"optim.type: {run_dir} was saved with {saved.optim.type}, this config has "
                         f"{cfg.optim.type} (--resume continues the same optimizer)")
    return saved


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def complete_steps(run_dir: str | Path) -> list[int]:
    """Steps whose checkpoint every process finished writing (those with a manifest), ascending."""
    directory = checkpoint_dir(run_dir)
    steps = [int(p.stem.split("-")[1]) for p in directory.glob("manifest-*.json")] if directory.is_dir() else []
    return sorted(s for s in steps if Path(f"{directory}/ckpt-{s}.index").is_file())


def read_manifest(run_dir: str | Path, step: int | None = None) -> dict:
    steps = complete_steps(run_dir)
    if not steps:
        raise FileNotFoundError(f"{checkpoint_dir(run_dir)}: no complete checkpoint")
    step = steps[-1] if step is None else step
    manifest = json.loads((checkpoint_dir(run_dir) / f"manifest-{step}.json").read_text())
    return manifest


def _block_key(replica: int, group: str, name: str) -> str:
    return f"{BLOCKS}/replica_{replica}/{group}/{name}/.ATTRIBUTES/VARIABLE_VALUE"


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (the disk, not the user's input); earlier checkpoints stay good."""


class Checkpointer:
    """Saves and restores one process's share of a TrainState (see the module docstring)."""

    def __init__(self, state, runtime, layout: dict, run_dir: str | Path, max_to_keep: int = 3):
        """layout: what must match for a restore (classes, embedding size, head kind) and the class split
        (block size); the world size and the sharded names are added here."""
        self.state, self.runtime = state, runtime
        self.run_dir = Path(run_dir)
        # Sharded state by group ("params", the slot kinds) and name: each local replica's component of each.
        self.sharded = state.sharded_state()
        blocks: dict = {}
        for group, variables in self.sharded.items():
            for name, var in variables.items():
                for replica, component in runtime.local_components(var).items():
                    blocks.setdefault(f"replica_{replica}", {}).setdefault(group, {})[name] = component
        self.layout = {**layout, "world_size": runtime.num_replicas,
                       "sharded_variables": sorted(self.sharded["params"])}
        self.replicated = dict(backbone=state.backbone, step=state.step, counters=state.counters,
                               **state.slots["replicated"])
        if state.head is not None:
            self.replicated["head"] = state.head.replicated
        if state.centers is not None and not state.sharded_centers:  # sharded centers are among the blocks
            self.replicated["centers"] = state.centers
        items = {BLOCKS: blocks, **(self.replicated if runtime.is_chief else {})}
        directory = checkpoint_dir(run_dir)
        if not runtime.is_chief:
            directory = directory / f"process{runtime.process_index}"
        self.manager = tf.train.CheckpointManager(tf.train.Checkpoint(**items), str(directory),
                                                  max_to_keep=max_to_keep)

    def save(self, step: int) -> None:
        runtime = self.runtime
        try:
            self.manager.save(checkpoint_number=step)
        except (tf.errors.OpError, OSError) as err:  # a full disk, a quota, a file-size limit
            directory = Path(self.manager.directory)
            for partial in directory.glob(f"ckpt-{step}_temp*"):
                shutil.rmtree(partial, ignore_errors=True)
            good = complete_steps(self.run_dir)
            reason = (getattr(err, "message", None) or str(err)).strip().splitlines()[0]
            raise CheckpointWriteError(
                f"checkpoint of step {step}: writing {directory} failed ({reason}); the partial checkpoint was "
                f"removed; last good checkpoint: {f'step {good[-1]}' if good else 'none'}") from None
        runtime.barrier()  # every process has written its blocks before the manifest says so
        if not runtime.is_chief:
            return
        directory = checkpoint_dir(self.run_dir)
        processes = runtime.num_processes
        locations = {p: f"ckpt-{step}" if p == 0 else f"process{p}/ckpt-{step}" for p in range(processes)}
        per_process = runtime.num_replicas // processes
        manifest = {"step": step, **self.layout,
                    "blocks": {str(r): locations[r // per_process] for r in range(runtime.num_replicas)}}
        tmp = directory / f".manifest-{step}.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, directory / f"manifest-{step}.json")
        kept = {int(Path(p).name.split("-")[1]) for p in self.manager.checkpoints}
        for old in directory.glob("manifest-*.json"):
            if int(old.stem.split("-")[1]) not in kept:
                old.unlink()

    def restore(self, step: int | None = None) -> int:
        """Restore the latest complete checkpoint (or `step`) at this world size; returns its step."""
        manifest = read_manifest(self.run_dir, step)
        self._check_compatible(manifest)
        directory = checkpoint_dir(self.run_dir)
        main = str(directory / f"ckpt-{manifest['step']}")
        status = tf.train.Checkpoint(**self.replicated).restore(main).expect_partial()
        status.assert_existing_objects_matched()
        self._restore_blocks(manifest)
        return manifest["step"]

    def _check_compatible(self, manifest: dict) -> None:
        for key, now in self.layout.items():
            if key in ("world_size", "block_size"):
                continue
            if manifest.get(key) != now:
                # "centers" among the blocks or not: the run was saved with the other loss.center_sharding
                hint = " (loss.center_sharding)" if key == "sharded_variables" else ""
                raise InputError(f"checkpoint {self.run_dir}: saved with {key} = {manifest.get(key)!r}, "
                                 f"this config has {now!r}{hint}")

    def _restore_blocks(self, manifest: dict) -> None:
        """Fill this process's blocks from the saved blocks by global class id (any world size)."""
        old_block, classes = manifest["block_size"], manifest["num_classes"]
        directory = checkpoint_dir(self.run_dir)
        readers = {}

        def rows(group: str, name: str, start: int, stop: int) -> np.ndarray:
            parts = []
            for old in range(start // old_block, (stop - 1) // old_block + 1):
                location = manifest["blocks"][str(old)]
                if location not in readers:
                    readers[location] = tf.train.load_checkpoint(str(directory / location))
                tensor = readers[location].get_tensor(_block_key(old, group, name))
                lo = max(start - old * old_block, 0)
                parts.append(tensor[lo:min(stop - old * old_block, old_block)])
            return np.concatenate(parts)

        for group, variables in self.sharded.items():
            for name, var in variables.items():
                for replica, component in self.runtime.local_components(var).items():
                    size = component.shape[0]
                    start = replica * size
                    value = np.zeros(component.shape, component.dtype.as_numpy_dtype)
                    stop = min(start + size, classes)
                    if stop > start:
                        value[:stop - start] = rows(group, name, start, stop)
                    component.assign(value)


def merge_head(run_dir: str | Path, step: int | None = None) -> dict:
    """The whole head of a checkpoint by global class id: {name: [C, ...]} ("weight", "bias" for softmax, and
    "centers" when they were sharded)."""
    manifest = read_manifest(run_dir, step)
    directory = checkpoint_dir(run_dir)
    out = {}
    for name in manifest["sharded_variables"]:
        blocks = [tf.train.load_checkpoint(str(directory / manifest["blocks"][str(r)])).get_tensor(
            _block_key(r, "params", name)) for r in range(manifest["world_size"])]
        out[name] = np.concatenate(blocks)[:manifest["num_classes"]]
    return out


def restore_backbone(backbone, run_dir: str | Path) -> str:
    """Load only the backbone weights of the latest complete checkpoint (for evaluation and export)."""
    manifest = read_manifest(run_dir)
    path = str(checkpoint_dir(run_dir) / f"ckpt-{manifest['step']}")
    tf.train.Checkpoint(backbone=backbone).restore(path).expect_partial().assert_existing_objects_matched()
    return path


def load_backbone(run_dir: str | Path):
    """(the run's config, its backbone with the latest complete checkpoint's weights, that checkpoint's path)."""
    from distface.models import build_backbone

    cfg = load_run_config(run_dir)
    m = cfg.model
    backbone = build_backbone(m.backbone, m.image_size, m.embedding_size, m.dropout)
    return cfg, backbone, restore_backbone(backbone, run_dir)
