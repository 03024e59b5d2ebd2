"""The training step: tape, per-replica partial loss, gradient reduction, clipping, update, statistics.

The step follows the engine's gradient convention (distface/parallel/engine.py): each replica's loss is its
share of the global loss (its own examples' terms over the global count); replicated gradients are summed
across replicas, sharded (head block) gradients stay local.
"""
from __future__ import annotations

import sys
from typing import NamedTuple

import tensorflow as tf

from distface.config import Config
from distface.ops import gradients
from distface.ops.row_gradient import RowGradient
from distface.training.state import REPLICATED, SHARDED, TrainState

LOSS_SCALE_PERIOD = 2000  # good float16 steps before the loss scale doubles


class StepMetrics(NamedTuple):
    scalars: dict  # name -> float32 scalar, already reduced over replicas
    histograms: dict  # name -> the global batch's values
    in_place_misses: tf.Tensor  # block updates that did not reach their variable, over replicas (ops/rows_in_place)


class Trainer(tf.Module):
    """One training step over a TrainState: the objective gives the loss, the optimizer the update rule."""

    def __init__(self, cfg: Config, runtime, state: TrainState, objective, optimizer):
        super().__init__(name="trainer")
        self.cfg = cfg
        self.runtime = runtime
        self.state = state
        self.objective = objective
        self.optimizer = optimizer
        self.micro_batch = cfg.data.batch_size * runtime.num_replicas  # the examples of one forward, globally
        self.global_batch = self.micro_batch * cfg.train.accumulate_steps  # the examples of one update
        self.variables_by_group = state.trainable()
        state.slots = optimizer.build(self.variables_by_group)

    def _replica_step(self, images, labels):
        cfg, runtime, state = self.cfg, self.runtime, self.state
        collectives = runtime.collectives
        loss_scale = state.counters.get("loss_scale")
        moving = [tf.identity(v) for v in state.backbone.non_trainable_variables]  # BN statistics before
        steps = cfg.train.accumulate_steps
        micro = [(images, labels)] if steps == 1 else [(images[k], labels[k]) for k in range(steps)]
        grads, loss, ratios, histograms, embeddings = None, 0.0, {}, {}, []
        # Accumulation: each micro-batch's loss is the mean over its global micro-batch, divided by their count,
        # so the summed gradient is that of the mean over all of them; one reduction and one update follow.
        for part_images, part_labels in micro:
            with tf.GradientTape() as tape:
                part_embeddings = state.backbone(part_images, training=True)
                part_loss, metrics, row_factors = self.objective.loss(collectives, part_embeddings, part_labels,
                                                                      state.step, self.micro_batch)
                part_loss = part_loss / steps
                scaled = part_loss if loss_scale is None else part_loss * loss_scale
            part = self._gradients(tape, scaled, row_factors)
            grads = part if grads is None else _each(lambda a, b: a.plus(b), grads, part)
            loss += part_loss
            embeddings.append(part_embeddings)
            for name, (numerator, denominator) in metrics.ratios.items():
                total = ratios.get(name, (0.0, 0.0))
                ratios[name] = (total[0] + numerator, total[1] + denominator)
            for name, values in metrics.histograms.items():
                histograms.setdefault(name, []).append(values)
        if loss_scale is not None:
            grads = _each(lambda g: g.scaled(1.0 / loss_scale), grads)
        reduced = runtime.reduce_gradients({n: None if g is None else g.tensor for n, g in grads[REPLICATED].items()})
        grads = {REPLICATED: {n: gradients.of(g) for n, g in reduced.items()}, SHARDED: grads[SHARDED]}
        # A step is good only if the loss and every gradient, on every replica, are finite.
        bad = tf.add_n([g.non_finite_count() for g in _flat(grads)] + [_non_finite(loss)])
        ok = collectives.all_reduce_sum(bad) == 0
        # The guard's limit reached: the step changes nothing, its counts included, until the loop sees the streak
        # (it reads it every few steps, not after each: no host sync per step), so the run stops at the limit.
        live = state.counters["bad_streak"] < cfg.train.max_bad_steps
        if cfg.optim.clip_norm > 0:
            grads = self._clip(grads)
        apply = ok & live  # one predicate for every branch on it: one copy to the host per step on a GPU
        misses = self.optimizer.apply(grads, self.variables_by_group, state.slots, state.step, apply)
        for var, before in zip(state.backbone.non_trainable_variables, moving):
            var.assign(tf.where(apply, var, before))
        self.objective.after_update(runtime, _joined(embeddings), _joined([labels_ for _, labels_ in micro]), apply)
        self._count_step(ok, live)

        counters = state.counters
        ratios["loss"] = (loss, 1.0 / runtime.num_replicas)
        ratios["train/skipped_steps"] = (tf.cast(counters["skipped"], tf.float32), 1.0)
        if loss_scale is not None:
            ratios["train/loss_scale"] = (loss_scale, 1.0)
        names = sorted(ratios)
        totals = collectives.all_reduce_sum(tf.stack([tf.cast(v, tf.float32) for n in names for v in ratios[n]]
                                                     + [misses]))
        scalars = {n: totals[2 * i] / tf.maximum(totals[2 * i + 1], 1e-12) for i, n in enumerate(names)}
        return StepMetrics(scalars, {n: collectives.all_gather(_joined(v)) for n, v in histograms.items()},
                           totals[-1])

    def _gradients(self, tape, loss, row_factors) -> dict:
        """The tape's gradients by group. A block with row factors is differentiated at its scores instead: its
        gradient is a RowGradient (ops/row_gradient.py), and its dense gradient is never computed."""
        sharded = self.variables_by_group[SHARDED]
        sources = {REPLICATED: self.variables_by_group[REPLICATED],
                   SHARDED: {n: row_factors[n].scores if n in row_factors else v for n, v in sharded.items()}}
        grads = tape.gradient(loss, sources)
        grads[SHARDED] = {n: RowGradient.from_upstream(g, row_factors[n]) if n in row_factors else g
                          for n, g in grads[SHARDED].items()}
        return _each(gradients.of, grads)

    def _count_step(self, ok, live):
        runtime, counters = self.runtime, self.state.counters
        bad, counted = tf.cast(~ok, tf.int64), tf.cast(live, tf.int64)
        runtime.assign(self.state.step, self.state.step + counted)
        runtime.assign(counters["skipped"], counters["skipped"] + bad * counted)
        runtime.assign(counters["bad_streak"], tf.where(live, (counters["bad_streak"] + bad) * bad,
                                                        counters["bad_streak"]))
        if "loss_scale" in counters:  # halve on overflow, double after LOSS_SCALE_PERIOD good steps
            good = tf.where(ok, counters["good_steps"] + 1, 0)
            grow = good >= LOSS_SCALE_PERIOD
            scale = counters["loss_scale"]
            runtime.assign(counters["good_steps"], tf.where(live, tf.where(grow, tf.zeros_like(good), good),
                                                            counters["good_steps"]))
            runtime.assign(scale, tf.where(live, tf.where(ok, tf.where(grow, scale * 2.0, scale), scale * 0.5),
                                           scale))

    def _clip(self, grads):
        """Scale the clipped gradients by min(1, clip_norm / (norm + 1e-6)) (torch.nn.utils.clip_grad_norm_'s rule),
        norm over every gradient (optim.clip_scope: all) or the backbone's only (backbone); a sharded block holds
        only its rows' part of the norm."""
        def clipped(group, name):
            return self.cfg.optim.clip_scope == "all" or (group == REPLICATED and name.startswith("backbone/"))

        def squares(group):
            parts = [g.square_sum() for n, g in grads[group].items() if g is not None and clipped(group, n)]
            return tf.add_n(parts or [tf.zeros([])])

        sharded = squares(SHARDED)
        if self.cfg.optim.clip_scope == "all":
            sharded = self.runtime.collectives.all_reduce_sum(sharded)
        norm = tf.sqrt(squares(REPLICATED) + sharded)
        scale = tf.minimum(1.0, self.cfg.optim.clip_norm / (norm + 1e-6))
        return {group: {n: g.scaled(scale) if g is not None and clipped(group, n) else g for n, g in items.items()}
                for group, items in grads.items()}

    @tf.function
    def train_step(self, images, labels) -> StepMetrics:
        return self.runtime.run(self._replica_step, images, labels)

    def learning_rate(self) -> float:
        return float(self.optimizer.schedule(self.state.step - 1))


