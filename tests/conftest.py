"""Shared fixtures: quiet TensorFlow, tiny generated image folders, and one default digits run."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import keras  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402


def write_image_folder(root, classes=("cat", "dog"), per_class=12, size=(16, 16), mode="RGB", seed=0):
    """root/<class>/<i>.png with class-dependent brightness, so a model can tell classes apart."""
    rng = np.random.default_rng(seed)
    channels = 1 if mode == "L" else 3
    for label, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = 40 + 170 * label / max(1, len(classes) - 1)
            pixels = np.clip(base + rng.normal(0, 20, (*size, channels)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels.squeeze() if channels == 1 else pixels, mode).save(folder / f"{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path):
    return write_image_folder(tmp_path / "images")


@pytest.fixture(scope="session")
def default_run(tmp_path_factory):
    """`kerascnn.run()` with the embedded default config (digits, default `cnn`), written once per session;
    `cpu_seconds` is the CPU time the run took (all threads of this process), which other jobs on the
    machine do not inflate the way they inflate wall time."""
    import resource

    from kerascnn.config import load_config
    from kerascnn.runner import run

    output = tmp_path_factory.mktemp("runs")
    config = load_config(values={"run.output": str(output), "run.name": "default", "train.verbose": 0})
    before = resource.getrusage(resource.RUSAGE_SELF)
    result = run(config)
    after = resource.getrusage(resource.RUSAGE_SELF)
    result.cpu_seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result


@pytest.fixture(scope="module")
def tiny_data():
    """60 8x8 grayscale images in 3 classes whose brightness differs (from_arrays splits off validation and test)."""
    from kerascnn.data.datasets import from_arrays

    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 20)
    images = np.clip(40 + 80 * labels[:, None, None, None] + rng.normal(0, 20, (60, 8, 8, 1)), 0, 255)
    return from_arrays(images.astype("uint8"), labels, class_names=["dark", "mid", "light"])


@pytest.fixture(scope="module")
def mnv2_weights(tmp_path_factory):
    """Random weights of the smallest MobileNetV2 (alpha 0.35, its 32x32 minimum input) in a file: the documented
    `--weights PATH` way to freeze a backbone in tests."""
    from kerascnn.models.transfer import build_backbone

    path = tmp_path_factory.mktemp("mnv2") / "backbone.weights.h5"
    build_backbone("mobilenet_v2", (32, 32, 3), "none", alpha=0.35).save_weights(path)
    return str(path)


@pytest.fixture(scope="module")
def cnn_weights(tmp_path_factory):
    """A kerascnn `cnn` (8x8x1, 4 classes, filters 8 and 16) saved as .keras, as a run writes it: the `--weights PATH`
    of a cnn backbone."""
    from kerascnn.models import build_model

    path = tmp_path_factory.mktemp("pretrained") / "model.keras"
    build_model("cnn", (8, 8, 1), 4, filters=(8, 16)).save(path)
    return str(path)


class InterruptAt(keras.callbacks.Callback):
    """Ctrl-C arriving mid-epoch: raises KeyboardInterrupt after batch `batch` of epoch `epoch`, once (the same
    instance handed to a resumed fit lets it run through)."""

    def __init__(self, epoch: int, batch: int):
        super().__init__()
        self.epoch, self.batch, self.current, self.fired = epoch, batch, None, False

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if not self.fired and (self.current, batch) == (self.epoch, self.batch):
            self.fired = True
            raise KeyboardInterrupt
