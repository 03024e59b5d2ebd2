"""A run built from its config: config -> runtime -> data -> state -> step -> checkpoints -> evaluation, each
piece checked before anything is written (the wiring the train command and the figures run)."""
from __future__ import annotations

import contextlib
import shutil
import sys
import time
from pathlib import Path

from distface.config import Config, InputError
from distface.training.schedules import describe_epochs, describe_rate, global_batch, resolve_epochs


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


@contextlib.contextmanager
def removed_if_refused(out_dir: Path, chief: bool):
    """The run folder (the chief makes it) for a block that writes into it and may still refuse the run: a
    folder this block made is removed again when it raises."""
    made = chief and not out_dir.exists()
    if chief:
        out_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        if made:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise


def published_size_problem(cfg: Config, training_set) -> str | None:
    """The one-line error when the set differs from a recipe's published size (data.num_classes, data.num_images;
    0: any size), else None. Images left out as broken (data.bad_images: skip) still count: the published size
    is the set's, not the run's."""
    where = f"data.path {cfg.data.path}" if cfg.data.path else f"data.source {cfg.data.source}"
    held = {"num_classes": training_set.num_classes,
            "num_images": training_set.num_images + len(training_set.left_out)}
    for key, noun in (("num_classes", "identities"), ("num_images", "images")):
        expected = getattr(cfg.data, key)
        if expected and expected != held[key]:
            return (f"data.{key}: the config expects {expected:,} {noun}, {where} has {held[key]:,} "
                    f"(set data.{key}=0 to train on this set as it is)")
    return None


def sized_to_data(cfg: Config, training_set, num_replicas: int) -> list[str]:
    """Checks the set against the published size, then sets train.steps and optim.warmup_steps from
    train.epochs and optim.warmup_epochs (training/schedules.py); returns the start lines that say so."""
    problem = published_size_problem(cfg, training_set)
    if problem:
        raise InputError(problem)
    batch = global_batch(cfg, num_replicas)
    lines = [describe_epochs(cfg, training_set.num_images, batch), describe_rate(cfg.optim, batch)]
    sized = resolve_epochs(cfg, training_set.num_images, batch)
    cfg.train.steps, cfg.optim.warmup_steps = sized.steps, sized.warmup_steps
    return [line for line in lines if line]