def _each(fn, *grads) -> dict:
    """fn over the gradients of {group: {name: gradient}} dicts that share their names (None stays None)."""
    return {group: {name: None if grads[0][group][name] is None else fn(*(g[group][name] for g in grads))
                    for name in grads[0][group]}
            for group in grads[0]}


def _flat(grads: dict) -> list:
    return [g for items in grads.values() for g in items.values() if g is not None]


def _non_finite(tensor) -> tf.Tensor:
    return tf.reduce_sum(tf.cast(~tf.math.is_finite(tensor), tf.float32))


def _joined(parts: list):
    return parts[0] if len(parts) == 1 else tf.concat(parts, 0)


class TrainingStopped(RuntimeError):
    """Training cannot go on (diverged); the checkpoints on disk are good."""


def train_loop(trainer: Trainer, batches, checkpointer, evaluate, monitor, bad_records=None) -> None:
    """The cadence of a run from the state's step to train.steps: log, check the guard, checkpoint, evaluate
    between checkpoints, and a final checkpoint. bad_records (distface.data.failures.BadRecords): the stream's
    undecodable records, named and counted at each log step, or (data.bad_images: fail) raised as BadRecord."""
    cfg = trainer.cfg.train
    start = int(trainer.state.step.numpy())
    saved = start  # a resumed run starts from a saved step
    # The streak is read every `guard_every` steps (and before each log, checkpoint and evaluation): never after
    # more steps than the limit, and the steps past the limit change nothing (Trainer), so the run stops there.
    guard_every = min(cfg.max_bad_steps, cfg.log_every)
    monitor.start(start)
    for step in range(start + 1, cfg.steps + 1):
        metrics = trainer.train_step(*_next_batch(batches, bad_records))
        checkpoint = cfg.checkpoint_every and step % cfg.checkpoint_every == 0
        evaluation = cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps
        log = step % cfg.log_every == 0 or step == cfg.steps or checkpoint
        if log:
            monitor.log_step(step, metrics, trainer.learning_rate())
            _report_bad_records(bad_records, monitor, step, trainer.runtime.is_chief)
        if log or evaluation or step % guard_every == 0:
            _check_streak(trainer, checkpointer, cfg.max_bad_steps)
            _check_in_place(trainer, metrics)
        if checkpoint:
            checkpointer.save(step)
            saved = step
        if evaluation:
            evaluate(trainer.state.backbone, step)
            monitor.start(step)  # keep eval time out of the images/s figure
    # Decided from this process's own history, never from the disk: every process must call save() alike.
    if saved != cfg.steps:
        checkpointer.save(cfg.steps)


