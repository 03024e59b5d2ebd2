"""Backbone zoo: shapes, parameter and MAC counts against published figures and against hand counts written from
each paper's layer table (independent of the Keras models), stable layer names, and mixed precision."""
import functools

import numpy as np
import pytest
import tensorflow as tf

from distface.models import BACKBONES, DEFAULT_EMBEDDING, DEFAULT_INPUT, build_backbone
from distface.models.__main__ import main
from distface.models.flops import count_macs, count_parameters


@functools.lru_cache(maxsize=None)
def default_model(name):
    """Each backbone built once, at its default input and embedding size."""
    return build_backbone(name, DEFAULT_INPUT[name], DEFAULT_EMBEDDING[name])


@pytest.fixture(scope="module", autouse=True)
def _free_models():
    yield
    default_model.cache_clear()  # ~1.5 GB of weights; the other test files do not need them


# ---------------------------------------------------------------- hand counts (from the papers' tables)
def conv(k, cin, cout, bias=False):
    kh, kw = (k, k) if isinstance(k, int) else k
    return kh * kw * cin * cout + (cout if bias else 0)


def iresnet_params(units, d=512, final=7):
    """Stem conv + BN + PReLU; unit: BN, conv, BN, PReLU, conv, BN (+ conv1x1 + BN shortcut in a stage's first,
    strided, unit); output BN, FC over final x final x 512 (+ bias), BN with a frozen scale (shift only)."""
    n, cin = conv(3, 3, 64) + 2 * 64 + 64, 64
    for c, count in zip((64, 128, 256, 512), units):
        for i in range(count):
            n += 2 * cin + conv(3, cin, c) + 2 * c + c + conv(3, c, c) + 2 * c
            n += conv(1, cin, c) + 2 * c if i == 0 else 0
            cin = c
    return n + 2 * 512 + final * final * 512 * d + d + d


def mobilefacenet_params(d=128):
    """Chen et al. Table 1; every conv is followed by BN (2/channel) and, unless linear, PReLU (1/channel)."""
    n = conv(3, 3, 64) + 3 * 64 + 9 * 64 + 3 * 64  # conv3x3 s2, depthwise conv3x3
    cin = 64
    for t, c, repeats, _ in ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1)):
        for _ in range(repeats):
            h = cin * t
            n += conv(1, cin, h) + 3 * h + 9 * h + 3 * h + conv(1, h, c) + 2 * c
            cin = c
    return n + conv(1, 128, 512) + 3 * 512 + 49 * 512 + 2 * 512 + conv(1, 512, d) + 2 * d


# Schroff et al. 2015, Table 1: (output side, kernel, input channels, output channels); convs have biases.
NN1_CONVS = [(110, 7, 3, 64), (55, 1, 64, 64), (55, 3, 64, 192), (28, 1, 192, 192), (28, 3, 192, 384),
             (14, 1, 384, 384), (14, 3, 384, 256), (14, 1, 256, 256), (14, 3, 256, 256), (14, 1, 256, 256),
             (14, 3, 256, 256)]
NN1_FCS = [(7 * 7 * 256, 2 * 4096), (4096, 2 * 4096), (4096, 128)]  # fc1, fc2 (maxout p=2), fc7128


def inception_resnet_v1_params(d=512):
    """facenet's slim layers: conv without bias + BN with a shift only; the residual 'up' 1x1 convs have a bias."""
    def cbn(k, cin, cout):
        return conv(k, cin, cout) + cout

    stem = (cbn(3, 3, 32) + cbn(3, 32, 32) + cbn(3, 32, 64) + cbn(1, 64, 80) + cbn(3, 80, 192)
            + cbn(3, 192, 256))
    block35 = (cbn(1, 256, 32) + cbn(1, 256, 32) + cbn(3, 32, 32) + cbn(1, 256, 32) + 2 * cbn(3, 32, 32)
               + conv(1, 96, 256, bias=True))
    reduction_a = cbn(3, 256, 384) + cbn(1, 256, 192) + cbn(3, 192, 192) + cbn(3, 192, 256)  # -> 896 channels
    block17 = (2 * cbn(1, 896, 128) + cbn((1, 7), 128, 128) + cbn((7, 1), 128, 128)
               + conv(1, 256, 896, bias=True))
    reduction_b = (cbn(1, 896, 256) + cbn(3, 256, 384) + cbn(1, 896, 256) + cbn(3, 256, 256)
                   + cbn(1, 896, 256) + 2 * cbn(3, 256, 256))  # -> 1792 channels
    block8 = (2 * cbn(1, 1792, 192) + cbn((1, 3), 192, 192) + cbn((3, 1), 192, 192)
              + conv(1, 384, 1792, bias=True))
    return stem + 5 * block35 + reduction_a + 10 * block17 + reduction_b + 6 * block8 + 1792 * d + d


