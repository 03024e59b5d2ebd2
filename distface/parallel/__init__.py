"""Engines: the collective interface (engine.py) and its backends; see docs/design.md.

Backends are imported lazily, so importing distface never touches horovod or creates a strategy.
"""
import os

STRATEGIES = ("auto", "single", "mirrored", "multiworker", "horovod")


def resolve_strategy(name: str) -> str:
    """`auto`: horovod when launched by horovodrun, mirrored when more than one GPU is visible, else single."""
    if name != "auto":
        return name
    if "HOROVOD_RANK" in os.environ or "OMPI_COMM_WORLD_RANK" in os.environ:
        return "horovod"
    import tensorflow as tf

    return "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "single"


def build_engine(name: str, cpu_replicas: int = 0):
    name = resolve_strategy(name)
    if name == "single":
        from distface.parallel.single import SingleEngine

        return SingleEngine()
    if name == "mirrored":
        from distface.parallel.tfdist import mirrored_engine

        return mirrored_engine(cpu_replicas)
    if name == "multiworker":
        from distface.parallel.tfdist import multiworker_engine

        return multiworker_engine()
    if name == "horovod":
        from distface.parallel.horovod import HorovodEngine

        return HorovodEngine()
    raise ValueError(f"unknown strategy {name!r} (known: {', '.join(STRATEGIES)})")