class Session:
    """Everything a run needs, built (and validated) before the first step, in the order each piece needs the
    previous: the runtime places variables, the training set gives the class count, the state holds the
    variables, the checkpoint restores them, and only then the data stream knows where to start."""

    def __init__(self, cfg: Config, resume: bool = False, quiet: bool = False, name: str = "default"):
        """name: the config's name, which a run folder chosen for an empty train.out_dir starts with."""
        import tensorflow as tf

        from distface.data.batches import BATCHES, batches_plan
        from distface.data.failures import BadRecords
        from distface.data.sources import train_source
        from distface.eval.records import Evaluator, NoEvaluation
        from distface.models import build_backbone
        from distface.parallel import build_engine
        from distface.progress import Progress
        from distface.training.checkpoint import (Checkpointer, check_resume, checkpoint_dir, complete_steps,
                                                  read_manifest, save_config)
        from distface.training.monitor import Monitor
        from distface.training.objectives import OBJECTIVES
        from distface.training.optim import Optimizer
        from distface.training.run_folder import choose_run_folder
        from distface.training.state import TrainState
        from distface.training.trainer import Trainer

        self.cfg = cfg
        self.runtime = runtime = build_engine(cfg.train.strategy, cfg.train.cpu_replicas)
        new_folder = False
        if not cfg.train.out_dir:
            folder, earlier = choose_run_folder(name, resume, runtime)
            cfg.train.out_dir, new_folder = str(folder), not earlier
        self.out_dir = out_dir = Path(cfg.train.out_dir)
        if not resume and checkpoint_dir(out_dir).is_dir() and any(checkpoint_dir(out_dir).iterdir()):
            raise InputError(f"train.out_dir: {out_dir} already holds checkpoints; "
                             "pass --resume to continue or choose another train.out_dir")
        saved = check_resume(cfg, out_dir) if resume and complete_steps(out_dir) else None
        # Nothing is written until every check has passed (the data, the batch, the model, a resume, the
        # verification sets): a refused run leaves no folder behind and adds nothing to a resumed one.
        self.training_set = train_source(cfg, Progress("screened", quiet or not runtime.is_chief))
        # Epochs become steps here, before anything reads train.steps (the monitor, the schedule).
        start_lines = sized_to_data(cfg, self.training_set, runtime.num_replicas)
        self.objective_cls = OBJECTIVES[cfg.loss.type]
        # Distribution: one input pipeline per process (its shard of the set).
        plan = batches_plan(self.objective_cls.batches, cfg, self.training_set.source, runtime.num_processes,
                            runtime.process_index)
        # TensorBoard's event file appears at the first scalar written.
        self.monitor = Monitor(str(out_dir / "tb"), cfg.train.steps, global_batch(cfg, runtime.num_replicas),
                               enabled=runtime.is_chief, quiet=quiet)
        if runtime.is_chief:  # rank 0 speaks (and only it decodes the few images the resize warning looks at)
            for line in (self.training_set.summary(), self.training_set.resize_warning(cfg.model.image_size)):
                if line:
                    print(f"distface: {line}", file=sys.stderr)
        for line in [plan, *start_lines]:
            if line:
                self.monitor.say(line)

        tf.keras.utils.set_random_seed(cfg.train.seed)
        with runtime.scope(), precision_policy(cfg.train.mixed_precision):
            # Distribution: model.sync_batchnorm computes BatchNorm statistics over the runtime's collectives.
            backbone = build_backbone(cfg.model.backbone, cfg.model.image_size, cfg.model.embedding_size,
                                      cfg.model.dropout, runtime.collectives if cfg.model.sync_batchnorm else None)
        self.objective = self.objective_cls(cfg, runtime, self.training_set.num_classes)
        self.state = TrainState(runtime, backbone, self.objective, cfg.train.mixed_precision == "float16")
        optimizer = Optimizer(cfg.optim, cfg.train.steps, runtime, global_batch(cfg, runtime.num_replicas))
        self.trainer = Trainer(cfg, runtime, self.state, self.objective, optimizer)
        head = self.state.head
        layout = {"num_classes": self.training_set.num_classes, "embedding_size": cfg.model.embedding_size,
                  "head": None if head is None else head.kind, "block_size": None if head is None else head.block_size}
        self.checkpointer = Checkpointer(self.state, runtime, layout, out_dir, cfg.train.keep_checkpoints)
        if saved is not None:
            step = self.checkpointer.restore()
            self.monitor.say(f"resumed from {checkpoint_dir(out_dir)}/ckpt-{step} at step {step}")
            before = global_batch(saved, read_manifest(out_dir, step)["world_size"])
            if before != self.trainer.global_batch:
                next_rate = float(self.trainer.optimizer.schedule(self.state.step))
                self.monitor.say(f"the global batch is now {self.trainer.global_batch} (saved at {before}); "
                                 f"learning rate in use {next_rate:.4g} (optim.lr "
                                 f"{cfg.optim.lr:g}; docs/scaling.md: batch size and learning rate)")
        elif resume and new_folder:
            self.monitor.say(f"--resume: no earlier run of {name} in {out_dir.parent}/, starting {out_dir} at step 0")
        elif resume:
            self.monitor.say(f"--resume: no complete checkpoint in {checkpoint_dir(out_dir)}, starting at step 0")
        with removed_if_refused(out_dir, runtime.is_chief):  # the default ORL pairs file is written, then read
            self.evaluate = Evaluator(cfg, out_dir, self.monitor) if runtime.is_chief else NoEvaluation()
        # Distribution: replicas start from the chief's replicated state (head blocks stay per replica).
        runtime.broadcast_from_chief(self.state.replicated_state())
        if runtime.is_chief:
            save_config(cfg, out_dir)
        # Exact resume: the data stream is a function of the seed; the runtime skips the batches trained on.
        # Images that cannot be decoded are dropped and counted there, or stop the run (data.bad_images).
        make_batches = BATCHES[self.objective.batches]
        self.bad_records = BadRecords(cfg.data.bad_images)
        self.dataset = runtime.distribute_dataset(
            lambda shards, index, skip: make_batches(cfg, self.training_set.source, shards, index, skip,
                                                     self.bad_records),
            int(self.state.step.numpy()))

    def train(self) -> list[dict]:
        """Train to train.steps, then the final evaluation (its records)."""
        from distface.training.trainer import train_loop

        cfg, monitor = self.cfg, self.monitor
        start = int(self.state.step.numpy())
        monitor.say(f"training {cfg.model.backbone} + {self.objective.describe(cfg)} | engine "
                    f"{self.runtime.name} x{self.runtime.num_replicas} | global batch {self.trainer.global_batch} | "
                    f"steps {start}..{cfg.train.steps} | out {self.out_dir}")
        began = time.perf_counter()
        train_loop(self.trainer, self.dataset, self.checkpointer, self.evaluate, monitor, self.bad_records)
        monitor.say(f"trained {cfg.train.steps - start} steps in {time.perf_counter() - began:.0f} s")
        result = self.evaluate(self.state.backbone, cfg.train.steps)
        monitor.close()
        # Distribution: the processes leave together. A worker that exits while the chief still evaluates stops
        # sending heartbeats, and MultiWorkerMirrored's coordination service then reports it as a crashed task.
        self.runtime.barrier()
        return result
