"""Shared fixtures: quiet TensorFlow, tiny generated image folders, and one default digits run."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
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
