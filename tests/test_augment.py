"""Augmentation: config validation, equivalence of the fast path with the real ImageDataGenerator,
both backends in training, no augmentation in exported models, the preview and the benchmark."""

from __future__ import annotations

import json
import multiprocessing
import time
import tomllib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from scipy import ndimage

from kerascnn.bench.augment import cpu_seconds
from kerascnn.cli import main
from kerascnn.config import AugmentConfig, RunConfig, TrainConfig, config_from_dict, load_config
from kerascnn.data import augment as augment_module
from kerascnn.data.augment import (COURSE_AUGMENTATION, FastAugment, LegacyAugment, apply_transforms, make_augment,
                                   sample_transforms)
from kerascnn.data.datasets import ImageData, from_arrays, load_data
from kerascnn.data.pipeline import batches
from kerascnn.errors import ConfigError
from kerascnn.models import build_model
from kerascnn.runner import run
from kerascnn.training import train

IDG = tf.keras.preprocessing.image.ImageDataGenerator


# --- configuration -----------------------------------------------------------------------------------

def test_defaults_augment_nothing():
    assert not AugmentConfig().enabled
    assert make_augment(AugmentConfig()) is None
    assert RunConfig().augment == AugmentConfig()


def test_toml_round_trip_keeps_idg_values():
    config = load_config(overrides=["augment.rotation_range=20", "augment.zoom_range=[0.8, 1.2]",
                                    "augment.brightness_range=[0.5, 1.5]", "augment.horizontal_flip=true",
                                    "augment.fill_mode=\"constant\"", "augment.backend=\"legacy\""])
    assert config.augment.zoom_range == (0.8, 1.2) and config.augment.zoom_bounds == (0.8, 1.2)
    assert config_from_dict(tomllib.loads(config.to_toml())) == config
    assert load_config(overrides=["augment.zoom_range=0.2"]).augment.zoom_bounds == pytest.approx((0.8, 1.2))


@pytest.mark.parametrize("override, named", [
    ("augment.rotation_range=-5", "augment.rotation_range must be in [0, 180]"),
    ("augment.width_shift_range=-0.1", "augment.width_shift_range must be a fraction in [0, 1) or a number of pixels"),
    ("augment.height_shift_range=-2", "augment.height_shift_range must be a fraction in [0, 1)"),
    ("augment.shear_range=90", "augment.shear_range must be in [0, 90)"),
    ("augment.zoom_range=1.0", "augment.zoom_range must be a number in [0, 1)"),
    ("augment.zoom_range=-0.1", "augment.zoom_range must be a number in [0, 1)"),
    ("augment.zoom_range=[0, 1.2]", "augment.zoom_range must be [low, high] with 0 < low <= high"),
    ("augment.zoom_range=[1.2, 0.8]", "augment.zoom_range must be [low, high] with 0 < low <= high"),
    ("augment.zoom_range=\"big\"", "augment.zoom_range must be a number"),
    ("augment.fill_mode=\"mirror\"", "choose from constant, nearest, reflect, wrap"),
    ("augment.fill_mode=\"wrapp\"", "did you mean 'wrap'"),
    ("augment.brightness_range=[-1, 1]", "augment.brightness_range must be [low, high] with 0 <= low <= high"),
    ("augment.channel_shift_range=-3", "augment.channel_shift_range must be >= 0"),
    ("augment.backend=\"gpu\"", "choose from fast, legacy"),
    ("augment.rotation=10", "did you mean 'rotation_range'"),
])
def test_bad_values_are_one_line_errors_naming_the_parameter(override, named):
    with pytest.raises(ConfigError) as error:
        load_config(overrides=[override])
    assert named in str(error.value) and "\n" not in str(error.value)


