"""kerascnn: from a folder of images to a trained CNN and deployable, verified artifacts.

Public API (each stage usable alone):
    load_data, from_arrays, from_dataframe -> ImageData (train/validation/test tf.data splits)
    make_augment            -> random training-batch augmentation (ImageDataGenerator's parameters)
    build_model, list_models -> a Keras model taking raw pixels, returning probabilities
    train                   -> fit with checkpoints, early stopping, history
    evaluate                -> test metrics
    export                  -> .keras, .h5, SavedModel, TFLite, each checked for parity
    load                    -> a Predictor over any artifact
    run, load_config        -> the whole path from a config
    inspect                 -> a dataset audit: counts, duplicates and leakage, label-error candidates

Names are imported on first use, so `import kerascnn` (and the CLI's start) does not pay for
TensorFlow until a stage needs it.
"""

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "RunConfig": "kerascnn.config", "load_config": "kerascnn.config", "AugmentConfig": "kerascnn.config",
    "make_augment": "kerascnn.data.augment",
    "ImageData": "kerascnn.data.datasets", "from_arrays": "kerascnn.data.datasets",
    "load_data": "kerascnn.data.datasets", "from_dataframe": "kerascnn.data.table",
    "build_model": "kerascnn.models", "list_models": "kerascnn.models",
    "train": "kerascnn.training", "evaluate": "kerascnn.evaluation", "export": "kerascnn.export",
    "Predictor": "kerascnn.predict", "load": "kerascnn.predict",
    "RunResult": "kerascnn.runner", "run": "kerascnn.runner", "inspect": "kerascnn.audit",
}
__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'kerascnn' has no attribute {name!r}")


def __dir__():
    return __all__
