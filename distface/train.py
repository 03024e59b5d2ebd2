"""python -m distface.train --config configs/debug.yaml [--set section.key=value ...] [--resume]

Wiring only: config -> engine -> data -> model -> loop. Bad input (config, data, pairs) stops before training
with one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from distface.config import Config, ConfigError, load_config


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m distface.train", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="YAML experiment file (defaults apply to missing keys)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=100 (repeatable)")
    p.add_argument("--strategy", help="shorthand for --set train.strategy=NAME")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in train.out_dir")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    overrides = list(args.set) + ([f"train.strategy={args.strategy}"] if args.strategy else [])
    try:
        cfg = load_config(args.config, overrides)
        session = Session(cfg, resume=args.resume, quiet=args.quiet)
    except (ConfigError, ValueError, OSError) as err:
        print(f"distface: {err}", file=sys.stderr)
        return 2
    try:
        session.train()
    except TrainingStopped as err:
        print(f"distface: {err}", file=sys.stderr)
        return 1
    return 0


class TrainingStopped(RuntimeError):
    """Training cannot go on (diverged); the checkpoints on disk are good."""


@contextlib.contextmanager
def precision_policy(mode: str):
    """Build the backbone under a Keras mixed-precision policy; heads and losses stay float32."""
    import tensorflow as tf

    previous = tf.keras.mixed_precision.global_policy()
    if mode != "none":
        tf.keras.mixed_precision.set_global_policy(f"mixed_{mode}")
    try:
        yield
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)


class Session:
    """Everything a run needs, built (and validated) before the first step."""

    def __init__(self, cfg: Config, resume: bool = False, quiet: bool = False):
        import tensorflow as tf

        from distface.checkpoint import Checkpointer, checkpoint_dir, complete_steps, save_config
        from distface.eval.runner import verification_sets
        from distface.heads.sharded import build_head
        from distface.loop import Trainer
        from distface.models import build_backbone
        from distface.monitor import Monitor
        from distface.optim import MomentumSGD
        from distface.parallel import build_engine

        self.cfg = cfg
        self.out_dir = Path(cfg.train.out_dir)
        if not resume and checkpoint_dir(self.out_dir).is_dir() and any(checkpoint_dir(self.out_dir).iterdir()):
            raise ValueError(f"train.out_dir: {self.out_dir} already holds checkpoints; "
                             "pass --resume to continue or choose another train.out_dir")
        self.engine = engine = build_engine(cfg.train.strategy, cfg.train.cpu_replicas)
        source, num_classes = train_source(cfg)
        if engine.is_chief:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.num_classes = num_classes
        self.vsets = verification_sets(cfg.eval, cfg.model.image_size, self.out_dir) if engine.is_chief else []

        tf.keras.utils.set_random_seed(cfg.train.seed)
        with engine.scope(), precision_policy(cfg.train.mixed_precision):
            backbone = build_backbone(cfg.model.backbone, cfg.model.image_size, cfg.model.embedding_size,
                                      cfg.model.dropout)
        head = None if cfg.loss.type == "triplet" else \
            build_head(cfg.head, engine, num_classes, cfg.model.embedding_size, seed=cfg.train.seed)
        optimizer = MomentumSGD(cfg.optim, cfg.train.steps, engine)
        self.trainer = Trainer(cfg, engine, backbone, head, optimizer, num_classes)
        self.checkpointer = Checkpointer(self.trainer, self.out_dir, cfg.train.keep_checkpoints)
        self.monitor = Monitor(str(self.out_dir / "tb"), cfg.train.steps, self.trainer.global_batch,
                               enabled=engine.is_chief, quiet=quiet)
        if resume and complete_steps(self.out_dir):
            step = self.checkpointer.restore()
            self.monitor.say(f"resumed from {checkpoint_dir(self.out_dir)}/ckpt-{step} at step {step}")
        elif resume:
            self.monitor.say(f"--resume: no complete checkpoint in {checkpoint_dir(self.out_dir)}, starting at step 0")
        # Distribution: replicas start from the chief's replicated state (head blocks stay per replica).
        engine.broadcast_from_chief(self.trainer.replicated_state())
        if engine.is_chief:
            save_config(cfg, self.out_dir)
        # Exact resume: the data stream is a function of the seed, so skip the batches already trained on.
        consumed = int(self.trainer.step.numpy()) * (engine.num_replicas // engine.num_processes)
        self.dataset = engine.distribute_dataset(
            lambda shards, index: training_batches(cfg, source, shards, index, consumed))

    def train(self) -> list[dict]:
        cfg, trainer, monitor = self.cfg, self.trainer, self.monitor
        start = int(trainer.step.numpy())
        objective = "triplet" if trainer.head is None else f"{cfg.head.type} ({cfg.head.sharding} head)"
        monitor.say(f"training {cfg.model.backbone} + {objective} on {self.num_classes} identities | "
                    f"engine {self.engine.name} x{self.engine.num_replicas} | global batch "
                    f"{trainer.global_batch} | steps {start}..{cfg.train.steps} | out {self.out_dir}")
        began = time.perf_counter()
        saved = start  # a resumed run starts from a saved step
        monitor.start(start)
        for step in range(start + 1, cfg.train.steps + 1):
            metrics = trainer.train_step(*next(self.dataset))
            checkpoint = cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0
            if step % cfg.train.log_every == 0 or step == cfg.train.steps or checkpoint:
                monitor.log_step(step, metrics, trainer.learning_rate())
                self._check_finite(metrics)
            if checkpoint:
                self.checkpointer.save(step)
                saved = step
            if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step != cfg.train.steps:
                self.evaluate(step)
                monitor.start(step)  # keep eval time out of the images/s figure
        # Decided from this process's own history, never from the disk: every process must call save() alike.
        if saved != cfg.train.steps:
            self.checkpointer.save(cfg.train.steps)
        monitor.say(f"trained {cfg.train.steps - start} steps in {time.perf_counter() - began:.0f} s")
        result = self.evaluate(cfg.train.steps)
        monitor.close()
        return result

    def _visualize(self, vset, embeddings, step: int) -> None:
        """Projector of the eval embeddings (identity labels, image sprite); for 2-D features the center-loss
        paper's feature-plane figure of the raw (unnormalised) features."""
        from distface.visualize import feature_plane_image, log_image, write_projector

        write_projector(self.out_dir / "tb", vset.name, embeddings, vset.identities, vset.images, step)
        if self.cfg.model.embedding_size == 2 and self.monitor.writer is not None:
            features = self.trainer.backbone(vset.images, training=False).numpy()
            names = sorted(set(vset.identities))
            labels = np.array([names.index(n) for n in vset.identities])
            log_image(self.monitor.writer, f"features/{vset.name}", feature_plane_image(features, labels), step)

    def _check_finite(self, metrics) -> None:
        from distface.checkpoint import complete_steps

        streak = int(metrics["train/bad_streak"])
        if streak >= self.cfg.train.max_bad_steps:
            raise TrainingStopped(
                f"stopped: {streak} steps in a row had a non-finite loss or gradient (none of them changed the "
                f"model); last good checkpoint: step {(complete_steps(self.out_dir) or ['none yet'])[-1]}. "
                f"Lower optim.lr or set optim.clip_norm.")

    def evaluate(self, step: int) -> list[dict]:
        """Verify on every configured set; one line each, TensorBoard scalars, a record in eval.jsonl."""
        from distface.eval.runner import evaluate_backbone, format_result

        records = []
        for vset in self.vsets:
            result, embeddings = evaluate_backbone(self.trainer.backbone, vset, self.cfg.eval)
            if vset.identities:
                self._visualize(vset, embeddings, step)
            self.monitor.say(f"eval step {step} | {format_result(vset.name, result)}")
            values = {"accuracy": result.accuracy, "val": result.val, "auc": result.auc, "eer": result.eer}
            self.monitor.scalars(step, {f"eval/{vset.name}/{k}": v for k, v in values.items()})
            records.append({"step": step, "pairs": vset.name, **dataclasses.asdict(result)})
            with open(self.out_dir / "eval.jsonl", "a") as f:
                f.write(json.dumps(records[-1]) + "\n")
        return records