def test_cli_refuses_bad_augment_config_before_reading_data(tmp_path, capsys):
    assert main(["train", "--output", str(tmp_path), "--name", "bad", "--set", "augment.zoom_range=[0, 1]"]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("kerascnn: error: augment.zoom_range") and "\n" not in message
    assert not (tmp_path / "bad").exists()


# --- equivalence with the real ImageDataGenerator ----------------------------------------------------

# OpenCV's and scipy's bilinear resampling of the same float image agree to this many pixel levels.
RESAMPLING = 0.05


def smooth_pattern(height=32, width=32) -> np.ndarray:
    """A smooth 3-channel image (bilinear resampling of it has little error to hide behind)."""
    y, x = np.mgrid[:height, :width]
    base = 127 + 60 * np.sin(x / 4.0) + 60 * np.cos(y / 5.0 + x / 9.0)
    return np.stack([base, base[::-1], base[:, ::-1]], -1).astype(np.float32)


def one_transform(**values) -> dict:
    """IDG's transform-parameter dict for one image, as arrays of length 1 (what apply_transforms takes)."""
    transform = {"theta": 17.0, "tx": 3.3, "ty": -2.2, "shear": 8.0, "zx": 1.1, "zy": 0.93, "flip_horizontal": False,
                 "flip_vertical": False, "channel_shift_intensity": None, "brightness": None}
    transform.update(values)
    return transform


def as_batch(transform: dict) -> dict:
    return {key: None if value is None else np.array([value]) for key, value in transform.items()}


def fast_and_idg(transform: dict, fill_mode: str, cval=40.0, idg_fill_mode=None, image=None):
    image = smooth_pattern() if image is None else image
    fast = apply_transforms(image[None], as_batch(transform), fill_mode, cval)[0]
    reference = IDG(fill_mode=idg_fill_mode or fill_mode, cval=cval).apply_transform(image, transform)
    return fast, reference


@pytest.mark.parametrize("flips", [{}, {"flip_horizontal": True}, {"flip_vertical": True, "theta": -25.0}])
@pytest.mark.parametrize("fill_mode", ["nearest", "reflect"])
def test_same_transform_gives_idgs_image(fill_mode, flips):
    fast, reference = fast_and_idg(one_transform(**flips), fill_mode)
    np.testing.assert_allclose(fast, reference, atol=RESAMPLING)


def test_constant_fill_is_idgs_except_the_one_pixel_edge():
    transform = one_transform(theta=30.0, tx=6.0)
    fast, reference = fast_and_idg(transform, "constant")
    inside = IDG(fill_mode="constant", cval=0).apply_transform(np.ones((32, 32, 1), np.float32), transform)[..., 0] > 0
    # The blended band is one input pixel wide, up to two output pixels after this zoom and shear.
    filled = ndimage.binary_erosion(~inside, iterations=2, border_value=1)
    away_from_edge = ndimage.binary_erosion(inside, iterations=2) | filled
    assert filled.sum() > 100  # the transform uncovers a border
    np.testing.assert_allclose(fast[away_from_edge], reference[away_from_edge], atol=RESAMPLING)
    np.testing.assert_allclose(fast[filled], 40.0)
    # The edge pixels blend with cval, which is exactly scipy's "grid-constant" (IDG forwards the mode).
    grid_constant = fast_and_idg(transform, "constant", idg_fill_mode="grid-constant")[1]
    np.testing.assert_allclose(fast, grid_constant, atol=RESAMPLING)


def test_wrap_fill_repeats_the_image_with_its_own_period():
    transform = one_transform(tx=9.0, ty=-7.0)
    fast, reference = fast_and_idg(transform, "wrap")
    inside = IDG(fill_mode="constant", cval=0).apply_transform(np.ones((32, 32, 1), np.float32), transform)[..., 0] > 0
    np.testing.assert_allclose(fast[inside], reference[inside], atol=RESAMPLING)
    np.testing.assert_allclose(fast, fast_and_idg(transform, "wrap", idg_fill_mode="grid-wrap")[1], atol=RESAMPLING)


def test_channel_shift_and_brightness_match_idg_up_to_its_uint8_rounding():
    image = smooth_pattern()
    fast, reference = fast_and_idg(one_transform(channel_shift_intensity=-30.0, brightness=1.3), "nearest",
                                   image=image)
    # IDG truncates to uint8 before PIL scales by 1.3 and again after: at most 1.3 + 1 levels apart.
    np.testing.assert_allclose(fast, reference, atol=2.31)
    assert fast.max() == pytest.approx(255.0)  # brightness clips to the pixel range


def test_non_square_images_turn_about_their_centre_and_shift_along_the_named_axis():
    image = np.zeros((10, 16, 1), np.float32)
    image[2, 3] = 255.0
    half_turn = one_transform(theta=180.0, tx=0.0, ty=0.0, shear=0.0, zx=1.0, zy=1.0)
    turned, = apply_transforms(image[None], as_batch(half_turn), "constant")
    np.testing.assert_allclose(turned, image[::-1, ::-1], atol=1e-3)
    config = AugmentConfig(width_shift_range=4.0)
    transforms = sample_transforms(config, 1, (10, 16), np.random.default_rng(3))
    shifted, = apply_transforms(image[None], transforms, "constant")
    row, column = np.unravel_index(np.argmax(shifted[..., 0]), (10, 16))
    assert row == 2 and abs(column - 3) == round(abs(transforms["tx"][0]))  # horizontal, in pixels


# Recovered parameters of random transformations: three blobs, one per channel, whose centroids the
# transformation moves; the affine map through them is decomposed the way IDG composes it.
BLOB_CENTRES = np.array([[24.0, 25.0], [41.0, 27.0], [30.0, 41.0]])  # (x, y)
SIZE = 64


def blob_image() -> np.ndarray:
    y, x = np.mgrid[:SIZE, :SIZE]
    return np.stack([255 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 2.5 ** 2)) for cx, cy in BLOB_CENTRES],
                    -1).astype(np.float32)


