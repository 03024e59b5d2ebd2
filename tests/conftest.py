"""Split the CPU into 2 logical devices before TensorFlow initialises, so that MirroredStrategy tests can run
2 replicas in-process; everything else keeps running on /cpu:0.

The `slow` marker (`make test-fast` runs `-m "not slow"`; `make test` runs everything, as CI does): a test is slow
when it starts a process (subprocess, horovodrun, the launcher, multiprocessing) or trains end to end: builds
distface's `Trainer` (a model's forward, loss, gradients, cross-replica reduction and update, the step every
engine runs) on its own or inside a `Session` (plus data and run folder: what `distface train` runs).

The marker is applied at collection, from the code: a test is marked when its function, a fixture it uses, or a
function or class of the tests' own code that these name (tests/, benchmarks/: the checkout outside the distface
package; followed transitively, imports inside functions included) uses `subprocess` or `multiprocessing`, calls
os.system, os.fork and the like, or names distface's `Trainer` or `Session` class. What the code does not show (a
process, Trainer or Session made inside distface) takes an explicit `@pytest.mark.slow`. The marking is kept honest
at run time: a test not marked slow that starts a process (through subprocess or multiprocessing's spawn) or builds
a Trainer or Session, in its setup, call or teardown, fails with UnmarkedSlowTest naming what it did."""
import dis
import functools
import inspect
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
NOT_FOLLOWED = tuple(os.path.join(ROOT, d) + os.sep for d in ("distface", ".venv", "build"))
sys.path.insert(0, TESTS)  # tests/equivalence.py is shared with the horovod script

SLOW = ("slow: starts processes or trains end to end; marked automatically from the code (see tests/conftest.py); "
        "deselected by `make test-fast` (-m 'not slow')")
LAUNCHER_MODULES = {"subprocess", "multiprocessing"}
OS_LAUNCHERS = {"system", "popen", "fork", "forkpty", "posix_spawn", "posix_spawnp", "execv", "execve", "execvp",
                "spawnv", "spawnve", "spawnvp", "spawnl", "spawnlp"}
_TRAINING: list = []  # distface's Session and Trainer classes, once pytest_configure has imported them
HOROVODRUN = shutil.which("horovodrun", path=os.path.dirname(sys.executable))


def pytest_configure(config):
    from distface.parallel.tfdist import split_cpu

    split_cpu(2)
    config.addinivalue_line("markers", SLOW)
    _guard_processes_and_training()


# ---- marking ---------------------------------------------------------------------------------------------------

def _test_side(obj) -> bool:
    """Whether a function or class is the tests' own code: defined in the checkout (tests/, benchmarks/ and the
    like) but not in the package (distface/, whose code the rule does not follow) nor the virtualenv."""
    obj = inspect.unwrap(obj)  # functools.lru_cache, functools.wraps
    functions = [m for m in vars(obj).values() if inspect.isfunction(m)] if isinstance(obj, type) else [obj]
    files = [os.path.abspath(f.__code__.co_filename) for f in functions if hasattr(f, "__code__")]
    return any(f.startswith(ROOT + os.sep) and not f.startswith(NOT_FOLLOWED) for f in files)


def _starts_processes(name: str, obj, called: bool) -> bool:
    """Whether a name a function loads is a way to start processes: subprocess, multiprocessing (the modules, or
    anything of theirs), or os.system, os.fork and the like when called (not when only named, as a payload)."""
    if name in LAUNCHER_MODULES:  # also `import subprocess` inside the function
        return True
    if any(obj is getattr(os, n, None) for n in OS_LAUNCHERS):
        return called
    try:
        module = obj.__name__ if isinstance(obj, types.ModuleType) else getattr(obj, "__module__", None)
    except Exception:  # noqa: BLE001 - a lazy module that cannot say
        return False
    return isinstance(module, str) and module.split(".")[0] in LAUNCHER_MODULES


def _loaded(code: types.CodeType, globals_: dict):
    """(name, object, called) for each global, attribute of a module and name imported inside the function that
    `code` loads; object None where it does not resolve; called: loaded to be called (Python 3.11 marks this with
    the NULL pushed under the callable: on the global of `os.system(...)`, on the attribute from 3.12)."""
    module = last = None
    null = False
    for ins in dis.get_instructions(code):
        obj = None
        if ins.opname == "IMPORT_NAME":
            obj = module = sys.modules.get(ins.argval)
        elif ins.opname == "IMPORT_FROM":
            obj = getattr(module, ins.argval, None)
        elif ins.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
            obj = globals_.get(ins.argval)
        elif ins.opname in ("LOAD_ATTR", "LOAD_METHOD") and isinstance(last, types.ModuleType):
            obj = getattr(last, ins.argval, None)
        else:
            last, null = None, False
            continue
        called = null or ins.opname == "LOAD_METHOD" or "NULL" in (ins.argrepr or "")
        last, null = obj, "NULL" in (ins.argrepr or "") and ins.opname == "LOAD_GLOBAL"
        yield ins.argval, obj, called


