"""The collective interface that heads, losses and the loop call; the only seam where distribution enters.

Gradient convention (every engine follows it; tests/test_sharded_head.py, test_horovod.py and
test_triplet_replicas.py check it on 2 replicas against one device):
- each replica computes a PARTIAL loss: the sum of its OWN examples' losses divided by the GLOBAL batch size,
  so the replicas' partial losses add up to the single-device mean loss;
- the collectives differentiate as their exact adjoints under that sum of partial losses:
  * `all_gather(x)` concatenates the replicas' x along axis 0; its gradient hands each replica the SUM over
    replicas of the upstream gradient of its own slice;
  * `all_reduce_sum(x)` is linear; its gradient is the all-reduce SUM of the upstream gradients;
  * `all_reduce_max(x)` only shifts a softmax (the shift cancels) and carries no gradient;
- `reduce_gradients` SUMS the gradients of replicated variables (the backbone) across replicas, which is then
  exactly the single-device gradient. Sharded variables (head blocks) are never reduced: their local gradient is
  already exact, because every replica's loss reaches them through the collectives above.
MirroredStrategy's collectives already differentiate this way; Horovod's allgather averages instead, so its engine
states the gradients itself (parallel/horovod.py).
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
        """This replica's index in [0, num_replicas) as an int32 scalar (inside `run`)."""

    @abc.abstractmethod
    def all_gather(self, x: tf.Tensor) -> tf.Tensor: ...

    @abc.abstractmethod
    def all_reduce_sum(self, x: tf.Tensor) -> tf.Tensor: ...

    @abc.abstractmethod
    def all_reduce_max(self, x: tf.Tensor) -> tf.Tensor: ...

    @abc.abstractmethod
    def reduce_gradients(self, grads: list) -> list:
        """Sum replicated-variable gradients across replicas."""

    @abc.abstractmethod
    def scope(self):
        """Context in which replicated variables (model, optimizer slots, step) are created."""

    @abc.abstractmethod
    def run(self, fn, *args):
        """Run `fn(*args)` on every replica; returns replica 0's result (results are all-reduced inside fn)."""

    def local_results(self, value) -> list:
        """Each local replica's value of a `run` output (for tests and checkpoints)."""
        return [value]

    def sharded_variable(self, initial_value_fn, name: str, trainable: bool = True) -> tf.Variable:
        """A variable whose value differs per replica (a head block): `initial_value_fn(replica_id)` gives each
        replica's initial value; only that block is stored on the replica's device."""
        return tf.Variable(initial_value_fn(int(self.replica_id())), name=name, trainable=trainable)

    def replicated_variable(self, initial_value, name: str, trainable: bool = False, sum_updates: bool = False):
        """A variable with one value on every replica. With `sum_updates`, the replicas' updates add up (centers);
        otherwise updates must be identical on every replica (the step counter)."""
        return tf.Variable(initial_value, name=name, trainable=trainable)

    @property
    def process_index(self) -> int:
        """This process's index among the job's processes (0 is the chief)."""
        return 0

    @property
    def num_processes(self) -> int:
        return 1

    def barrier(self) -> None:
        """Return once every process has reached this point."""

    def local_components(self, var) -> dict:
        """{global replica id: this process's copy of a sharded variable for that replica}."""
        return {int(self.replica_id()): var}

    def update(self, var, fn, *args) -> None:
        """Apply `fn(var, *args)` on every replica's copy of `var` (args already identical or per replica)."""
        fn(var, *args)

    def scatter_sub_sum(self, var, slices: tf.IndexedSlices) -> None:
        """var -= the SUM over replicas of each replica's `slices` (rows may repeat)."""
        var.scatter_sub(slices)

    def broadcast_from_chief(self, variables) -> None:
        """Make replicated variables equal the chief's (after init or restore); sharded ones are left alone."""

    def distribute_dataset(self, make_dataset):
        """`make_dataset(num_shards, shard_index)` -> an iterator of this process's per-replica batches."""
        return iter(make_dataset(1, 0))
