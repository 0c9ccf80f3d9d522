"""A `.tflite` file run by MediaPipe Tasks' `ImageClassifier`, the way an Android/iOS/web app runs it.

MediaPipe Tasks reads everything it needs from the file's TFLite Metadata (normalisation, class
names; `kerascnn.tflite_metadata`), takes uint8 RGB images and returns categories with scores.
`MediaPipeClassifier` turns kerascnn's raw-pixel arrays into such images (rounded to uint8; gray
ones repeated into RGB, which the files of gray models convert back inside) and the categories
back into a probability vector in class order, so the export's parity check and `kerascnn bench
predict` can hold MediaPipe Tasks to the same bars as kerascnn's own Predictor.

Example:
    with MediaPipeClassifier("saved_models/digits-cnn/model.tflite") as classifier:
        probabilities = classifier.predict_proba(pixels)   # N x classes
        classifier.class_names                              # from the file's labels
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kerascnn.errors import ModelLoadError, first_line
from kerascnn.quiet import native_stderr


def mediapipe_image(pixels: np.ndarray):
    """One H x W x C raw-pixel array (C = 1 or 3) as a MediaPipe SRGB image of uint8 pixels."""
    import mediapipe as mp

    pixels = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(pixels))


class MediaPipeClassifier:
    """MediaPipe Tasks' `ImageClassifier` over a `.tflite` file, returning every class's score.

    Raises ModelLoadError with MediaPipe's own reason when it refuses the file (no metadata, a
    1-channel or int8 input, ...).
    """

    def __init__(self, path: str | Path):
        from mediapipe.tasks.python import vision
        from mediapipe.tasks.python.core.base_options import BaseOptions

        self.path = Path(path)
        options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(self.path)),
                                                max_results=-1)  # all classes, not the top few
        try:
            with native_stderr():  # creating the task prints "INFO: Created TensorFlow Lite XNNPACK delegate"
                self.classifier = vision.ImageClassifier.create_from_options(options)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelLoadError(f"MediaPipe Tasks cannot run {self.path.name}: {first_line(exc)}") from None
        self.class_names: list[str] | None = None

    def classify(self, pixels: np.ndarray) -> list:
        """MediaPipe's categories (index, score, category_name) for one H x W x C raw-pixel image."""
        return self.classifier.classify(mediapipe_image(pixels)).classifications[0].categories

    def predict_proba(self, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Scores (N x classes) for a batch of raw-pixel images, one MediaPipe call an image as in an
        app (`batch_size` is accepted for the Predictor interface and unused)."""
        rows = []
        for image in np.asarray(images):
            categories = self.classify(image)
            if self.class_names is None:
                self.class_names = [c.category_name for c in sorted(categories, key=lambda c: c.index)]
            row = np.zeros(len(categories), np.float32)
            row[[c.index for c in categories]] = [c.score for c in categories]
            rows.append(row)
        return np.stack(rows)

    def close(self) -> None:
        self.classifier.close()

    def __enter__(self) -> "MediaPipeClassifier":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
