"""Traced functions rewritten by TensorFlow's private graph tools."""
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2


def frozen(concrete_function):
    """The function with its variables turned into constants (what the TFLite converter needs: converted with
    its variables, the model reads them as uninitialised resources and outputs NaN)."""
    return convert_variables_to_constants_v2(concrete_function)
