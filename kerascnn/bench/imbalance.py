"""`kerascnn bench imbalance`: `train.class_weight = "balanced"` against no weights on imbalanced digits.

scikit-learn's digits are split as training would split them (stratified, seeded); then three classes
(`--rare`) are cut to `--fraction` (5 %) of their training and validation images, while the test split
stays whole, so each class's test recall is measured on its ~36 test images. The same network is
trained twice at the same seed, once without class weights and once with scikit-learn's balanced
weights; the results are the macro recall (balanced accuracy) and the recall of the rare classes.
"""

from __future__ import annotations

import time

import numpy as np

from kerascnn.bench import register_bench


def add_arguments(parser) -> None:
    parser.add_argument("--rare", default="1,4,7", help="digits cut to --fraction of their images (1,4,7)")
    parser.add_argument("--fraction", type=float, default=0.05, help="share of the rare classes kept (0.05)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs per training (30)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the splits, the cut and the weights (42)")


def imbalanced_digits(rare: list[int], fraction: float, seed: int):
    """An ImageData of digits whose `rare` classes keep `fraction` of their training/validation images."""
    from kerascnn.data.datasets import DATASETS, from_arrays
    from kerascnn.data.imagedata import stratified_split

    images, labels, _, _, names = DATASETS["digits"].loader()
    train_idx, test_idx = stratified_split(labels, 0.2, seed, "test")
    rng = np.random.default_rng(seed)
    keep = [i for i in train_idx if labels[i] not in rare]
    for k in rare:
        members = train_idx[labels[train_idx] == k]
        keep += rng.choice(members, size=max(2, round(fraction * len(members))), replace=False).tolist()
    keep = np.sort(np.asarray(keep))
    return from_arrays(images[keep], labels[keep], images[test_idx], labels[test_idx], names, seed=seed,
                       name="digits-imbalanced")


@register_bench("imbalance", help="class_weight balanced vs none on digits with three classes cut to 5 %%",
                add_arguments=add_arguments)
def run(args) -> dict:
    import keras
    from sklearn.metrics import recall_score

    from kerascnn.config import TrainConfig
    from kerascnn.evaluation import predict_function, predict_split
    from kerascnn.models import build_model
    from kerascnn.training import train

    rare = [int(k) for k in args.rare.split(",")]
    data = imbalanced_digits(rare, args.fraction, args.seed)
    results = {"train_images": data.counts["train"], "test_images": data.counts["test"],
               "rare_train_images": {str(k): int((data.arrays["train"][1] == k).sum()) for k in rare}}
    for name, weight in (("none", None), ("balanced", "balanced")):
        keras.utils.set_random_seed(args.seed)
        model = build_model("cnn", data.input_shape, data.num_classes)
        start = time.perf_counter()
        train(model, data, TrainConfig(epochs=args.epochs, verbose=0, tensorboard=False, class_weight=weight),
              seed=args.seed)
        probabilities, labels = predict_split(predict_function(model), data)
        recall = recall_score(labels, probabilities.argmax(1), average=None, labels=list(range(10)), zero_division=0)
        results[f"{name}_macro_recall"] = round(float(recall.mean()), 4)
        results[f"{name}_rare_recall"] = round(float(recall[rare].mean()), 4)
        results[f"{name}_rare_recall_by_class"] = {str(k): round(float(recall[k]), 4) for k in rare}
        results[f"{name}_seconds"] = round(time.perf_counter() - start, 1)
    return results
