"""Data sources (named, folder, tfds, numpy) and the tf.data input pipeline."""

from kerascnn.data.datasets import DATASETS, ImageData, from_arrays, load_data

__all__ = ["DATASETS", "ImageData", "from_arrays", "load_data"]
