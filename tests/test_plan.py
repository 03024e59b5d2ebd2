"""`distface plan`: the memory arithmetic against sums made by hand, the solver's answers at their boundary, the
class and image counts and where they come from, the steps and the learning rate, and the command on the shipped
configs (every recipe, without its data) and on bad input. Nothing trains; a backbone is built once per net."""
import math

import pytest

from distface import plan
from distface.config import ConfigError, InputError, Config, parse_config, shipped_configs

RECIPES = sorted(name for name in shipped_configs() if not name.startswith("orl_") and name != "debug")


def iresnet_sizes(units, size: int = 112, d: int = 512) -> tuple[int, int]:
    """(trainable, BatchNorm statistics) of an IResNet, counted from its description (models/iresnet.py)."""
    trainable = statistics = 0

    def bn(c, scale=True):
        nonlocal trainable, statistics
        trainable += c * (2 if scale else 1)
        statistics += 2 * c

    trainable += 3 * 3 * 3 * 64 + 64  # stem conv, PReLU
    bn(64)
    cin = 64
    for cout, count in zip((64, 128, 256, 512), units):
        for unit in range(count):
            if unit == 0:  # stride 2: conv1x1 + BN shortcut
                trainable += cin * cout
                bn(cout)
            bn(cin)
            trainable += 9 * cin * cout + 9 * cout * cout + cout  # conv1, conv2, PReLU
            bn(cout)
            bn(cout)
            cin = cout
    bn(512)  # output BN
    side = size // 16
    trainable += side * side * 512 * d + d  # FC
    bn(d, scale=False)  # features BN: its shift only
    return trainable, statistics


def test_iresnet50_parameters_by_hand_and_the_models_count():
    import tensorflow as tf

    from distface.models import build_backbone

    net = plan.measure_network("iresnet50", (112, 112), 512)
    assert (net.parameters, net.statistics) == iresnet_sizes((3, 4, 14, 3))
    assert net.parameters == 43_590_336  # insightface's r50: 43.6 M
    model = build_backbone("iresnet50", (112, 112), 512)
    assert net.parameters + net.statistics == model.count_params()
    assert net.normalised == sum(math.prod(layer.output.shape[1:]) for layer in model.layers
                                 if isinstance(layer, tf.keras.layers.BatchNormalization))


def test_activations_of_the_debug_cnn_by_hand():
    net = plan.measure_network("debug", (56, 48), 128)
    maps = [28 * 24 * 32, 14 * 12 * 64, 7 * 6 * 128, 7 * 6 * 128]  # the four stages: conv, BN and PReLU each
    assert net.activations == 56 * 48 * 3 + 3 * sum(maps) + 7 * 6 * 128 + 128 + 128  # input; flatten, FC, BN
    assert net.normalised == sum(maps) + 128
    assert plan.activation_bytes(net, "none") == 4 * net.activations
    assert plan.activation_bytes(net, "bfloat16") == 2 * (net.activations - net.normalised) + 4 * net.normalised


NET = plan.Network(parameters=1_000_000, statistics=2_000, activations=100_000, normalised=40_000)


def setting(classes=1000, gpus=3, **values) -> plan.Setting:
    cfg = Config()
    cfg.data.batch_size, cfg.model.embedding_size = 4, 128
    for key, value in values.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    return plan.Setting(cfg, NET, classes, gpus)


def items(s: plan.Setting, **kwargs) -> dict[str, int]:
    return {item.name.split(":")[0]: item.bytes for item in s.memory(**kwargs)}


def test_sharded_head_bytes_by_hand():
    got = items(setting())  # 1000 classes on 3 GPUs: 334 rows; batch 4 x 3 GPUs = 12 scored
    assert got["backbone weights"] == 4 * 1_002_000
    assert got["backbone gradients"] == got["optimizer slots"] == 4 * 1_000_000  # sgd: 1 slot
    assert got["activations"] == math.ceil(4 * 400_000 * plan.KEPT)
    assert got["head block"] == got["head slots"] == 334 * 128 * 4
    assert "head gradient" not in got  # made a range of rows at a time, never whole
    assert got["head temporaries"] == plan.HEAD_TEMPORARIES * 12 * 334 * 4
    assert got["GPU overhead"] == plan.GPU_OVERHEAD
    assert setting().total() == sum(got.values())


def test_replicated_adamw_softmax_and_centers_by_hand():
    got = items(setting(head__sharding="replicated", head__type="softmax", optim__type="adamw",
                        loss__center_weight=0.01))
    width = 129  # a softmax row's weights and bias
    assert got["optimizer slots"] == 2 * 4 * 1_000_000
    assert got["head block"] == 1000 * width * 4 and got["head slots"] == 2 * 1000 * width * 4
    assert got["head gradient"] == 1000 * width * 4
    assert got["head temporaries"] == plan.HEAD_TEMPORARIES * 4 * 1000 * 4  # the GPU's own batch, all C
    assert got["center-loss centers"] == 1000 * 128 * 4  # auto: replicated beside a replicated head
    sharded = items(setting(loss__center_weight=0.01))
    assert sharded["center-loss centers"] == 334 * 128 * 4


def test_mixed_precision_accumulation_and_partial_fc_by_hand():
    got = items(setting(train__mixed_precision="float16", train__accumulate_steps=2, head__sample_rate=0.1))
    assert got["float16 copies of the weights"] == 2 * 1_000_000
    assert got["backbone gradients and their sum over micro-batches"] == 2 * 4 * 1_000_000
    assert got["activations"] == math.ceil(4 * (60_000 * 2 + 40_000 * 4) * plan.KEPT)
    columns = math.ceil(0.1 * 334)  # 34 sampled rows of 334; 12 scored examples could add positives, not more
    assert got["sampled rows"] == (2 + 1 + 1) * columns * 128 * 4  # gradient (x 2 micro-batches), weight, slot
    assert got["head temporaries"] == plan.SAMPLED_TEMPORARIES * 12 * columns * 4
    # the positives of a large batch outnumber the sampled rows: at most the batch, at most the block
    assert plan.sampled_columns(0.1, 334, 100) == 100 and plan.sampled_columns(0.1, 334, 1000) == 334


