"""Learning-rate schedules and run sizing (distface/training/schedules.py): poly against a transcription of
arcface_torch's scheduler, the other schedules against their closed forms, epochs into steps, the linear rule,
and a recipe's published set size."""
import math

import numpy as np
import pytest

from distface.checked_config import load_config
from distface.config import Config, InputError
from distface.data.sources import TrainingSet
from distface.training.schedules import (WarmupSchedule, build_schedule, describe_epochs, describe_rate,
                                         global_batch, resolve_epochs, steps_for_epochs, steps_per_epoch)
from distface.training.monitor import Monitor
from distface.training.session import Session, published_size_problem


# ---------------------------------------------------------------- poly: arcface_torch, as torch runs it

class PolynomialLRWarmup:
    """insightface recognition/arcface_torch/lr_scheduler.py, PolynomialLRWarmup, in plain Python: the subset of
    torch.optim.lr_scheduler._LRScheduler it relies on (initial_lr and base_lrs from the param groups,
    last_epoch = -1, then the one step() the constructor makes) and its recursive get_lr, line for line."""

    def __init__(self, param_groups, warmup_iters, total_iters, power=1.0):
        self.param_groups = param_groups
        for group in param_groups:  # _LRScheduler.__init__ with last_epoch=-1
            group["initial_lr"] = group["lr"]
        self.base_lrs = [group["initial_lr"] for group in param_groups]
        self.last_epoch = -1
        self.step()  # _LRScheduler.__init__ -> _initial_step(): before the subclass sets its attributes
        self.total_iters = total_iters
        self.power = power
        self.warmup_iters = warmup_iters

    def get_lr(self):
        if self.last_epoch == 0 or self.last_epoch > self.total_iters:
            return [group["lr"] for group in self.param_groups]
        if self.last_epoch <= self.warmup_iters:
            return [base_lr * self.last_epoch / self.warmup_iters for base_lr in self.base_lrs]
        l, w, t = self.last_epoch, self.warmup_iters, self.total_iters
        decay_factor = ((1.0 - (l - w) / (t - w)) / (1.0 - (l - 1 - w) / (t - w))) ** self.power
        return [group["lr"] * decay_factor for group in self.param_groups]

    def step(self):
        self.last_epoch += 1
        for group, lr in zip(self.param_groups, self.get_lr()):
            group["lr"] = lr


def arcface_torch_rates(lr, warmup, total, power, updates):
    """The rate of each update of train_v2.py's loop: optimizer.step() at the group's rate, then scheduler.step()."""
    groups = [{"lr": lr}]
    scheduler = PolynomialLRWarmup(groups, warmup, total, power)
    rates = []
    for _ in range(updates):
        rates.append(groups[0]["lr"])
        scheduler.step()
    return np.array(rates)


def rates(schedule, updates):
    return np.broadcast_to(schedule(np.arange(updates)).numpy(), [updates])


@pytest.mark.parametrize("warmup, total, power", [(0, 50, 1.0), (5, 50, 1.0), (10, 100, 2.0), (0, 30, 2.0),
                                                  (7, 40, 0.5), (1, 3, 1.0), (12, 8, 1.0)])
def test_poly_is_arcface_torch_polynomial_lr_warmup(warmup, total, power):
    updates = total + 15  # past train.steps too: torch keeps the last rate
    expected = arcface_torch_rates(0.1, warmup, total, power, updates)
    got = rates(WarmupSchedule(0.1, total, warmup, "poly", power=power), updates)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)
    assert got[0] == np.float32(0.1)  # update 0 at the full rate, warm-up or not (what arcface_torch does)


def test_poly_in_a_graph_follows_a_step_variable():
    import tensorflow as tf

    schedule, step = WarmupSchedule(0.4, 20, 4, "poly", power=2.0), tf.Variable(0, dtype=tf.int64)
    rate = tf.function(lambda: schedule(step))
    seen = []
    for _ in range(25):
        seen.append(float(rate()))
        step.assign_add(1)
    np.testing.assert_allclose(seen, arcface_torch_rates(0.4, 4, 20, 2.0, 25), rtol=1e-6)


# ---------------------------------------------------------------- the other schedules: their closed forms

def warmed(rate, lr, u, warmup):
    return min(rate, lr * (u + 1) / warmup) if warmup else rate


def cosine(lr, u, total, warmup):
    progress = min(max((u - warmup) / max(total - warmup, 1), 0.0), 1.0)
    return warmed(0.5 * lr * (1 + math.cos(math.pi * progress)), lr, u, warmup)


def step_decay(lr, u, warmup, decay_steps, decay_rate):
    return warmed(lr * decay_rate ** sum(u >= s for s in decay_steps), lr, u, warmup)


