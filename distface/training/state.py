"""The training state, by name: everything a step changes and a checkpoint keeps.

- `backbone`: the embedding network (replicated);
- `head.replicated` / `head.sharded`: the head's variables by name (None for triplet training);
- `centers`: the center-loss centers variable or None: replicated, or (`sharded_centers`) this replica's class
  block of them beside the head's (distface/training/centers.py);
- `step`, `counters`: the update count and the non-finite guard's / loss scaler's counters (replicated);
- `slots`: the optimizer's slots (momentum; AdamW's second moment too), {group: {slot kind: {variable name: slot}}}.

Broadcast, gradient reduction, clipping, the update, checkpoints and re-sharding read these names; nothing
relies on the order of a list of variables.
"""
from __future__ import annotations

import tensorflow as tf

REPLICATED, SHARDED = "replicated", "sharded"


class TrainState(tf.Module):
    def __init__(self, runtime, backbone, objective, loss_scaling: bool = False):
        super().__init__(name="state")
        self.backbone = backbone
        self.head = objective.head
        centers = objective.centers
        self.centers = None if centers is None else centers.variable
        self.sharded_centers = centers is not None and centers.sharded
        self.step = runtime.replicated_variable(tf.constant(0, tf.int64), name="step")
        # Non-finite guard: skipped steps in all, and in a row (training stops at train.max_bad_steps).
        self.counters = {"skipped": runtime.replicated_variable(tf.constant(0, tf.int64), name="skipped_steps"),
                         "bad_streak": runtime.replicated_variable(tf.constant(0, tf.int64), name="bad_streak")}
        if loss_scaling:  # float16: dynamic loss scaling
            self.counters["loss_scale"] = runtime.replicated_variable(tf.constant(2.0 ** 15), name="loss_scale")
            self.counters["good_steps"] = runtime.replicated_variable(tf.constant(0, tf.int64), name="good_steps")
        self.slots = {REPLICATED: {}, SHARDED: {}}

    def trainable(self) -> dict:
        """{"replicated": {name: variable}, "sharded": {name: variable}}: what the optimizer updates."""
        replicated = {f"backbone/{v.path}": v for v in self.backbone.trainable_variables}
        if len(replicated) != len(self.backbone.trainable_variables):
            raise ValueError("backbone: two trainable variables share a path; give its layers distinct names")
        head = self.head
        if head is not None:
            replicated.update({f"head/{name}": v for name, v in head.replicated.items()})
        sharded = {} if head is None else {f"head/{name}": v for name, v in head.sharded.items()}
        return {REPLICATED: replicated, SHARDED: sharded}

    def replicated_state(self) -> list:
        """Every variable that must be equal on all replicas (what a broadcast from the chief covers)."""
        state = list(self.backbone.variables) + [self.step, *self.counters.values()]
        state += self.slot_variables(REPLICATED)
        if self.head is not None:
            state += list(self.head.replicated.values())
        return state + ([self.centers] if self.centers is not None and not self.sharded_centers else [])

    def slot_variables(self, group: str) -> list:
        return [slot for kind in self.slots[group].values() for slot in kind.values()]

    def sharded_state(self) -> dict:
        """{"params": {name: block}, <slot kind>: {name: block}, ...}: what lives in a replica's class block (the
        head's blocks with their optimizer slots, and the sharded centers, which the optimizer does not move)."""
        params = {} if self.head is None else dict(self.head.sharded)
        slots = {kind: {name: blocks[f"head/{name}"] for name in params}
                 for kind, blocks in self.slots[SHARDED].items()}
        if self.sharded_centers:
            params["centers"] = self.centers
        return {"params": params, **slots}
