"""Progress lines and TensorBoard scalars. Only the chief writes (docs/design.md: rank 0 speaks)."""
from __future__ import annotations

import sys
import time

import tensorflow as tf

from distface.progress import format_duration


class Monitor:
    def __init__(self, logdir: str | None, total_steps: int, global_batch: int, enabled: bool = True,
                 quiet: bool = False, stream=sys.stdout):
        self.enabled = enabled
        self.quiet = quiet or not enabled
        self.total_steps = total_steps
        self.global_batch = global_batch
        self.stream = stream
        self.logdir = logdir if enabled else None
        self._writer = None
        self._mark = None

    @property
    def writer(self):
        """The TensorBoard writer (None when this process writes none), created at its first use: a run
        refused while it is being set up leaves no event file."""
        if self._writer is None and self.logdir:
            self._writer = tf.summary.create_file_writer(self.logdir)
        return self._writer

    def start(self, step: int) -> None:
        self._mark = (time.perf_counter(), step)

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.stream, flush=True)

    def scalars(self, step: int, values: dict, histograms: dict | None = None) -> None:
        if self.writer is None:
            return
        with self.writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, float(value))
            for name, value in (histograms or {}).items():
                tf.summary.histogram(name, value)
        self.writer.flush()

    def log_step(self, step: int, metrics, lr: float) -> None:
        """Print step, loss, lr, images/s and ETA since the last call; write the step's scalars and histograms
        (trainer.StepMetrics)."""
        now = time.perf_counter()
        last_time, last_step = self._mark
        rate = (step - last_step) * self.global_batch / max(now - last_time, 1e-9)
        self._mark = (now, step)
        eta = (self.total_steps - step) * self.global_batch / max(rate, 1e-9)
        values = {k: float(v) for k, v in metrics.scalars.items()}
        values.update({"lr": lr, "throughput/images_per_sec": rate})
        self.scalars(step, values, metrics.histograms)
        angle = f" | θy {values['angle/target_deg']:.1f}°" if "angle/target_deg" in values else ""
        if values.get("train/skipped_steps"):
            angle += f" | skipped {values['train/skipped_steps']:.0f} non-finite"
        self.say(f"step {step:>6}/{self.total_steps} | loss {values['loss']:.4f}{angle} | lr {lr:.4g} | "
                 f"{rate:,.0f} img/s | eta {format_duration(eta)}")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