def training_batches(cfg: Config, source, num_shards: int, shard_index: int, skip_batches: int = 0):
    """This shard's endless training batches: shuffled examples, or P x K identity-balanced for triplets;
    `skip_batches` continues an interrupted run's stream."""
    from distface.data.balanced import balanced_dataset
    from distface.data.pipeline import train_dataset

    d, size = cfg.data, tuple(cfg.model.image_size)
    if cfg.loss.type == "triplet":
        return balanced_dataset(source, identities_per_batch=d.identities_per_batch,
                                images_per_identity=d.images_per_identity, image_size=size, seed=cfg.train.seed,
                                flip=d.flip, num_shards=num_shards,
                                shard_index=shard_index).skip(skip_batches)
    return train_dataset(source, image_size=size, batch_size=d.batch_size, seed=cfg.train.seed,
                         shuffle_buffer=d.shuffle_buffer, flip=d.flip, num_shards=num_shards,
                         shard_index=shard_index, cache=d.cache, skip_batches=skip_batches)


def train_source(cfg: Config):
    """(source for train_dataset, number of classes) from the data section."""
    from distface.data.folders import scan_identity_folders
    from distface.data.orl import orl_split
    from distface.data.synthetic import synthetic_images
    from distface.data.validate import screen_images

    d = cfg.data
    if d.source in ("orl", "folder"):
        images = orl_split(d.train_identities) if d.source == "orl" else scan_identity_folders(d.path)
        kept, bad = screen_images(images, d.bad_images)
        if bad:
            shown = "; ".join(f"{path}: {problem}" for path, problem in bad[:3])
            print(f"distface: left out {len(bad)} of {len(images)} images that are not complete image files "
                  f"(data.bad_images: skip): {shown}{' ...' if len(bad) > 3 else ''}", file=sys.stderr)
        return kept, images.num_classes
    if d.source == "recordio":
        from distface.data.recordio import RecordIOSource

        records = RecordIOSource(d.path)
        return records, records.num_classes
    if d.source == "tfrecord":
        from distface.data.tfrecord import TFRecordSource

        records = TFRecordSource(d.path)
        return records, records.num_classes
    arrays = synthetic_images(d.synthetic_identities, d.synthetic_images_per_identity,
                                      tuple(cfg.model.image_size), seed=cfg.train.seed)
    return arrays, d.synthetic_identities


if __name__ == "__main__":
    sys.exit(main())