@pytest.mark.parametrize("warmup", [0, 10])
def test_cosine_step_and_constant_keep_their_closed_forms(warmup):
    lr, total, updates = 0.2, 60, 70
    got = {name: rates(WarmupSchedule(lr, total, warmup, name, decay_steps=[20, 45], decay_rate=0.1), updates)
           for name in ("cosine", "step", "constant")}
    u = range(updates)
    np.testing.assert_allclose(got["cosine"], [cosine(lr, i, total, warmup) for i in u], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(got["step"], [step_decay(lr, i, warmup, [20, 45], 0.1) for i in u], rtol=1e-6)
    np.testing.assert_allclose(got["constant"], [warmed(lr, lr, i, warmup) for i in u], rtol=1e-6)


# ---------------------------------------------------------------- epochs into steps

def configured(*overrides) -> Config:
    return load_config("distface/configs/debug.yaml", list(overrides))


def test_epochs_into_steps_the_ms1mv3_recipe():
    # MS1MV3 (5,179,510 images) on 8 GPUs of 128: a last partial batch counts as a step.
    assert steps_per_epoch(5_179_510, 1024) == 5_059
    assert steps_for_epochs(20, 5_179_510, 1024) == 101_180
    assert steps_for_epochs(2, 5_179_510, 1024) == 10_118
    assert steps_per_epoch(1000, 100) == 10 and steps_for_epochs(0.25, 1000, 100) == 2  # nearest step (2.5: even)
    assert steps_for_epochs(0.1, 30, 1) == 3  # 0.1 x 30 is 3.0000000000000004 in floating point


def test_resolve_epochs_replaces_only_what_is_given_in_epochs():
    both = configured("train.epochs=20", "optim.warmup_epochs=2", "data.batch_size=128", "train.accumulate_steps=2")
    batch = global_batch(both, num_replicas=4)
    assert batch == 1024
    assert resolve_epochs(both, 5_179_510, batch) == (5_059, 101_180, 10_118)
    assert describe_epochs(both, 5_179_510, batch) == ("epochs: 5,179,510 images / global batch 1,024 = 5,059 steps "
                                                       "per epoch, 20 epochs = 101,180 steps, warm-up 2 epochs = "
                                                       "10,118 steps")
    steps_only = configured("train.steps=300", "optim.warmup_steps=7")
    assert resolve_epochs(steps_only, 1000, 64)[1:] == (300, 7)
    assert describe_epochs(steps_only, 1000, 64) is None
    warmup_only = configured("train.steps=300", "optim.warmup_epochs=0.5")
    assert resolve_epochs(warmup_only, 1000, 100)[1:] == (300, 5)
    assert resolve_epochs(configured("train.epochs=0.01"), 1000, 100).steps == 1  # never 0 steps


# ---------------------------------------------------------------- the linear rule

def test_lr_global_batch_scales_the_base_rate_linearly():
    cfg = configured("optim.lr=0.1", "optim.lr_global_batch=1024", "optim.schedule=constant",
                     "optim.warmup_steps=0")
    assert build_schedule(cfg.optim, 100, 512)(5).numpy() == pytest.approx(0.05)
    assert build_schedule(cfg.optim, 100, 4096)(5).numpy() == pytest.approx(0.4)
    assert build_schedule(cfg.optim, 100, 1024)(5).numpy() == pytest.approx(0.1)
    assert describe_rate(cfg.optim, 512) == ("learning rate 0.05 = optim.lr 0.1 x global batch 512 / "
                                             "optim.lr_global_batch 1,024 (the linear rule)")
    assert describe_rate(cfg.optim, 1024) is None
    cfg.optim.lr_global_batch = 0  # off: lr as given, whatever the batch
    assert build_schedule(cfg.optim, 100, 512)(5).numpy() == pytest.approx(0.1)
    assert describe_rate(cfg.optim, 512) is None


def test_build_schedule_passes_poly_power_and_warmup():
    cfg = configured("optim.lr=0.1", "optim.schedule=poly", "optim.poly_power=2", "optim.warmup_steps=3")
    np.testing.assert_allclose(rates(build_schedule(cfg.optim, 20, 64), 25),
                               arcface_torch_rates(0.1, 3, 20, 2.0, 25), rtol=1e-6)


# ---------------------------------------------------------------- a recipe's published set size

def test_published_size_names_the_key_and_the_set():
    cfg = configured("data.source=folder", "data.path=.", "data.num_classes=93431")
    held = TrainingSet(source=None, num_classes=1000, num_images=49_998, left_out=[("a.jpg", "x"), ("b.jpg", "x")])
    assert published_size_problem(cfg, held) == ("data.num_classes: the config expects 93,431 identities, data.path "
                                                 ". has 1,000 (set data.num_classes=0 to train on this set as it is)")
    cfg.data.num_classes, cfg.data.num_images = 1000, 50_000  # images left out as broken still count
    assert published_size_problem(cfg, held) is None
    cfg.data.num_images = 5_179_510
    assert published_size_problem(cfg, held).startswith("data.num_images: the config expects 5,179,510 images, ")
    cfg.data.num_classes = cfg.data.num_images = 0
    assert published_size_problem(cfg, held) is None


SMALL = ["data.source=synthetic", "data.synthetic_identities=5", "data.synthetic_images_per_identity=4",
         "model.image_size=[32, 32]", "data.batch_size=4", "train.strategy=single"]


def test_session_refuses_a_set_of_another_size(tmp_path):
    out = tmp_path / "run"
    cfg = configured(*SMALL, "data.num_classes=7", f"train.out_dir={out}")
    with pytest.raises(InputError, match=r"^data.num_classes: the config expects 7 identities, data.source "
                                         r"synthetic has 5 \(set data.num_classes=0"):
        Session(cfg, quiet=True)
    assert not out.exists()


def test_session_trains_epochs_and_says_so(tmp_path, monkeypatch):
    said = []
    monkeypatch.setattr(Monitor, "say", lambda self, text: said.append(text))
    cfg = configured(*SMALL, "data.num_classes=5", "data.num_images=20", "train.epochs=0.4", "optim.warmup_epochs=0.2",
                     "optim.lr=0.1", "optim.lr_global_batch=8", f"train.out_dir={tmp_path}")
    session = Session(cfg, quiet=True)
    assert (cfg.train.steps, cfg.optim.warmup_steps) == (2, 1)  # 20 images / 4 = 5 steps per epoch
    assert session.monitor.total_steps == 2
    assert ("epochs: 20 images / global batch 4 = 5 steps per epoch, 0.4 epochs = 2 steps, warm-up 0.2 epochs = "
            "1 step") in said
    assert "learning rate 0.05 = optim.lr 0.1 x global batch 4 / optim.lr_global_batch 8 (the linear rule)" in said
