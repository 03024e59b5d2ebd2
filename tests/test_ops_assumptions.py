"""Every TensorFlow and Keras behaviour distface/ops/ relies on (its package docstring lists them), one test each:
after an upgrade, a failure here names the assumption that no longer holds and the module that relies on it."""
import keras
import numpy as np
import tensorflow as tf

from distface.ops import graphs, image, kernels, rows_in_place, variables
from distface.ops.keras_layers import BatchNormalizationWithStatistics
from distface.ops.row_gradient import weight_gradient


def broken(assumption: str, module: str) -> str:
    return f"TensorFlow assumption no longer holds: {assumption} (relied on by distface/ops/{module})"


def write_through(var, view_of_read, value):
    """Writes `value` into row 0 of view_of_read(read of var) with InplaceUpdate; returns var's value after."""
    @tf.function
    def write():  # the written tensor is returned: an unused (stateless) InplaceUpdate would be pruned
        view = view_of_read(variables.read(var))
        return tf.raw_ops.InplaceUpdate(x=view, i=[0], v=tf.fill([1, view.shape[1]], value))

    write()
    return var.numpy()


def test_resource_ops_and_inplace_update_have_gpu_kernels_for_float32():
    var, slot = tf.Variable(tf.zeros([16, 4])), tf.Variable(tf.zeros([16, 4]))

    @tf.function
    def ops():
        variables.own_buffer(var, tf.ones([16, 4]))
        variables.assign(slot, tf.ones([16, 4]))
        rows = variables.gather(var, [1, 2])
        variables.scatter_update(slot, [1, 2], rows)
        variables.scatter_sub(slot, [1, 2], rows)
        tf.raw_ops.InplaceUpdate(x=variables.read(var), i=[0], v=tf.zeros([1, 4]))

    assert kernels.missing_gpu_kernels(ops.get_concrete_function()) == [], broken("these ops have GPU kernels",
                                                                                   "variables.py")


def test_a_read_aliases_the_variable_and_inplace_update_writes_into_it():
    var = tf.Variable(tf.zeros([16, 4]))
    assert write_through(var, lambda r: r, 7.0)[0, 0] == 7.0, broken(
        "ReadVariableOp aliases the buffer and InplaceUpdate writes into it", "rows_in_place.py")


def test_a_gather_or_a_scatter_puts_a_variable_in_copy_on_read_mode():
    for touch in (lambda v: variables.gather(v, [0]), lambda v: variables.scatter_update(v, [1], tf.ones([1, 4]))):
        var = tf.Variable(tf.zeros([16, 4]))
        touch(var)
        assert write_through(var, lambda r: r, 7.0)[0, 0] == 0.0, broken(
            "a gather or scatter switches a variable to copy-on-read mode (reads copy)", "rows_in_place.py")


def test_an_aligned_flat_slice_a_reshape_and_a_row_range_alias_the_buffer():
    var = tf.Variable(tf.zeros([32, 4]))  # 16 rows x 4 floats = 256 bytes: a multiple of 64
    aligned = write_through(var, lambda r: tf.reshape(tf.reshape(r, [-1])[:64], [1, 64]), 5.0)
    assert np.all(aligned[:16] == 5.0), broken("reshape and a 64-byte-aligned 1-D slice alias", "rows_in_place.py")
    rows = write_through(tf.Variable(tf.zeros([32, 16])), lambda r: r[16:32], 3.0)  # rows of 64 bytes
    assert np.all(rows[16] == 3.0), broken("a slice of whole 64-byte-aligned rows aliases its tensor",
                                           "row_chunks.py")


def test_update_rows_sees_an_xla_trace():
    assert rows_in_place.available()
    inside = tf.function(lambda: tf.constant(rows_in_place.available()), jit_compile=True)
    assert not inside().numpy(), broken("GraphOrParentsInXlaContext tells a jit_compile trace", "rows_in_place.py")


def test_the_xla_weight_gradient_compiles_and_matches_numpy():
    rng = np.random.default_rng(0)
    s, x, along, w = (rng.normal(size=shape).astype(np.float32) for shape in ([5, 7], [5, 3], [7], [7, 3]))
    np.testing.assert_allclose(weight_gradient(s, x, along, w), s.T @ x - along[:, None] * w, rtol=1e-5,
                               atol=1e-6, err_msg=broken("a jit_compile function of a matmul", "row_gradient.py"))


