"""The `slow` marker stays honest (tests/conftest.py): the rule that applies it at collection sees a process started
or a Trainer or Session built through helpers, fixtures, classes and imports inside functions, and what it cannot see is
refused at run time in any test not marked slow."""
import os
import sys

import pytest

from conftest import TESTS, UnmarkedSlowTest, why_slow

SAMPLES = '''
import os
import subprocess

from distface.training.session import Session
from distface.training import trainer


def helper():
    return subprocess.run(["true"])


def through_a_helper():
    return helper()


def imports_inside():
    from subprocess import run as start
    start(["true"])


def calls_os():
    os.system("true")


def names_os_as_a_payload():
    return (os.system, ("true",))


def trains(cfg):
    Session(cfg).train()


def steps_a_trainer(*parts):
    return trainer.Trainer(*parts).train_step


def another_session(tf):
    return tf.compat.v1.Session()


class Job:
    def start(self):
        subprocess.Popen(["true"])


def through_a_class():
    Job().start()


def in_process():
    return sorted(os.listdir("."))
'''


@pytest.fixture(scope="module")
def samples():
    namespace = {"__name__": "slow_samples"}
    exec(compile(SAMPLES, os.path.join(TESTS, "slow_samples.py"), "exec"), namespace)
    return namespace


@pytest.mark.parametrize("name, why", [
    ("helper", "slow_samples.helper: uses subprocess"),
    ("through_a_helper", "slow_samples.helper: uses subprocess"),
    ("imports_inside", "slow_samples.imports_inside: uses subprocess"),
    ("calls_os", "slow_samples.calls_os: uses system"),
    ("trains", "slow_samples.trains: builds a Session"),
    ("steps_a_trainer", "slow_samples.steps_a_trainer: builds a Trainer"),
    ("through_a_class", "slow_samples.Job.start: uses subprocess"),
    ("names_os_as_a_payload", None),
    ("another_session", None),
    ("in_process", None),
])
def test_the_rule_follows_helpers_imports_and_classes(samples, name, why):
    assert why_slow(samples[name]) == why


def test_what_the_rule_cannot_see_is_refused_at_run_time():
    """This test is not marked slow (the rule sees no process, Trainer or Session in it), so starting a process or
    building a Trainer or Session fails it."""
    start = sys.modules["subprocess"].run  # not a name the rule follows
    with pytest.raises(UnmarkedSlowTest, match="is not marked slow but starts a process"):
        start(["true"])
    for module, name in (("distface.training.session", "Session"), ("distface.training.trainer", "Trainer")):
        cls = getattr(sys.modules[module], name)  # not a name the rule follows
        with pytest.raises(UnmarkedSlowTest, match=rf"is not marked slow but builds a {name} \(trains end to end\)"):
            cls(None, None, None, None, None)
