"""`kerascnn bench audit`: recall and precision of `kerascnn inspect`'s label-issue candidates, and its speed.

Labels of `--flip` (5 %) of scikit-learn's 1,797 digits are changed to another digit (seeded). The
digits are written as PNG files with a label CSV (the noisy labels), and `kerascnn inspect
labels.csv --json` runs on it in a fresh process, as a user would run it (the bench sits below the
audit in the package's layers, so it calls the command rather than the function). Its candidates are
compared with the planted flips: recall is the share of flips found, precision the share of candidates
that are flips. The time is the audit's own (files read, duplicates, label issues), per 1,000 images,
and the whole command's wall time (process start and imports included).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from kerascnn.bench import register_bench


def add_arguments(parser) -> None:
    parser.add_argument("--flip", type=float, default=0.05, help="share of labels changed (0.05)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds of the quick model (5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the flips (0)")


def noisy_digits(folder: Path, flip: float, seed: int) -> tuple[Path, set[str]]:
    """digits as folder/<i>.png with a labels.csv whose `flip` share of labels is wrong; the flipped paths."""
    from kerascnn.data.datasets import DATASETS

    images, labels, _, _, names = DATASETS["digits"].loader()
    rng = np.random.default_rng(seed)
    flipped = rng.choice(len(labels), size=round(flip * len(labels)), replace=False)
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + rng.integers(1, len(names), len(flipped))) % len(names)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "label"])
        for i, (image, label) in enumerate(zip(images, noisy)):
            Image.fromarray(image[..., 0]).save(folder / f"{i}.png")
            writer.writerow([f"{i}.png", names[label]])
    return folder / "labels.csv", {str(folder / f"{i}.png") for i in flipped}


@register_bench("audit", help="label-issue recall/precision on digits with 5 %% planted flips; audit time",
                add_arguments=add_arguments)
def run(args) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        table, flipped = noisy_digits(Path(scratch) / "digits", args.flip, args.seed)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "kerascnn", "inspect", str(table), "--json", "--folds",
                               str(args.folds)], capture_output=True, text=True, check=True)
        wall = time.perf_counter() - start
    result = json.loads(done.stdout)
    found = {issue["path"] for issue in result["label_issues"]}
    hits = len(found & flipped)
    return {"images": result["images"], "planted_flips": len(flipped), "candidates": len(found),
            "recall": round(hits / len(flipped), 4), "precision": round(hits / max(1, len(found)), 4),
            "duplicate_groups": len(result["duplicates"]),
            "phash_candidates": result["duplicate_summary"]["phash_candidates"],
            "audit_seconds": result["seconds"],
            "seconds_per_1000_images": round(1000 * result["seconds"] / result["images"], 2),
            "command_wall_seconds": round(wall, 2)}