LENET_CONVS = [(28, 3, 32), (28, 32, 32), (14, 32, 64), (14, 64, 64), (7, 64, 128), (7, 128, 128)]  # side, in, out


# ---------------------------------------------------------------- registry
def test_registry_tables_cover_every_backbone():
    assert set(DEFAULT_INPUT) == set(BACKBONES) == set(DEFAULT_EMBEDDING)


def test_unknown_backbone_lists_the_known_names():
    with pytest.raises(ValueError, match="unknown backbone 'resnet9000'.*iresnet50.*lenetpp"):
        build_backbone("resnet9000", (112, 112), 128)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_each_backbone_maps_images_to_embeddings(name):
    batch = 1 if name == "iresnet100" else 2
    images = tf.random.uniform((batch, *DEFAULT_INPUT[name], 3), -1.0, 1.0, seed=1)
    out = default_model(name)(images, training=False)
    assert out.shape == (batch, DEFAULT_EMBEDDING[name])
    assert np.all(np.isfinite(out.numpy()))


@pytest.mark.parametrize("name, size, d", [("mobilefacenet", (96, 80), 64), ("iresnet18", (112, 96), 256),
                                           ("lenetpp", (32, 32), 3), ("inception_resnet_v1", (75, 90), 8)])
def test_other_sizes_and_dimensions(name, size, d):
    model = build_backbone(name, size, d, dropout=0.2)
    assert model(tf.zeros((2, *size, 3)), training=True).shape == (2, d)


def test_inception_resnet_rejects_too_small_images():
    with pytest.raises(ValueError, match="at least 75x75, got 74x100"):
        build_backbone("inception_resnet_v1", (74, 100), 128)


@pytest.mark.parametrize("name, size", [("debug", (56, 48)), ("sphere20", (56, 48)), ("iresnet18", (32, 32)),
                                        ("mobilefacenet", (64, 64)), ("nn1", (64, 64)),
                                        ("inception_resnet_v1", (75, 75)), ("lenetpp", (28, 28))])
def test_weight_names_are_stable(name, size):
    """Checkpoints are keyed by weight paths: a second build (new Keras name counters) must give the same ones."""
    first, second = (build_backbone(name, size, 16) for _ in range(2))
    assert [w.path for w in first.weights] == [w.path for w in second.weights]


def test_iresnet_strides_in_the_second_conv():
    model = default_model("iresnet18")
    assert model.get_layer("stage1_unit1_conv1").output.shape[1:3] == (112, 112)
    assert model.get_layer("stage1_unit1_conv2").output.shape[1:3] == (56, 56)
    assert model.get_layer("stage4_unit2_conv2").output.shape[1:] == (7, 7, 512)


# ---------------------------------------------------------------- parameter counts
# insightface IResNet with the 512-d FC at 112x112: 43.6 M (r50) and 65.2 M (r100), the figures the issue quotes;
# they agree with insightface's distributed fp32 ONNX files (ms1mv3_arcface_r50 167 MiB, r100 249 MiB, 4 bytes
# per weight). MobileFaceNet: 0.99 M with a 128-d output (Chen et al. 2018, Table 3).
@pytest.mark.parametrize("name, published", [("iresnet50", 43.6e6), ("iresnet100", 65.2e6),
                                             ("mobilefacenet", 0.99e6)])
def test_parameters_match_published_counts(name, published):
    assert count_parameters(default_model(name)) == pytest.approx(published, rel=0.02)


def test_parameters_match_hand_counts():
    hand = {
        "iresnet18": iresnet_params((2, 2, 2, 2)),
        "iresnet50": iresnet_params((3, 4, 14, 3)),
        "iresnet100": iresnet_params((3, 13, 30, 3)),
        "mobilefacenet": mobilefacenet_params(),
        "nn1": sum(conv(k, cin, cout, bias=True) for _, k, cin, cout in NN1_CONVS)
        + sum(i * o + o for i, o in NN1_FCS),
        "inception_resnet_v1": inception_resnet_v1_params(),
        # convs + per-channel PReLU; Caffe's ceil-mode pools leave 4x4x128 for ip1, then ip1's PReLU
        "lenetpp": sum(conv(5, cin, cout, bias=True) + cout for _, cin, cout in LENET_CONVS)
        + 4 * 4 * 128 * 2 + 2 + 2,
    }
    got = {name: count_parameters(default_model(name)) for name in hand}
    assert got == hand


