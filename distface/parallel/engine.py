"""The collective interface that heads, losses and the loop call; the only seam where distribution enters.

Gradient convention (every engine follows it, tests/test_engine*.py check it):
- each replica computes a PARTIAL loss: the sum of its own examples' losses divided by the GLOBAL batch size,
  so the sum of the replicas' partial losses is the single-device mean loss;
- `reduce_gradients` SUMS the replicated (backbone) gradients across replicas, giving the single-device gradient;
- `all_gather(x)` concatenates the replicas' x along axis 0; its gradient hands every replica the SUM over
  replicas of the upstream gradient for its own slice (each replica's loss term may depend on every slice);
- `all_reduce_sum` is linear: its gradient is the all-reduce sum of the upstream gradients;
- `all_reduce_max` is used only for numerical shifts (softmax max) and carries no gradient.
"""
import abc

import tensorflow as tf


class Engine(abc.ABC):
    name: str = "abstract"

    @property
    @abc.abstractmethod
    def num_replicas(self) -> int:
        """Number of replicas taking part in a step (global batch = num_replicas x per-replica batch)."""

    @property
    def is_chief(self) -> bool:
        """True in the one process that writes logs, TensorBoard, checkpoints and eval results."""
        return True

    @abc.abstractmethod
    def replica_id(self) -> tf.Tensor:
        """This replica's index in [0, num_replicas), as an int32 scalar (inside `run`)."""

    @abc.abstractmethod
    def all_gather(self, x: tf.Tensor) -> tf.Tensor: ...

    @abc.abstractmethod
    def all_reduce_sum(self, x: tf.Tensor) -> tf.Tensor: ...

    @abc.abstractmethod
    def all_reduce_max(self, x: tf.Tensor) -> tf.Tensor: ...

    @abc.abstractmethod
    def reduce_gradients(self, grads: list) -> list:
        """Sum replicated-variable gradients across replicas (see the convention above)."""

    @abc.abstractmethod
    def scope(self):
        """Context in which the model, head and optimizer variables are created."""

    @abc.abstractmethod
    def run(self, fn, *args):
        """Run `fn(*args)` once per replica; returns the per-replica results reduced as `fn` decides."""

    def distribute_dataset(self, make_dataset):
        """`make_dataset(num_shards, shard_index)` -> this replica's dataset iterator."""
        return iter(make_dataset(1, 0))