def test_the_solver_finds_the_boundary():
    assert plan.largest(lambda n: n * n <= 1000, 1, 10 ** 6) == 31
    assert plan.largest(lambda n: False, 1, 100) == 0 and plan.largest(lambda n: True, 1, 100) == 100
    s = setting(classes=100_000, gpus=2)
    budget = s.total(batch=57) + 1
    assert s.largest_batch(budget) == 57 and s.total(batch=58) > budget
    assert s.largest_batch(s.total(batch=1) - 1) == 0  # the state alone is over


def test_the_largest_sample_rate_fits_and_the_next_does_not():
    s = setting(classes=1_000_000, gpus=2, data__batch_size=64)
    budget = 0.5 * (s.total(sample_rate=0.2) + s.total(sample_rate=0.21))
    rate = s.largest_sample_rate(budget)
    assert 0.2 <= rate < 0.21
    assert s.total(sample_rate=rate) <= budget < s.total(sample_rate=round(rate + 1e-4, 4))
    assert s.largest_sample_rate(s.total(sample_rate=0.0) - 1) is None  # not even the batch's positives fit
    assert setting(head__sharding="replicated").largest_sample_rate(10 * plan.GIB) is None


def test_counts_come_from_the_config_then_the_source_then_the_flags():
    recipe = parse_config("ms1mv2_r50", data_path=False)
    assert plan.data_size(recipe)[:2] == (85_742, 5_822_653)
    assert plan.data_size(parse_config("debug")) == (30, 300, "data.source orl", "data.source orl")
    synthetic = parse_config(None, ["data.source=synthetic", "data.synthetic_identities=7",
                                    "data.synthetic_images_per_identity=3"])
    assert plan.data_size(synthetic)[:2] == (7, 21)
    packed = parse_config(None, ["data.source=recordio"], data_path=False)
    assert plan.data_size(packed) == (None, None, None, None)
    assert plan.data_size(packed, 1000, 50_000) == (1000, 50_000, "--classes", "--images")
    with pytest.raises(InputError, match="--classes 1,000: data.num_classes says 85,742"):
        plan.data_size(recipe, classes=1000)


def test_the_data_path_is_checked_unless_the_plan_asks_not_to():
    with pytest.raises(ConfigError, match="data.path: required"):
        parse_config("ms1mv2_r50")
    assert parse_config("ms1mv2_r50", data_path=False).data.path == ""


def test_steps_and_the_learning_rate_of_a_recipe():
    cfg = parse_config("ms1mv2_r50", data_path=False)
    eight = "\n".join(plan.schedule_lines(cfg, 8, 5_822_653))
    assert "128 per GPU x 8 GPUs = 1,024" in eight
    assert "5,687 per epoch" in eight and "total 113,740 = 20 epochs" in eight
    assert "learning rate: 0.1 = optim.lr 0.1 x 1,024 / optim.lr_global_batch 1,024" in eight
    four = "\n".join(plan.schedule_lines(cfg, 4, None))
    assert "learning rate: 0.05 " in four and "per epoch unknown" in four and "total unknown" in four
    debug = "\n".join(plan.schedule_lines(parse_config("debug"), 1, 300))
    assert "total 150 (train.steps)" in debug and "learning rate: 0.05 (optim.lr as given" in debug


def test_the_command_on_the_debug_config(capsys):
    assert plan.main(["--config", "debug", "--gpus", "2", "--gpu-memory-gib", "16"]) == plan.EXIT_FITS
    out = capsys.readouterr().out
    assert "30 identities (data.source orl), 300 images" in out and "fits" in out
    assert "global batch: 32 per GPU x 2 GPUs = 64" in out
    # less than the overhead alone: nothing fits
    assert plan.main(["--config", "debug", "--gpus", "2", "--gpu-memory-gib", "0.5"]) == plan.EXIT_TOO_BIG
    out = capsys.readouterr().out
    assert "does NOT fit" in out and "largest per-GPU batch that fits: none" in out


@pytest.mark.parametrize("recipe", RECIPES)
def test_the_command_on_every_recipe_without_its_data(recipe, capsys):
    assert plan.main(["--config", recipe, "--gpus", "8", "--gpu-memory-gib", "80"]) == plan.EXIT_FITS
    assert "fits" in capsys.readouterr().out
    assert plan.main(["--config", recipe, "--gpus", "1", "--gpu-memory-gib", "4"]) == plan.EXIT_TOO_BIG
    out = capsys.readouterr().out
    assert "does NOT fit" in out and "largest per-GPU batch that fits" in out


def test_bad_input_is_one_line_and_exit_2(capsys):
    assert plan.main(["--config", "no_such_config", "--gpus", "8", "--gpu-memory-gib", "32"]) == plan.EXIT_INPUT
    err = capsys.readouterr().err
    assert err.startswith("distface: --config: no such file: no_such_config") and len(err.splitlines()) == 1
    assert plan.main(["--config", "debug", "--set", "data.source=recordio", "--gpus", "8",
                      "--gpu-memory-gib", "32"]) == plan.EXIT_INPUT
    assert "the identity count is unknown" in capsys.readouterr().err
    assert plan.main(["--config", "debug", "--gpus", "0", "--gpu-memory-gib", "32"]) == plan.EXIT_INPUT
    assert capsys.readouterr().err == "distface: --gpus: must be >= 1, got 0\n"
