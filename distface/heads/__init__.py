"""Identity heads: margin math (margins.py) and the class-weight block that applies it (classifier.py).

The head types and the margin parameters' rules live here rather than in margins.py, so that config validation
reads them without importing TensorFlow.
"""

MARGINS = ("softmax", "normface", "modified_softmax", "sphereface", "cosface", "arcface", "combined")


class MarginParamError(ValueError):
    """A margin parameter out of range; `param` is make_margin's keyword, `rule` what it must be."""

    def __init__(self, param: str, rule: str, value):
        self.param, self.rule = param, rule
        # "sphereface m": sphereface() calls it m; the other margins' parameters keep their keyword names
        label = "sphereface m" if param == "sphere_m" else f"margin {param}"
        super().__init__(f"{label} must be {rule}, got {value!r}")


def check_margin_params(*, scale: float = 30.0, m1: float = 1.0, m2: float = 0.0, m3: float = 0.0,
                        sphere_m: int = 4, warmup_steps: int = 0) -> None:
    """Raises MarginParamError for the first parameter out of range. The one copy of these rules: margins.make_margin,
    margins.sphereface and config validation (distface.checked_config) all call it."""
    is_int = isinstance(sphere_m, int) and not isinstance(sphere_m, bool)
    for param, value, ok, rule in (("scale", scale, scale > 0, "> 0"), ("m1", m1, m1 >= 1, ">= 1"),
                                   ("m2", m2, m2 >= 0, ">= 0"), ("m3", m3, m3 >= 0, ">= 0"),
                                   ("sphere_m", sphere_m, is_int and sphere_m >= 1, "an integer >= 1"),
                                   ("warmup_steps", warmup_steps, warmup_steps >= 0, ">= 0")):
        if not ok:
            raise MarginParamError(param, rule, value)