def why_slow(fn, seen: set | None = None) -> str | None:
    """What makes calling `fn` slow (`module.function: uses subprocess`), looking into the code nested in it and the
    functions and classes of the tests' own code it names, transitively; None when nothing does."""
    seen = set() if seen is None else seen
    fn = inspect.unwrap(fn)
    if isinstance(fn, type):
        members = [m for m in vars(fn).values() if isinstance(m, (types.FunctionType, staticmethod, classmethod,
                                                                    property))]
        return next(filter(None, (why_slow(getattr(m, "__func__", getattr(m, "fget", m)), seen) for m in members)),
                    None)
    code = getattr(fn, "__code__", None)
    if code is None or code in seen:
        return None
    seen.add(code)
    where = f"{fn.__module__}.{fn.__qualname__}"
    stack, helpers = [code], []
    while stack:
        c = stack.pop()
        stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
        for name, obj, called in _loaded(c, fn.__globals__):
            if obj is not None and any(obj is cls for cls in _TRAINING):
                return f"{where}: builds a {name}"
            if _starts_processes(name, obj, called):
                return f"{where}: uses {name}"
            if callable(obj) and _test_side(obj):
                helpers.append(obj)
    return next(filter(None, (why_slow(h, seen) for h in helpers)), None)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("slow") or not isinstance(item, pytest.Function):
            continue
        fixtures = [defs[-1].func for defs in item._fixtureinfo.name2fixturedefs.values()]
        why = next(filter(None, (why_slow(f) for f in [item.function, *fixtures] if _test_side(f))), None)
        if why:
            item.add_marker(pytest.mark.slow(reason=why))


# ---- the run-time check ----------------------------------------------------------------------------------------

class UnmarkedSlowTest(AssertionError):
    """A test not marked slow started a process or built a Trainer or Session."""


_unmarked: list = [None]  # the item being set up, run or torn down when it is not marked slow


def _refuse(what: str) -> None:
    item = _unmarked[0]
    if item is not None:
        raise UnmarkedSlowTest(f"{item.nodeid} is not marked slow but {what}: mark it @pytest.mark.slow (the "
                               f"automatic rule in tests/conftest.py did not see it)")


def _guarded(owner, name: str, describe):
    original = getattr(owner, name)

    @functools.wraps(original)
    def guarded(*args, **kwargs):
        _refuse(describe(*args))
        return original(*args, **kwargs)

    setattr(owner, name, guarded)


def _guard_processes_and_training() -> None:
    import multiprocessing.util

    from distface.training.session import Session

    _guarded(subprocess.Popen, "_execute_child", lambda self, args, *_: f"starts a process: {args!r:.300}")
    _guarded(multiprocessing.util, "spawnv_passfds", lambda path, args, *_: f"starts a process: {args!r:.300}")
    from distface.training.trainer import Trainer

    for cls in (Session, Trainer):
        _guarded(cls, "__init__", lambda *_, name=cls.__name__: f"builds a {name} (trains end to end)")
    _TRAINING[:] = [Session, Trainer]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _unmarked[0] = None if item.get_closest_marker("slow") else item
    try:
        return (yield)
    finally:
        _unmarked[0] = None


# ---- shared runs -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def horovod_two_ranks(tmp_path_factory):
    """One `horovodrun -np 2` of tests/hvd_two_ranks.py for the session, shared by the tests that compare the
    Horovod engine with one device: {part: [rank 0's results, rank 1's results]}."""
    if HOROVODRUN is None:
        pytest.skip("horovod is not installed (DISTFACE_NO_HOROVOD=1)")
    out = tmp_path_factory.mktemp("hvd")
    proc = subprocess.run([HOROVODRUN, "-np", "2", "-H", "localhost:2", sys.executable,
                           os.path.join(TESTS, "hvd_two_ranks.py"), str(out)], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {part.name: [dict(np.load(part / f"rank{r}.npz", allow_pickle=False)) for r in range(2)]
            for part in out.iterdir()}
