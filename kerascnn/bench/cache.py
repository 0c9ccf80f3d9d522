"""`kerascnn bench cache`: a frozen backbone's head trained on cached features against the whole network.

One run trains the same transfer model twice from the same seed, `train.cache_features = false` (the
reference: the backbone runs on every image every epoch) and `true` (`kerascnn.feature_cache`: the
backbone runs once per image, then only the head trains), and reports seconds per epoch of each (the
cached figure includes its one pass of the backbone), their ratio, and both test accuracies with the
largest difference between the two models' test probabilities.

The backbone has random weights, saved to a file and passed as a weights path (the way tests freeze
a backbone without ImageNet weights): fine for timing. Through random convolutions and BatchNormalization
at its initial statistics the pooled features of MobileNetV3 shrink to about 1e-10, too small for a head
to learn from, so the statistics are first re-estimated on a few training batches
(`kerascnn.models.batchnorm`). The images are generated (three colour tints under heavy noise), so
accuracy shows that both paths learn the same thing, not ImageNet transfer.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from kerascnn.bench import register_bench
from kerascnn.config import TrainConfig

CLASS_NAMES = ("red", "green", "blue")


def add_cache_arguments(parser) -> None:
    parser.add_argument("--backbone", default="mobilenet_v3_small",
                        help="a keras.applications backbone (default mobilenet_v3_small)")
    parser.add_argument("--size", type=int, default=224, help="image side (default 224)")
    parser.add_argument("--images", type=int, default=400, help="generated images, all splits (default 400)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each training (default 3)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=42)


def tinted_images(n: int, size: int, seed: int = 0):
    """`n` size x size RGB images in 3 classes, each a faint tint of one channel under heavy noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASS_NAMES)
    images = rng.normal(128, 50, (n, size, size, 3))
    images[np.arange(n), :, :, labels] += 25
    return np.clip(images, 0, 255).astype("uint8"), labels


@register_bench("cache", help="seconds per epoch of a frozen backbone's head on cached features vs the whole network",
                add_arguments=add_cache_arguments)
def run_cache(args) -> dict:
    """Seconds per epoch uncached and cached (side by side, same seed), their ratio, and both accuracies."""
    import keras
    import numpy as np

    from kerascnn.data.datasets import from_arrays
    from kerascnn.evaluation import evaluate
    from kerascnn.models.batchnorm import reestimate_batch_norm
    from kerascnn.models.transfer import BACKBONES, build_backbone, build_transfer_model, preprocessing_layers
    from kerascnn.training import train

    keras.utils.set_random_seed(args.seed)  # the backbone's random weights too
    x, y = tinted_images(args.images, args.size, args.seed)
    data = from_arrays(x, y, class_names=list(CLASS_NAMES), seed=args.seed)
    test_images = np.concatenate([batch for batch, _ in data.test.batch(256).as_numpy_iterator()]).astype("float32")
    results = {"backbone": args.backbone, "size": args.size, "epochs": args.epochs, **{
        f"{split}_images": count for split, count in data.counts.items()}}
    probabilities = {}
    with tempfile.TemporaryDirectory() as workdir:
        weights = str(Path(workdir) / "backbone.weights.h5")
        network = build_backbone(args.backbone, (args.size, args.size, 3))
        pixels = x = keras.Input((args.size, args.size, 3))
        for layer in preprocessing_layers(BACKBONES[args.backbone].preprocessing, 3):
            x = layer(x)
        reestimate_batch_norm(keras.Model(pixels, network(x)), data.train.batch(args.batch_size), max_batches=4)
        network.save_weights(weights)
        keras.backend.clear_session()
        for name, setting in (("uncached", False), ("cached", True)):
            keras.utils.set_random_seed(args.seed)
            model = build_transfer_model(args.backbone, (args.size, args.size, 3), len(CLASS_NAMES),
                                         "feature_extraction", weights)
            start = time.perf_counter()
            result = train(model, data, TrainConfig(epochs=args.epochs, batch_size=args.batch_size, verbose=0,
                                                    tensorboard=False, early_stopping_patience=0,
                                                    cache_features=setting), seed=args.seed)
            seconds = time.perf_counter() - start
            results[f"{name}.seconds_per_epoch"] = round(seconds / args.epochs, 3)
            if setting:
                extract = result.feature_cache[0]["extract_seconds"]
                results["cached.extract_seconds"] = extract
                results["cached.head_seconds_per_epoch"] = round((seconds - extract) / args.epochs, 3)
                results["cached.feature_bytes"] = result.feature_cache[0]["bytes"]
            results[f"{name}.accuracy"] = round(evaluate(model, data)["accuracy"], 4)
            probabilities[name] = model.predict(test_images, verbose=0)
            del model
            keras.backend.clear_session()
    results["speedup"] = round(results["uncached.seconds_per_epoch"] / results["cached.seconds_per_epoch"], 2)
    difference = np.abs(probabilities["cached"] - probabilities["uncached"]).max()
    results["max_abs_diff_probabilities"] = float(f"{difference:.1e}")
    return results
