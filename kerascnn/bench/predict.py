"""`kerascnn bench predict RUN`: prediction latency and throughput of every artifact of a run.

For each artifact (`.keras`, `.h5`, the newest SavedModel version, each `.tflite` variant, `.onnx`) it
measures, through `kerascnn.load`, the median batch-1 latency and the throughput at a larger batch,
on random raw pixels of the model's input shape (content does not change the work done). Each
`.tflite` file is also run by the bare LiteRT interpreter (set_tensor / invoke / get_tensor on
ready-made input), the reference the Predictor's overhead is measured against: the target is
`predictor_over_raw` <= 1.5 at batch 1. Each `.tflite` file MediaPipe Tasks can run is also timed in
its `ImageClassifier` (`classify` on a ready uint8 image, all class scores), as an app runs it:
`mediapipe_tasks_batch1_ms` beside the Predictor's `batch1_ms` on the same file.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from kerascnn.bench import register_bench
from kerascnn.errors import KerasCNNError
from kerascnn.rundir import H5_FILE, KERAS_FILE, SAVED_MODEL_DIR


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", help="a run directory written by `kerascnn train`")
    parser.add_argument("--repeats", type=int, default=200, help="timed batch-1 calls per artifact (default 200)")
    parser.add_argument("--batch-size", type=int, default=256, help="batch size of the throughput run (default 256)")


def run_artifacts(run_dir: Path) -> list[Path]:
    """The run's model files and its newest SavedModel version, in a stable order."""
    found = [run_dir / name for name in (KERAS_FILE, H5_FILE) if (run_dir / name).is_file()]
    versions = [p for p in (run_dir / SAVED_MODEL_DIR).glob("*") if p.name.isdigit()]
    if versions:
        found.append(max(versions, key=lambda p: int(p.name)))
    return found + sorted(run_dir.glob("*.tflite")) + sorted(run_dir.glob("*.onnx"))


def median_seconds(call, repeats: int, warmup: int) -> float:
    """Median wall time of `call()` over `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def raw_litert(path: Path, images: np.ndarray):
    """A zero-argument call running the bare LiteRT interpreter on `images`, input already quantized."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    model_input, = interpreter.get_input_details()
    if images.shape[-1] == 1 and model_input["shape"][-1] == 3:  # a gray model's file takes RGB: ready-made too
        images = np.repeat(images, 3, axis=-1)
    output_index = interpreter.get_output_details()[0]["index"]
    interpreter.resize_tensor_input(model_input["index"], list(images.shape))
    interpreter.allocate_tensors()
    scale, zero_point = model_input["quantization"]
    ready = (np.round(images / scale + zero_point) if scale else images).astype(model_input["dtype"])

    def call():
        interpreter.set_tensor(model_input["index"], ready)
        interpreter.invoke()
        return interpreter.get_tensor(output_index)

    return call


def mediapipe_tasks_call(path: Path, image: np.ndarray):
    """A zero-argument call classifying `image` (H x W x C raw pixels) with MediaPipe Tasks'
    ImageClassifier over `path`, and the classifier to close; (None, None) if MediaPipe refuses the file."""
    from kerascnn.errors import ModelLoadError
    from kerascnn.mediapipe_tasks import MediaPipeClassifier, mediapipe_image

    try:
        classifier = MediaPipeClassifier(path)
    except ModelLoadError:
        return None, None
    ready = mediapipe_image(image)
    return (lambda: classifier.classifier.classify(ready)), classifier


def measure(path: Path, repeats: int, batch_size: int) -> dict:
    """Batch-1 median latency (ms) and batch throughput (images/s) of one artifact, plus the raw
    interpreter's batch-1 latency and the ratio for .tflite files."""
    from kerascnn.predict import load

    predictor = load(path)
    rng = np.random.default_rng(0)
    one = rng.uniform(0, 255, (1, *predictor.input_shape)).astype(np.float32)
    batch = rng.uniform(0, 255, (batch_size, *predictor.input_shape)).astype(np.float32)
    batch_repeats = max(3, repeats // 20)
    result = {
        "batch1_ms": 1e3 * median_seconds(lambda: predictor.predict_proba(one), repeats, warmup=10),
        "throughput_img_s": batch_size / median_seconds(lambda: predictor.predict_proba(batch, batch_size),
                                                        batch_repeats, warmup=2),
    }
    if path.suffix == ".tflite":
        result["raw_litert_batch1_ms"] = 1e3 * median_seconds(raw_litert(path, one), repeats, warmup=10)
        result["raw_litert_throughput_img_s"] = batch_size / median_seconds(raw_litert(path, batch), batch_repeats,
                                                                            warmup=2)
        result["predictor_over_raw"] = result["batch1_ms"] / result["raw_litert_batch1_ms"]
        call, classifier = mediapipe_tasks_call(path, one[0])
        if call is not None:
            with classifier:
                result["mediapipe_tasks_batch1_ms"] = 1e3 * median_seconds(call, repeats, warmup=10)
    return result


@register_bench("predict", help="batch-1 latency and throughput of each artifact of a run, with raw LiteRT "
                                "as reference", add_arguments=add_arguments)
def run(args) -> dict:
    """Flat results: `<artifact>.<measure>` for every artifact of `args.run_dir`."""
    run_dir = Path(args.run_dir)
    if args.repeats < 1 or args.batch_size < 1:
        raise KerasCNNError("--repeats and --batch-size must be positive")
    artifacts = run_artifacts(run_dir) if run_dir.is_dir() else []
    if not artifacts:
        raise KerasCNNError(f"{str(run_dir)!r} holds no model artifacts; pass a run directory written by "
                            f"`kerascnn train`")
    results = {"run": run_dir.name, "machine": platform.machine(), "cpu_count": os.cpu_count(),
               "repeats": args.repeats, "batch_size": args.batch_size}
    for path in artifacts:
        name = path.relative_to(run_dir).as_posix()
        for key, value in measure(path, args.repeats, args.batch_size).items():
            results[f"{name}.{key}"] = float(f"{value:.4g}")  # 4 significant digits: timings are noisy anyway
    return results