def test_sphere20_parameters_match_hand_count():
    """Liu et al. Table 2: per stage a strided conv + 2 convs per unit, all 3x3 with bias and PReLU; 112x96 -> 7x6."""
    n, cin = 0, 3
    for c, units in zip((64, 128, 256, 512), (1, 2, 4, 1)):
        n += conv(3, cin, c, bias=True) + c + 2 * units * (conv(3, c, c, bias=True) + c)
        cin = c
    assert count_parameters(default_model("sphere20")) == n + 7 * 6 * 512 * 512 + 512


def test_published_nn1_and_inception_resnet_sizes():
    """FaceNet Table 1: 140 M parameters (its 1% rounding); facenet's 512-d Inception-ResNet-v1: ~23.5 M."""
    assert count_parameters(default_model("nn1")) == pytest.approx(140e6, rel=0.01)
    assert count_parameters(default_model("inception_resnet_v1")) == pytest.approx(23.5e6, rel=0.01)


# ---------------------------------------------------------------- MACs
def test_macs_match_hand_counts():
    lenet = (sum(side * side * conv(5, cin, cout) for side, cin, cout in LENET_CONVS) + 4 * 4 * 128 * 2)
    nn1 = (sum(side * side * conv(k, cin, cout) for side, k, cin, cout in NN1_CONVS)
           + sum(i * o for i, o in NN1_FCS))
    assert count_macs(default_model("lenetpp")) == lenet
    assert count_macs(default_model("nn1")) == nn1


# FaceNet Table 1: 1.6 B "FLPS" (its per-layer column is multiply-adds); MobileFaceNet: 221 M MAdds (Table 3);
# insightface arcface_torch README (ViT table, "FLOPs" column, counted as MACs): r18 2.6 G, r50 6.3 G, r100 12.1 G.
@pytest.mark.parametrize("name, published", [("nn1", 1.6e9), ("mobilefacenet", 221e6), ("iresnet18", 2.6e9),
                                             ("iresnet50", 6.3e9), ("iresnet100", 12.1e9)])
def test_macs_match_published_counts(name, published):
    assert count_macs(default_model(name)) == pytest.approx(published, rel=0.01)


def test_macs_refuse_layers_without_a_rule():
    inputs = tf.keras.Input((4, 4, 3))
    model = tf.keras.Model(inputs, tf.keras.layers.LayerNormalization(name="ln")(inputs))
    with pytest.raises(ValueError, match="'ln'.*no MAC rule"):
        count_macs(model)


# ---------------------------------------------------------------- mixed precision
@pytest.fixture(params=["mixed_bfloat16", "mixed_float16"])
def policy(request):
    tf.keras.mixed_precision.set_global_policy(request.param)
    try:
        yield tf.keras.mixed_precision.global_policy()
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("name", ["debug", "sphere20", "iresnet18", "mobilefacenet", "nn1", "inception_resnet_v1",
                                  "lenetpp"])
def test_mixed_precision_forward_and_gradients_are_finite(policy, name):
    tf.keras.utils.set_random_seed(0)
    size = (110, 110) if name == "nn1" else DEFAULT_INPUT[name]  # same layers, a quarter of fc1's weights
    model = build_backbone(name, size, DEFAULT_EMBEDDING[name])
    images = tf.random.uniform((2, *size, 3), -1.0, 1.0)
    with tf.GradientTape() as tape:
        out = model(images, training=True)
        loss = tf.reduce_mean(tf.square(tf.cast(out, tf.float32)))  # the loop casts to float32 for the head
    grads = tape.gradient(loss, model.trainable_weights)
    assert out.dtype == policy.compute_dtype  # layers really run in low precision
    assert {w.dtype for w in model.weights} == {"float32"}  # variables stay float32
    assert np.all(np.isfinite(tf.cast(out, tf.float32).numpy()))
    assert all(np.all(np.isfinite(g.numpy())) for g in grads)


# ---------------------------------------------------------------- CLI
def test_cli_summary(capsys):
    assert main(["--summary", "lenetpp"]) == 0
    out = capsys.readouterr().out
    params = sum(conv(5, cin, cout, bias=True) + cout for _, cin, cout in LENET_CONVS) + 4 * 4 * 128 * 2 + 4
    assert f"parameters: {params:,}" in out and "multiply-accumulates" in out


@pytest.mark.parametrize("argv, message", [(["--summary", "bogus"], "unknown backbone 'bogus' (known: debug"),
                                           (["--summary", "inception_resnet_v1", "--image-size", "64", "64"],
                                            "at least 75x75")])
def test_cli_errors_are_one_line_and_exit_2(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err

