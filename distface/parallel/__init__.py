"""Engines: the collective interface (engine.py) and its backends; see DESIGN.md."""


def build_engine(name: str):
    """Engine by name; imports the backend lazily so that importing distface never touches horovod."""
    if name == "single":
        from distface.parallel.single import SingleEngine

        return SingleEngine()
    raise ValueError(f"unknown strategy {name!r} (known: single)")
