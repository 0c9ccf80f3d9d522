"""The environment `make setup` builds: one OpenCV distribution, and MediaPipe Tasks importable."""

import importlib.metadata

import numpy as np


def installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def test_one_opencv_distribution_provides_a_working_cv2():
    import cv2

    # mediapipe requires opencv-contrib-python; another distribution would overwrite the same cv2 files
    assert installed("opencv-contrib-python")
    assert not [name for name in ("opencv-python", "opencv-python-headless", "opencv-contrib-python-headless")
                if installed(name)]
    image = np.arange(16, dtype=np.uint8).reshape(4, 4)
    shifted = cv2.warpAffine(image, np.float32([[1, 0, 1], [0, 1, 0]]), (4, 4), borderMode=cv2.BORDER_CONSTANT)
    np.testing.assert_array_equal(shifted[:, 1:], image[:, :3])
    assert shifted[:, 0].tolist() == [0, 0, 0, 0]
    assert cv2.resize(image, (8, 8), interpolation=cv2.INTER_NEAREST).shape == (8, 8)


def test_mediapipe_tasks_vision_imports_without_portaudio():
    # sounddevice (a mediapipe dependency) needs the PortAudio library only for audio recording;
    # the vision tasks import without it
    from mediapipe.tasks.python import vision

    assert vision.ImageClassifier