def test_a_keras_variable_holds_a_tf_variable():
    var = keras.Variable(np.zeros([2], np.float32))
    assert isinstance(variables.tf_variable(var), tf.Variable), broken("keras.Variable.value is a tf.Variable",
                                                                        "variables.py")


def test_the_kernel_registry_lists_gpu_default_and_host_memory_kernels():
    devices = {k.device_type for k in kernels.tf_kernels("MatMul")}
    assert "GPU" in devices, broken("the tensorflow wheel registers GPU kernels (not tensorflow-cpu)", "kernels.py")
    assert "DEFAULT" in {k.device_type for k in kernels.tf_kernels("If")}, broken("DEFAULT kernels", "kernels.py")
    greater = [k for k in kernels.tf_kernels("GreaterEqual") if k.device_type == "GPU"
               and tf.int32.as_datatype_enum in k.constraint[0].allowed_values.list.type]
    assert greater and "z" in greater[0].host_memory_arg, broken("HostMemory arguments", "kernels.py")


def test_batchnorm_takes_its_training_statistics_from_moments():
    class Fixed(BatchNormalizationWithStatistics):
        def batch_statistics(self, inputs, axes):
            assert tuple(axes) == (0,)
            return tf.constant([1.0, 2.0]), tf.constant([4.0, 9.0])

    layer = Fixed(epsilon=0.0, momentum=0.5)
    x = np.array([[3.0, 5.0]], np.float32)
    out = layer(x, training=True).numpy()
    np.testing.assert_allclose(out, [[(3 - 1) / 2, (5 - 2) / 3]], rtol=1e-6, err_msg=broken(
        "BatchNormalization computes its batch statistics in _moments over _reduction_axes", "keras_layers.py"))
    np.testing.assert_allclose(layer.moving_mean.numpy(), [0.5, 1.0], rtol=1e-6)


def test_the_projective_transform_translates_with_nearest_fill():
    picture = tf.reshape(tf.range(12, dtype=tf.float32), [3, 4, 1])
    shifted = image.projective_transform(picture, [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0]).numpy()[..., 0]
    want = np.arange(12, dtype=np.float32).reshape(3, 4)[:, [1, 2, 3, 3]]  # x samples x + 1; the edge repeats
    np.testing.assert_array_equal(shifted, want, err_msg=broken("ImageProjectiveTransformV3", "image.py"))


def test_freezing_replaces_the_variables_by_constants():
    var = tf.Variable([2.0, 3.0])
    function = tf.function(lambda x: x * var).get_concrete_function(tf.TensorSpec([2], tf.float32))
    frozen = graphs.frozen(function)
    ops = {op.type for op in frozen.graph.get_operations()}
    assert not ops & {"ReadVariableOp", "VarHandleOp"}, broken("convert_variables_to_constants_v2", "graphs.py")
    np.testing.assert_array_equal(frozen(tf.constant([1.0, 1.0]))[0], [2.0, 3.0])


def sharing_variables():
    shared = tf.zeros([16, 4]) + 1.0
    a, b = tf.Variable(tf.zeros([16, 4])), tf.Variable(tf.zeros([16, 4]))
    a.assign(shared), b.assign(shared)  # both now hold the same buffer
    return a, b


def test_a_fused_update_copies_a_buffer_two_variables_share():
    a, b = sharing_variables()
    assert write_through(a, lambda r: r, 9.0)[0, 0] == 9.0 and b.numpy()[0, 0] == 9.0  # the hazard: b changes too
    a, b = sharing_variables()
    variables.own_buffer(a, tf.ones([16, 4]))
    np.testing.assert_array_equal(a.numpy(), 1.0)  # it changes no value
    assert write_through(a, lambda r: r, 9.0)[0, 0] == 9.0
    np.testing.assert_array_equal(b.numpy(), 1.0, err_msg=broken(
        "ResourceApplyGradientDescent copies a shared buffer before writing (copy-on-write)", "ops/variables.py"))
