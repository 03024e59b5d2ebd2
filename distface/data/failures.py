"""Which elements of a tf.data stream could not be decoded, without giving up the stream or the parallel map.

`Dataset.ignore_errors` drops an element whose map failed but says nothing of which. So every element carries its
position in the stream; a gap in the positions that come out is what was dropped, and the position names it. The
reason is found again by decoding that one element eagerly, which costs nothing while no element fails.

- decode_each: a finite list (screening, verification sets): (index, result or None) of every item, in order.
- BadRecords: an endless training stream (data.bad_images at training time): positions reported from the
  tf.data threads, named on the training loop's thread when it asks.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from distface.config import InputError


def decode_each(items: Sequence, fn: Callable, batch_size: int = 64) -> Iterator[tuple[int, np.ndarray | None]]:
    """(index, fn(item) as numpy, or None where fn raised) for every item in order; fn runs in parallel and its
    results (of one shape) come out of TensorFlow batch_size at a time."""
    if not len(items):
        return
    ds = tf.data.Dataset.from_tensor_slices(list(items)).enumerate()
    ds = ds.map(lambda i, item: (i, fn(item)), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    expected = 0
    for indices, values in ds.ignore_errors().batch(batch_size).prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
        for index, value in zip(indices.tolist(), values):
            for missing in range(expected, index):
                yield missing, None
            yield index, value
            expected = index + 1
    for missing in range(expected, len(items)):
        yield missing, None


def failure_reason(fn: Callable, item) -> str:
    """Why fn(item) fails, in one line (TensorFlow's message without its op and function decorations)."""
    try:
        fn(tf.constant(item))
    except (tf.errors.OpError, OSError, ValueError) as err:
        text = getattr(err, "message", None) or str(err)
        line = next((part for part in text.splitlines() if part.strip()), type(err).__name__)
        if line.startswith("{{function_node"):
            line = line.split("}}", 1)[-1]
        return line.split(" [Op:")[0].strip()
    return "it decodes now (the file changed while training)"


class BadRecord(InputError):
    """data.bad_images: fail met a record of the training stream that cannot be decoded."""


class BadRecords:
    """The records one process's training stream dropped because they could not be decoded.

    policy "skip": dropped and counted (lines() names them, count is the TensorBoard scalar); "fail": the
    stream stops at the first (failure() names it). The stream counts positions; `resolve(position) ->
    (record, reason)`, set by the stream's builder, names them on the caller's thread, never inside tf.data.
    """

    def __init__(self, policy: str):
        if policy not in ("fail", "skip"):
            raise InputError(f"data.bad_images: must be fail or skip, got {policy!r}")
        self.policy = policy
        self.resolve: Callable[[int], tuple[str, str]] | None = None
        self._positions: list[int] = []
        self._named = 0
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return len(self._positions)

    def watch(self, ds: tf.data.Dataset, start: int) -> tf.data.Dataset:
        """ds: (position, ...) with failed elements already dropped (ignore_errors), positions increasing from
        `start`. The same elements, after reporting each gap; under "fail" the first gap ends the stream."""
        def gap(last, element):
            return element[0], (last + 1, element)

        def report(first, element):
            noted = tf.cond(element[0] > first,
                            lambda: tf.numpy_function(self._note, [first, element[0]], tf.int64, stateful=True),
                            lambda: tf.constant(0, tf.int64))
            with tf.control_dependencies([noted]):
                return tuple(tf.identity(t) for t in element)

        # Sequential on purpose: one scan step and one comparison per element, in stream order.
        return ds.scan(tf.constant(start - 1, tf.int64), gap).map(report)

    def _note(self, first: np.int64, end: np.int64) -> np.int64:
        with self._lock:
            if self.policy == "skip":
                self._positions.extend(range(int(first), int(end)))
            elif not self._positions:  # a prefetch may read on past the failure (the next epoch): keep the first
                self._positions.append(int(first))
        if self.policy == "fail":
            raise RuntimeError("a record cannot be decoded (data.bad_images: fail)")
        return np.int64(end - first)

    def lines(self) -> list[str]:
        """One line for each record dropped since the last call."""
        with self._lock:
            new, self._named = self._positions[self._named:], len(self._positions)
        return [f"skipped a record that cannot be decoded (data.bad_images: skip): {self._name(p)}" for p in new]

    def failure(self) -> str:
        """The first dropped record, as the message that stops a run under "fail"."""
        return (f"{self._name(self._positions[0])} (data.bad_images: fail; set it to skip to train without such "
                "records)")

    def _name(self, position: int) -> str:
        if self.resolve is None:
            return f"element {position} of the stream"
        record, reason = self.resolve(position)
        return f"{record}: {reason}"
