"""Model builders: raw pixels in, probabilities out; subclassed twins equal their Sequential models."""

import keras
import numpy as np
import pytest

from kerascnn.errors import ConfigError
from kerascnn.models import build_model, list_models

SHAPES = [(8, 8, 1), (28, 28, 1), (32, 32, 3), (5, 7, 3)]


def test_registry_lists_the_seed_networks():
    assert {"mlp", "cnn", "mlp_subclassed", "cnn_subclassed"} <= set(list_models())


@pytest.mark.parametrize("name", ["mlp", "cnn", "mlp_subclassed", "cnn_subclassed"])
@pytest.mark.parametrize("shape", SHAPES)
def test_models_take_raw_pixels_and_return_probabilities(name, shape):
    model = build_model(name, shape, 4)
    pixels = np.random.default_rng(0).uniform(0, 255, (3, *shape)).astype("float32")
    probabilities = np.asarray(model(pixels, training=False))
    assert probabilities.shape == (3, 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert isinstance(model.layers[0], keras.layers.Rescaling) or any(
        isinstance(layer, keras.layers.Rescaling) for layer in model.stack)


@pytest.mark.parametrize("twin", ["mlp", "cnn"])
def test_subclassed_twins_have_the_same_parameters(twin):
    options = {"hidden": [32, 16]} if twin == "mlp" else {"filters": [8, 16], "dense": 20}
    sequential = build_model(twin, (12, 12, 3), 5, **options)
    subclassed = build_model(f"{twin}_subclassed", (12, 12, 3), 5, **options)
    assert isinstance(subclassed, keras.Model) and not isinstance(subclassed, keras.Sequential)
    assert sequential.count_params() == subclassed.count_params()
    assert [w.shape for w in sequential.weights] == [w.shape for w in subclassed.weights]


def test_seed_defaults():
    mlp = build_model("mlp", (28, 28, 1), 10)
    assert [layer.units for layer in mlp.layers if isinstance(layer, keras.layers.Dense)] == [512, 256, 10]
    assert {layer.rate for layer in mlp.layers if isinstance(layer, keras.layers.Dropout)} == {0.2}
    cnn = build_model("cnn", (32, 32, 3), 10)
    assert [layer.filters for layer in cnn.layers if isinstance(layer, keras.layers.Conv2D)] == [16, 32, 64]
    assert [layer.units for layer in cnn.layers if isinstance(layer, keras.layers.Dense)] == [500, 10]


def test_cnn_pools_only_while_the_map_is_large_enough():
    cnn = build_model("cnn", (4, 4, 1), 3, filters=[4, 4, 4, 4])
    assert sum(isinstance(layer, keras.layers.MaxPooling2D) for layer in cnn.layers) == 2


@pytest.mark.parametrize("init", ["general_rule_uniform", "general_rule_normal", "he_normal", "glorot_uniform"])
def test_kernel_initializers(init):
    """Each initializer's spread over a 64 x 256 kernel (fan_in 64, fan_out 256), as its definition says."""
    model = build_model("mlp", (8, 8, 1), 3, hidden=[256], kernel_initializer=init)
    kernel = np.asarray(model.get_layer("dense_0").kernel)
    fan_in, fan_out = kernel.shape
    if init == "general_rule_uniform":  # the course notes' general rule: uniform in [-1/sqrt(n), 1/sqrt(n)], n = inputs
        bound = 1 / np.sqrt(fan_in)
        assert 0.9 * bound < np.abs(kernel).max() <= bound
        assert kernel.std() == pytest.approx(bound / np.sqrt(3), rel=0.05)
    elif init == "general_rule_normal":  # the course notes' normal variant: N(0, 1/n), not truncated
        assert kernel.std() == pytest.approx(1 / np.sqrt(fan_in), rel=0.05)
        assert np.abs(kernel).max() > 2.5 / np.sqrt(fan_in)
    elif init == "he_normal":  # truncated normal at 2 sigma whose std is sqrt(2 / fan_in)
        sigma = np.sqrt(2 / fan_in) / 0.87962566103423978  # Keras' correction for the truncation
        assert kernel.std() == pytest.approx(np.sqrt(2 / fan_in), rel=0.05)
        assert 1.9 * sigma < np.abs(kernel).max() <= 2 * sigma + 1e-6
    else:  # glorot_uniform: uniform in [-sqrt(6 / (fan_in + fan_out)), ...]
        bound = np.sqrt(6 / (fan_in + fan_out))
        assert 0.9 * bound < np.abs(kernel).max() <= bound
    assert abs(kernel.mean()) < 0.1 * kernel.std()


@pytest.mark.parametrize("kwargs, fragment", [
    ({"name": "resnet9000"}, "unknown model"),
    ({"name": "cnn", "filtres": [8]}, "did you mean 'filters'"),
    ({"name": "cnn", "dropout": 1.5}, "dropout must be in [0, 1)"),
    ({"name": "mlp", "kernel_initializer": "nonsense"}, "unknown kernel_initializer 'nonsense'"),
])
def test_bad_options(kwargs, fragment):
    name = kwargs.pop("name")
    with pytest.raises(ConfigError) as error:
        build_model(name, (8, 8, 1), 3, **kwargs)
    assert fragment in str(error.value)


def test_needs_two_classes_and_a_3d_shape():
    with pytest.raises(ConfigError, match="at least 2 classes"):
        build_model("cnn", (8, 8, 1), 1)
    with pytest.raises(ConfigError, match="height, width, channels"):
        build_model("cnn", (8, 8), 3)