def recovered_parameters(augmented: np.ndarray) -> dict[str, np.ndarray]:
    """theta, shear (degrees), tx, ty (pixels), zx, zy of each image's output-to-input map."""
    y, x = np.mgrid[:SIZE, :SIZE]
    mass = augmented.sum(axis=(1, 2))
    moved = np.stack([(augmented * x[..., None]).sum(axis=(1, 2)) / mass,
                      (augmented * y[..., None]).sum(axis=(1, 2)) / mass], -1)  # (n, blob, xy)
    centre = np.array([(SIZE - 1) / 2] * 2)
    result = {key: [] for key in ("theta", "shear", "tx", "ty", "zx", "zy")}
    for points in moved:
        # Output-to-input affine map through the three correspondences: input = L output + offset.
        solution = np.linalg.solve(np.c_[points, np.ones(3)], BLOB_CENTRES)
        linear, offset = solution[:2].T, solution[2]
        rotation, upper = np.linalg.qr(linear)
        signs = np.sign(np.diag(upper))
        rotation, upper = rotation * signs, upper * signs[:, None]
        shift = rotation.T @ (offset - centre + linear @ centre)
        result["theta"].append(np.degrees(np.arctan2(rotation[1, 0], rotation[0, 0])))
        result["shear"].append(np.degrees(np.arctan2(-upper[0, 1], upper[1, 1])))
        result["zx"].append(upper[0, 0])
        result["zy"].append(np.hypot(upper[0, 1], upper[1, 1]))
        result["tx"].append(shift[0])
        result["ty"].append(shift[1])
    return {key: np.array(values) for key, values in result.items()}


TOLERANCE = {"theta": 0.5, "shear": 0.5, "tx": 0.2, "ty": 0.2, "zx": 0.01, "zy": 0.01}  # of the recovery
IDENTITY = {"theta": 0.0, "shear": 0.0, "tx": 0.0, "ty": 0.0, "zx": 1.0, "zy": 1.0}
RANGES = [  # (config values, recovered parameter -> configured (low, high))
    ({"rotation_range": 30}, {"theta": (-30, 30)}),
    ({"shear_range": 20}, {"shear": (-20, 20)}),
    ({"zoom_range": [0.8, 1.2]}, {"zx": (0.8, 1.2), "zy": (0.8, 1.2)}),
    ({"width_shift_range": 0.2, "height_shift_range": 0.2}, {"tx": (-12.8, 12.8), "ty": (-12.8, 12.8)}),
]


@pytest.mark.parametrize("backend", ["fast", "legacy"])
@pytest.mark.parametrize("values, bounds", RANGES)
def test_random_transformations_stay_within_and_cover_the_configured_range(backend, values, bounds):
    augment = make_augment(AugmentConfig(**values, fill_mode="constant", backend=backend), seed=7)
    recovered = recovered_parameters(augment.augment_images(np.repeat(blob_image()[None], 200, axis=0)))
    for key, value in recovered.items():
        low, high = bounds.get(key, (IDENTITY[key], IDENTITY[key]))
        assert low - TOLERANCE[key] <= value.min() and value.max() <= high + TOLERANCE[key], key
        if key in bounds:
            assert value.min() <= low + 0.1 * (high - low) and value.max() >= high - 0.1 * (high - low), key


