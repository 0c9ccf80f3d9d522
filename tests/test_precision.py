"""train.precision: the policy a run trains in, and the start-up check behind `auto`."""

import keras
import pytest

from kerascnn import precision
from kerascnn.config import DataConfig, ExportConfig, RunConfig, RunSection, TrainConfig, load_config
from kerascnn.data.datasets import from_arrays, load_data
from kerascnn.errors import ConfigError
from kerascnn.models import build_model
from kerascnn.runner import run


@pytest.fixture(scope="module")
def tiny():
    digits = load_data(DataConfig(dataset="digits"))
    (x, y), (x_test, y_test) = digits.arrays["train"], digits.arrays["test"]
    return from_arrays(x[:256], y[:256], x_test[:64], y_test[:64], config=DataConfig(dataset="digits"))


def _resnet(data):
    return lambda: build_model("resnet_small", data.input_shape, data.num_classes, stem=8, widths=[16], blocks=[1])


def _choose(config, data):
    build = _resnet(data)
    return precision.choose_precision(config, build(), build, data)


def test_cpu_bfloat16_units_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert precision.cpu_bfloat16_units(cpuinfo) == ["amx_bf16", "avx512_bf16"]
    cpuinfo.write_text("flags\t\t: fpu sse2 avx2\n")
    assert precision.cpu_bfloat16_units(cpuinfo) == []
    assert precision.cpu_bfloat16_units(tmp_path / "missing") == []


def test_cpu_model_is_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx512_bf16\n"
                       "processor\t: 1\nmodel name\t: AMD EPYC\n")
    assert precision.cpu_model(cpuinfo) == "AMD EPYC"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu\n")
    assert precision.cpu_model(cpuinfo) == "unknown"
    assert precision.cpu_model(tmp_path / "missing") == "unknown"


def test_an_explicit_policy_is_taken_as_set_and_mixed_precision_means_float16(tiny):
    choice = _choose(TrainConfig(precision="mixed_bfloat16"), tiny)
    assert (choice.policy, choice.reason) == ("mixed_bfloat16", "train.precision")
    assert _choose(TrainConfig(mixed_precision=True), tiny).policy == "mixed_float16"


def test_auto_skips_the_check_for_a_short_run_and_on_a_cpu_without_bfloat16(tiny, monkeypatch):
    choice = _choose(TrainConfig(epochs=1), tiny)
    assert choice.policy == "float32"
    if precision.cpu_bfloat16_units():
        assert "too short a run" in choice.reason and choice.float32_step_ms is None
    monkeypatch.setattr(precision, "cpu_bfloat16_units", lambda: [])
    assert _choose(TrainConfig(), tiny).reason == "auto: this CPU has no bfloat16 units"


def test_the_check_times_both_policies_and_picks_bfloat16_only_if_clearly_faster(tiny, monkeypatch):
    monkeypatch.setattr(precision, "cpu_bfloat16_units", lambda: ["amx_bf16"])
    monkeypatch.setattr(precision, "MIN_CHECKED_FLOPS", 0)
    build = _resnet(tiny)
    model = build()
    before = [weights.copy() for weights in model.get_weights()]
    choice = precision.choose_precision(TrainConfig(batch_size=32), model, build, tiny)
    assert all((a == b).all() for a, b in zip(before, model.get_weights()))  # the run's own network is not trained
    assert choice.float32_step_ms > 0 and choice.bfloat16_step_ms > 0
    assert choice.max_probability_difference < precision.MAX_PROBABILITY_DIFFERENCE  # same weights, near-same output
    faster = choice.float32_step_ms >= precision.MIN_SPEEDUP * choice.bfloat16_step_ms
    assert choice.policy == ("mixed_bfloat16" if faster else "float32")
    assert set(choice.to_dict()) == {"policy", "reason", "float32_step_ms", "bfloat16_step_ms",
                                     "max_probability_difference"}
    monkeypatch.setattr(precision, "MAX_PROBABILITY_DIFFERENCE", -1.0)  # predictions that never agree: float32
    assert _choose(TrainConfig(batch_size=32), tiny).policy == "float32"


def test_a_bfloat16_run_exports_float32_artifacts_with_parity(tiny, tmp_path):
    config = RunConfig(run=RunSection(name="bf16", output=str(tmp_path)),
                       train=TrainConfig(epochs=1, precision="mixed_bfloat16", verbose=0, tensorboard=False),
                       export=ExportConfig(formats=("keras", "tflite"), tflite=("float32",)))
    config = config.replace("model", name="resnet_small", options={"stem": 8, "widths": [16], "blocks": [1]})
    result = run(config, data=tiny)
    assert result.manifest["precision"] == {"policy": "mixed_bfloat16", "reason": "train.precision"}
    assert result.model.dtype_policy.name == "float32" and keras.config.dtype_policy().name == "float32"
    assert all(entry["parity"]["top1_agreement"] == 1.0 for entry in result.manifest["artifacts"].values())


@pytest.mark.parametrize("values, message", [
    ({"train.precision": "bfloat16"}, "train.precision must be one of auto, float32, mixed_bfloat16, mixed_float16"),
    ({"train.precision": "float32", "train.mixed_precision": True}, "set only one of them"),
])
def test_bad_precision_settings_are_one_line_errors(values, message):
    with pytest.raises(ConfigError, match=message):
        load_config(values=values)
