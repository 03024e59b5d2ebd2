"""The two faces of an engine: the collectives that heads and losses call, and the runtime that the loop, the
optimizer, checkpoints and train.py use. Distribution enters distface only through these two interfaces.

Gradient convention (every engine follows it; tests/test_sharded_head.py, test_horovod.py and
test_triplet_replicas.py check it on 2 replicas against one device):
- each replica computes a PARTIAL loss: the sum of its OWN examples' losses divided by the GLOBAL batch size,
  so the replicas' partial losses add up to the single-device mean loss;
- the collectives differentiate as their exact adjoints under that sum of partial losses:
  * `all_gather(x)` concatenates the replicas' x along axis 0; its gradient hands each replica the SUM over
    replicas of the upstream gradient of its own slice;
  * `all_reduce_sum(x)` is linear; its gradient is the all-reduce SUM of the upstream gradients;
  * `all_reduce_max(x)` only shifts a softmax (the shift cancels) and carries no gradient;
- `Runtime.reduce_gradients` SUMS the gradients of replicated variables (the backbone) across replicas, which is
  then exactly the single-device gradient. Sharded variables (head blocks) are never reduced: their local gradient
  is already exact, because every replica's loss reaches them through the collectives above.
MirroredStrategy's collectives already differentiate this way; Horovod's allgather averages instead, so its engine
states the gradients itself (parallel/horovod.py).
"""
import abc

import tensorflow as tf


class Collectives(abc.ABC):
    """What heads and losses may use: the replica's place in the step and three collectives (inside `run`)."""

    @property
    @abc.abstractmethod
    def num_replicas(self) -> int:
        """Number of replicas taking part in a step (global batch = num_replicas x per-replica batch)."""

    @abc.abstractmethod
    def replica_id(self) -> tf.Tensor:
        """This replica's index in [0, num_replicas) as an int32 scalar."""

    @abc.abstractmethod
    def all_gather(self, x: tf.Tensor) -> tf.Tensor: ...

    @abc.abstractmethod
    def all_reduce_sum(self, x: tf.Tensor) -> tf.Tensor: ...

    @abc.abstractmethod
    def all_reduce_max(self, x: tf.Tensor) -> tf.Tensor: ...

    def gather_rows(self, var, rows) -> tf.Tensor:
        """The given rows of this replica's copy of `var` (a sharded block), differentiable, reading only those
        rows: a read of the whole block would copy it once scatter updates have touched it (TensorFlow's
        copy-on-read mode)."""
        return tf.gather(var, rows)


class Runtime(abc.ABC):
    """Where variables live and how they change, the processes of the job, and how data reaches the replicas."""

    name: str = "abstract"
    collectives: Collectives

    @property
    def num_replicas(self) -> int:
        return self.collectives.num_replicas

    # -- topology -------------------------------------------------------------------------------------------------
    @property
    def is_chief(self) -> bool:
        """True in the one process that writes logs, TensorBoard, checkpoints and eval results."""
        return self.process_index == 0

    @property
    def process_index(self) -> int:
        """This process's index among the job's processes (0 is the chief)."""
        return 0

    @property
    def num_processes(self) -> int:
        return 1

    def barrier(self) -> None:
        """Return once every process has reached this point."""

    # -- placement ------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def scope(self):
        """Context in which replicated variables (model, optimizer slots, step) are created."""

    def sharded_variable(self, initial_value_fn, name: str, trainable: bool = True) -> tf.Variable:
        """A variable whose value differs per replica (a head block): `initial_value_fn(replica_id)` gives each
        replica's initial value; only that block is stored on the replica's device."""
        return tf.Variable(initial_value_fn(self.process_index), name=name, trainable=trainable)

    def replicated_variable(self, initial_value, name: str, trainable: bool = False) -> tf.Variable:
        """A variable with one value on every replica; every replica applies the same updates to its copy."""
        return tf.Variable(initial_value, name=name, trainable=trainable)

    def local_components(self, var) -> dict:
        """{global replica id: this process's copy of a sharded variable for that replica}."""
        return {self.process_index: var}

    def local_results(self, value) -> list:
        """Each local replica's value of a `run` output (for tests and checkpoints)."""
        return [value]

    def broadcast_from_chief(self, variables) -> None:
        """Make replicated variables equal the chief's (after init or restore); sharded ones are left alone."""

    # -- the step -------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def run(self, fn, *args):
        """Run `fn(*args)` on every replica; returns replica 0's result (results are all-reduced inside fn)."""

    def reduce_gradients(self, grads):
        """Sum replicated-variable gradients (any nest; None stays None) across replicas."""
        return grads

    def update(self, var, fn, *args):
        """Apply `fn(var, *args)` in place on every local copy of `var` (args identical across replicas for a
        replicated variable, the replica's own for a sharded one). `fn` runs per copy, so it may branch (tf.cond).
        Returns fn's result for this replica's copy."""
        return fn(var, *args)

    def assign(self, var, value) -> None:
        """var = value on every copy (value identical across replicas for a replicated variable)."""
        self.update(var, _assign, value)

    def scatter_sub_all(self, var, slices: tf.IndexedSlices) -> None:
        """Replicated `var` -= the SUM over replicas of every replica's `slices` (rows may repeat): each replica
        applies the all-gathered rows alike, so the copies stay equal (the center-loss update)."""
        values = self.collectives.all_gather(slices.values)
        indices = self.collectives.all_gather(slices.indices)
        self.update(var, _scatter_sub, values, indices)

    # -- data -----------------------------------------------------------------------------------------------------
    @property
    def batches_per_step(self) -> int:
        """Batches one input pipeline of this process yields per training step."""
        return 1

    def distribute_dataset(self, make_dataset, step: int = 0):
        """An iterator of this process's per-replica batches from `make_dataset(num_shards, shard_index,
        skip_batches)`; `step` steps already trained (a resume) are skipped in each shard's stream."""
        return iter(make_dataset(1, 0, step * self.batches_per_step))


def _assign(var, value):
    var.assign(value)


def _scatter_sub(var, values, indices):
    var.scatter_sub(tf.IndexedSlices(values, indices))