# --- pipeline and training ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits() -> ImageData:
    return load_data("digits")


def test_fast_augment_changes_training_batches_only(digits):
    augment = FastAugment(AugmentConfig(horizontal_flip=True, rotation_range=15), seed=1)
    images, labels = next(digits.train.batch(64).as_numpy_iterator())
    source = tf.data.Dataset.from_tensor_slices((images, labels))
    evaluated, _ = next(iter(batches(source, 64, training=False, augment=augment)))
    np.testing.assert_array_equal(evaluated.numpy(), images)
    augmented, augmented_labels = next(iter(batches(source, 64, training=True, shuffle_buffer=1, augment=augment)))
    assert augmented.shape == images.shape and augmented.dtype == tf.float32
    np.testing.assert_array_equal(augmented_labels.numpy(), labels)
    assert not np.allclose(augmented.numpy(), images)


def test_run_with_fast_augmentation_exports_models_without_it(tmp_path, digits):
    config = load_config(overrides=[f"run.output=\"{tmp_path}\"", "run.name=\"fast\"", "train.epochs=1",
                                    "train.verbose=0", "train.tensorboard=false", "model.name=\"mlp\"",
                                    "model.options={hidden=[32]}", "export.formats=[\"keras\", \"tflite\"]",
                                    "augment.rotation_range=15", "augment.zoom_range=0.1"])
    result = run(config, data=digits)
    assert not [layer for layer in result.model.layers if type(layer).__name__.startswith("Random")]
    for artifact in ("model.keras", "model.tflite"):
        assert result.manifest["artifacts"][artifact]["parity"]["top1_agreement"] == 1.0
    assert tomllib.loads((result.run_dir / "config.toml").read_text())["augment"]["rotation_range"] == 15.0


def test_legacy_backend_trains_from_arrays(digits):
    augment = make_augment(AugmentConfig(rotation_range=15, backend="legacy"), seed=1, data=digits)
    model = build_model("mlp", digits.input_shape, digits.num_classes, hidden=(16,))
    result = train(model, digits, TrainConfig(epochs=1, batch_size=128, verbose=0, tensorboard=False),
                   augment=augment)
    assert result.epochs_run == 1 and np.isfinite(result.history["loss"]).all()


def test_legacy_backend_reads_a_folders_training_files(tmp_path):
    rng = np.random.default_rng(0)
    for name, level in (("dark", 40), ("light", 200)):
        (tmp_path / name).mkdir()
        for i in range(15):
            Image.fromarray(np.clip(rng.normal(level, 20, (12, 12)), 0, 255).astype(np.uint8)).save(
                tmp_path / name / f"{i}.png")
    data = load_data(str(tmp_path))
    flow = make_augment(AugmentConfig(rotation_range=10, backend="legacy"), data=data).training_batches(data, 4, 0)
    assert flow.n == data.counts["train"] and set(flow.filenames) == set(data.files["train"][0])
    images, one_hot = flow[0]
    assert images.shape == (4, *data.input_shape) and one_hot.shape == (4, 2)
    model = build_model("mlp", data.input_shape, data.num_classes, hidden=(8,))
    assert train(model, data, TrainConfig(epochs=1, verbose=0, tensorboard=False), augment=make_augment(
        AugmentConfig(rotation_range=10, backend="legacy"), data=data)).epochs_run == 1


def test_legacy_backend_refuses_streamed_sources_up_front(digits):
    streamed = ImageData(name="tfds:mnist", class_names=digits.class_names, input_shape=digits.input_shape,
                         train=digits.train, validation=digits.validation, test=digits.test, counts=digits.counts)
    with pytest.raises(ConfigError, match="augment.backend = 'fast'"):
        make_augment(AugmentConfig(rotation_range=10, backend="legacy"), data=streamed)
    assert isinstance(make_augment(AugmentConfig(rotation_range=10), data=streamed), FastAugment)


