"""The TensorFlow-internals perimeter: every raw op, private TensorFlow module and Keras private attribute distface
relies on lives in this package, and tests/test_ops_assumptions.py pins each behaviour listed here, so that a
TensorFlow or Keras upgrade fails there first, with a message naming the assumption.

- variables.py: resource ops on a variable's handle (ReadVariableOp, AssignVariableOp, ResourceApplyGradientDescent,
  ResourceGather, ResourceScatterUpdate/Sub). Relies on: each has a GPU kernel for float32; ReadVariableOp aliases
  the buffer outside copy-on-read mode; a gather or scatter switches a variable to that mode; a Keras 3 variable's
  `value` is its tf.Variable.
- rows_in_place.py: InplaceUpdate through a variable's read, on 64-byte-aligned views of it. Relies on:
  InplaceUpdate writes into its input's buffer; reshape and an aligned 1-D slice alias; the re-read sees the write;
  a fused update op (ResourceApplyGradientDescent) copies a buffer that two variables share before it writes;
  `tensorflow.python.ops.control_flow_util.GraphOrParentsInXlaContext` tells an XLA trace.
- row_chunks.py: a slice of whole rows aliases its tensor when a row is 64-byte aligned (otherwise it copies one
  slice): a reduction a slice at a time makes no block-sized temporary.
- row_gradient.py: a small `jit_compile` function writes the projection term into the matmul's output.
- gradients.py, updates.py: the gradient types' protocol and the optimizer rule's application to a variable's rows
  (whole, in place a range at a time, or gathered and scattered); no TensorFlow internals of their own.
- kernels.py: `tensorflow.python.framework.kernels.get_registered_kernels_for_op` lists KernelDefs (device type,
  type constraints, HostMemory arguments); DEFAULT kernels serve every device; the `tensorflow` wheel registers GPU
  kernels on a machine without a GPU.
- image.py: the ImageProjectiveTransformV3 raw op (bilinear, nearest-pixel fill).
- graphs.py: `tensorflow.python.framework.convert_to_constants.convert_variables_to_constants_v2`.
- keras_layers.py: Keras 3 BatchNormalization computes its training statistics in `_moments(inputs, mask)` over
  `_reduction_axes` and nothing else.

tf.distribute and Horovod stay behind the engines (distface/parallel/), their own perimeter.
"""