def _next_batch(batches, bad_records):
    """The next batch; a stream stopped by data.bad_images: fail raises BadRecord naming the record."""
    try:
        return next(batches)
    except tf.errors.OpError:
        if bad_records is None or not bad_records.count:
            raise  # not a record of ours: keep TensorFlow's traceback
        from distface.data.failures import BadRecord

        raise BadRecord(bad_records.failure()) from None


def _report_bad_records(bad_records, monitor, step: int, is_chief: bool) -> None:
    """Name the records skipped since the last log step (each process its own shard's: only it knows them) and
    write their count (the chief's shard) to TensorBoard."""
    if bad_records is None or bad_records.policy != "skip":  # under fail the stream's error names the record
        return
    for line in bad_records.lines():
        print(f"distface: {line}", file=sys.stderr, flush=True)
    if is_chief:
        monitor.scalars(step, {"data/skipped_records": bad_records.count})


def _check_in_place(trainer: Trainer, metrics: StepMetrics) -> None:
    """Stops the run if this step's in-place block updates missed their variables. Read with the streak, not every
    step (no host sync per step): every known cause (ops/rows_in_place.NOT_IN_PLACE) holds from the step it
    starts on, so the step read sees it, and a missed write leaves the block unchanged rather than corrupt."""
    if float(metrics.in_place_misses) > 0:
        from distface.ops.rows_in_place import NOT_IN_PLACE

        names = ", ".join(trainer.variables_by_group[SHARDED]) or "the head"
        raise TrainingStopped(f"stopped: {NOT_IN_PLACE.format(names=names)}")


def _check_streak(trainer: Trainer, checkpointer, max_bad_steps: int) -> None:
    from distface.training.checkpoint import complete_steps

    streak = int(trainer.state.counters["bad_streak"].numpy())
    if streak >= max_bad_steps:
        raise TrainingStopped(
            f"stopped: {streak} steps in a row had a non-finite loss or gradient (none of them changed the "
            f"model); last good checkpoint: step {(complete_steps(checkpointer.run_dir) or ['none yet'])[-1]}. "
            f"Lower optim.lr or set optim.clip_norm.")