def test_legacy_backend_uses_the_real_image_data_generator():
    augment = LegacyAugment(AugmentConfig(rotation_range=20, zoom_range=0.1, brightness_range=[0.9, 1.1]))
    assert type(augment.generator).__module__ == "keras.src.legacy.preprocessing.image"
    assert augment.generator.zoom_range == [0.9, 1.1] and augment.generator.brightness_range == [0.9, 1.1]


# --- preview and benchmark ---------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["fast", "legacy"])
def test_augment_preview_writes_a_grid(tmp_path, backend):
    out = tmp_path / "sub" / "grid.png"
    assert main(["augment-preview", "--dataset", "digits", "--out", str(out), "--images", "3", "--variants", "2",
                 "--set", f"augment.backend=\"{backend}\"", "--set", "augment.rotation_range=30"]) == 0
    with Image.open(out) as image:
        assert image.height > image.width / 3 * 2  # 3 rows of 3 columns, roughly square cells


def test_augment_preview_refuses_unknown_image_format(tmp_path, capsys):
    assert main(["augment-preview", "--out", str(tmp_path / "grid.txt")]) == 2
    assert ".png" in capsys.readouterr().err


@pytest.mark.parametrize("reference", ["processes", "serial"])
def test_bench_reports_wall_and_cpu_ratios_against_the_same_core_reference(capsys, reference):
    assert main(["bench", "augment", "--size", "28", "--images", "128", "--rounds", "2", "--workers", "2",
                 "--reference", reference, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["reference"] == reference and result["reference_workers"] == (2 if reference == "processes" else 1)
    assert result["wall_ratio"] == pytest.approx(result["fast_images_per_s"] / result["legacy_images_per_s"], rel=0.01)
    assert result["cpu_ratio"] == pytest.approx(result["legacy_cpu_us_per_image"] / result["fast_cpu_us_per_image"],
                                                rel=0.01)
    # With worker processes the augmenting happens in children: their CPU time must be counted.
    assert result["legacy_cpu_us_per_image"] > 20 and result["fast_cpu_us_per_image"] > 0
    assert result["image_shape"] == [28, 28, 1] and result["images"] == 128


def test_cpu_seconds_count_finished_child_processes():
    before = cpu_seconds()
    child = multiprocessing.get_context("fork").Process(target=busy, args=(0.3,))
    child.start()
    child.join()
    assert cpu_seconds() - before >= 0.2  # the parent only waited


def busy(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


# --- the fast path's pipeline ------------------------------------------------------------------------

def test_augmented_batches_are_the_same_batches_as_batch_with_each_image_augmented():
    images = np.random.default_rng(0).integers(0, 256, (100, 8, 8, 1)).astype(np.float32)
    labels = np.arange(100, dtype=np.int32)
    augment = FastAugment(AugmentConfig(horizontal_flip=True), seed=3)
    source = tf.data.Dataset.from_tensor_slices((images, labels))
    batches_seen = list(augment.augmented_batches(source, 7).as_numpy_iterator())
    assert [len(batch_labels) for _, batch_labels in batches_seen] == [7] * 14 + [2]  # as source.batch(7)
    augmented = np.concatenate([batch_images for batch_images, _ in batches_seen])
    np.testing.assert_array_equal(np.concatenate([batch_labels for _, batch_labels in batches_seen]), labels)
    flipped = np.array([np.array_equal(out, image[:, ::-1]) for out, image in zip(augmented, images)])
    kept = np.array([np.array_equal(out, image) for out, image in zip(augmented, images)])
    assert (flipped | kept).all() and 20 < flipped.sum() < 80


def test_large_images_warp_the_same_through_the_cache_resident_copy(monkeypatch):
    images = np.repeat(smooth_pattern(160, 160)[None], 3, axis=0)
    assert images[:1].nbytes >= augment_module.HOT_COPY_BYTES
    transforms = sample_transforms(COURSE_AUGMENTATION, 3, (160, 160), np.random.default_rng(1))
    copied = apply_transforms(images, transforms)
    assert copied.ctypes.data % 64 == 0  # TensorFlow takes it without another copy
    monkeypatch.setattr(augment_module, "HOT_COPY_BYTES", images[:1].nbytes + 1)
    np.testing.assert_array_equal(copied, apply_transforms(images, transforms))
