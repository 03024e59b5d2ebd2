"""Identity heads: margin math (margins.py) and the class-weight block that applies it (classifier.py)."""

# Head types, here so that config validation can read them without importing TensorFlow.
MARGINS = ("softmax", "normface", "modified_softmax", "sphereface", "cosface", "arcface", "combined")
