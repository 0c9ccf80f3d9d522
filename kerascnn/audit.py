"""`kerascnn inspect DATASET` and `kerascnn.inspect`: audit a dataset before training on it, as HTML + JSON + CSV.

(The module is `audit`, not `inspect`: a submodule named `kerascnn.inspect` would replace the
function `kerascnn.inspect` on the package as soon as it was imported.)

What `inspect` reports, over the train/validation/test splits training would use (same seed):

- counts per class and split, and the imbalance ratio (largest class / smallest);
- image sizes, modes and formats; unreadable files (what the folder scan or label table skipped);
- exact duplicates (same content: SHA-256 of the file, or of the pixels for in-memory data) and near
  duplicates (pHash candidates from `imagehash`, each confirmed pixel by pixel at a common size; see
  `kerascnn.data.duplicates`), each group marked `within_class`, `conflicting_labels` (one image, two
  labels) and `across_splits` (leakage: the same image in train and test), every path with its split;
- label-error candidates: out-of-fold predicted probabilities of a quick model (scikit-learn's
  logistic regression on 16x16 grayscale pixels, `folds`-fold cross-validation, so no image is scored
  by a model that saw it) passed to cleanlab's `find_label_issues`, ranked by cleanlab's label quality,
  with the label the model suggests, drawn as an image grid.

Example:
    audit = inspect("digits"); print(audit.result["counts"], len(audit.result["label_issues"]))
    audit.save("audit/")   # audit.html, audit.json, duplicates.csv, label_issues.csv, label_issues.png
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import html
import io
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from kerascnn import plots
from kerascnn.config import DataConfig, RunConfig, load_config
from kerascnn.data.datasets import load_data
from kerascnn.data.duplicates import (MAX_PIXEL_DIFFERENCE, PHASH_DISTANCE, as_pil, exact_groups, groups_of_pairs,
                                      near_duplicate_pairs, split_hashes)
from kerascnn.data.imagedata import ImageData
from kerascnn.data.sampling import counts_per_class
from kerascnn.errors import DataError
from kerascnn.rundir import write_bytes_atomically, write_json_atomically, write_text_atomically

SPLITS = ("train", "validation", "test")
FEATURE_SIZE = (16, 16)
GRID_IMAGES = 24
JSON_FILE, HTML_FILE = "audit.json", "audit.html"
DUPLICATES_CSV, LABEL_ISSUES_CSV, UNREADABLE_CSV, GRID_FILE = ("duplicates.csv", "label_issues.csv",
                                                              "unreadable.csv", "label_issues.png")


@dataclasses.dataclass
class Item:
    """One image of the dataset: where it is shown from, its split, its label(s) and its pixels' source."""

    path: str
    split: str
    labels: tuple[str, ...]
    source: object  # a file path or an H x W x C array


@dataclasses.dataclass
class Audit:
    """What `inspect` found: `result` (the JSON object), the label-issue grid (PNG bytes) and where it was saved."""

    result: dict
    grid: bytes | None = None
    folder: Path | None = None

    def save(self, folder: str | Path) -> "Audit":
        """Write audit.json, audit.html, duplicates.csv, label_issues.csv, unreadable.csv and label_issues.png."""
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomically(self.folder / JSON_FILE, self.result)
        write_text_atomically(self.folder / DUPLICATES_CSV, _csv(
            ["group", "kind", "path", "split", "labels", "within_class", "conflicting_labels", "across_splits"],
            [[n, g["kind"], m["path"], m["split"], " ".join(m["labels"]), g["within_class"], g["conflicting_labels"],
              g["across_splits"]] for n, g in enumerate(self.result["duplicates"], 1) for m in g["members"]]))
        write_text_atomically(self.folder / LABEL_ISSUES_CSV, _csv(
            ["path", "split", "given_label", "suggested_label", "score"],
            [[i["path"], i["split"], i["given_label"], i["suggested_label"], i["score"]]
             for i in self.result["label_issues"]]))
        write_text_atomically(self.folder / UNREADABLE_CSV, _csv(
            ["path", "reason"], [[u["path"], u["reason"]] for u in self.result["unreadable"]]))
        if self.grid is not None:
            write_bytes_atomically(self.folder / GRID_FILE, self.grid)
        else:
            (self.folder / GRID_FILE).unlink(missing_ok=True)
        write_text_atomically(self.folder / HTML_FILE, render_html(self))
        return self


def _csv(header: list[str], rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _items(data: ImageData) -> list[Item]:
    """Every image of every split, in split order, with a path (the file, or `split/index` for arrays)."""
    def names(label) -> tuple[str, ...]:
        label = np.asarray(label)
        if label.ndim == 1:
            return tuple(data.class_names[k] for k in np.flatnonzero(label > 0.5))
        return (data.class_names[int(label)],)

    items = []
    for split in SPLITS:
        if data.files is not None:
            paths, labels = data.files[split]
            items += [Item(str(p), split, names(y), str(p)) for p, y in zip(paths, labels)]
        elif data.arrays is not None:
            images, labels = data.arrays[split]
            items += [Item(f"{split}/{i}", split, names(y), images[i]) for i, y in enumerate(labels)]
        else:
            raise DataError(f"inspect reads image folders, label tables and in-memory datasets, not the streamed "
                            f"{data.name!r}; export it to a folder or a label CSV first")
    return items


def image_properties(items: list[Item]) -> dict:
    """Sizes, modes and formats: read from file headers (PIL) or from the arrays' shapes."""
    sizes, modes, formats = Counter(), Counter(), Counter()
    for item in items:
        if isinstance(item.source, str):
            with Image.open(item.source) as image:
                sizes[f"{image.width}x{image.height}"] += 1
                modes[image.mode] += 1
                formats[image.format or "unknown"] += 1
        else:
            height, width = item.source.shape[:2]
            sizes[f"{width}x{height}"] += 1
            modes["L" if item.source.shape[-1] == 1 else "RGB"] += 1
            formats[f"array {item.source.dtype}"] += 1
    widths = [int(s.split("x")[0]) for s in sizes.elements()]
    heights = [int(s.split("x")[1]) for s in sizes.elements()]
    return {"sizes": dict(sizes.most_common(10)), "distinct_sizes": len(sizes), "modes": dict(modes),
            "formats": dict(formats),
            "width": {"min": min(widths), "median": float(np.median(widths)), "max": max(widths)},
            "height": {"min": min(heights), "median": float(np.median(heights)), "max": max(heights)}}


def _group(kind: str, members: list[int], items: list[Item], differences: dict | None = None) -> dict:
    label_sets = {items[i].labels for i in members}
    splits = {items[i].split for i in members}
    group = {"kind": kind, "members": [{"path": items[i].path, "split": items[i].split,
                                        "labels": list(items[i].labels)} for i in members],
             "within_class": len(label_sets) == 1, "conflicting_labels": len(label_sets) > 1,
             "across_splits": len(splits) > 1}
    if differences:
        group["max_pixel_difference"] = round(max(differences.values()), 6)
    return group


def find_duplicates(items: list[Item], hashes: list[str], near: bool = True, max_distance: int = PHASH_DISTANCE,
                    max_difference: float = MAX_PIXEL_DIFFERENCE) -> tuple[list[dict], dict]:
    """Exact groups (same hash) and near groups (confirmed pHash pairs between different contents)."""
    groups = [_group("exact", members, items) for members in exact_groups(hashes)]
    stats = {"exact_groups": len(groups), "near_groups": 0, "phash_candidates": 0, "confirmed_pairs": 0}
    if not near:
        return groups, stats
    # One representative per content: exact copies are reported once, above, not again as near pairs.
    first = {}
    for index, value in enumerate(hashes):
        first.setdefault(value, index)
    representatives = sorted(first.values())
    pairs, candidates = near_duplicate_pairs([items[i].source for i in representatives], max_distance,
                                             max_difference)
    by_hash = {}
    for index, value in enumerate(hashes):
        by_hash.setdefault(value, []).append(index)
    pairs = [(representatives[a], representatives[b], d) for a, b, d in pairs]
    difference = {(a, b): d for a, b, d in pairs}
    for members in groups_of_pairs(len(items), pairs):
        expanded = sorted(i for m in members for i in by_hash[hashes[m]])  # with their exact copies
        inside = {k: v for k, v in difference.items() if k[0] in members and k[1] in members}
        groups.append(_group("near", expanded, items, inside))
    stats.update(near_groups=len(groups) - stats["exact_groups"], phash_candidates=candidates,
                 confirmed_pairs=len(pairs))
    return groups, stats


def features(items: list[Item]) -> np.ndarray:
    """The quick model's input: each image in grayscale at FEATURE_SIZE, 0..1, flattened."""
    return np.stack([np.asarray(as_pil(item.source).convert("L").resize(FEATURE_SIZE, Image.Resampling.BILINEAR),
                                np.float32).ravel() / 255.0 for item in items])


def out_of_fold_probabilities(x: np.ndarray, labels, multi_label: bool, folds: int, seed: int) -> np.ndarray:
    """Predicted probabilities of every image by a model trained on the other folds (scikit-learn)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=300))
    if multi_label:
        model, cv = OneVsRestClassifier(model), KFold(folds, shuffle=True, random_state=seed)
    else:
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    # Single-threaded BLAS: once TensorFlow has started its thread pools, scikit-learn's multi-threaded
    # loops on 2 cores ran 40x slower (measured: 107 s against 2.5 s for the 1,797 digits).
    with threadpool_limits(limits=1):
        return cross_val_predict(model, x, labels, cv=cv, method="predict_proba")


def find_label_errors(items: list[Item], class_names: list[str], multi_label: bool, folds: int = 5,
                      seed: int = 42) -> tuple[list[dict], np.ndarray]:
    """cleanlab's label-issue candidates (path, split, given and suggested label, label quality score),
    worst first, and their item indices."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    index = {name: k for k, name in enumerate(class_names)}
    x = features(items)
    if multi_label:
        from cleanlab.multilabel_classification.rank import get_label_quality_scores as multilabel_scores

        given = [[index[n] for n in item.labels] for item in items]
        targets = np.zeros((len(items), len(class_names)), int)
        for row, ks in enumerate(given):
            targets[row, ks] = 1
        probabilities = out_of_fold_probabilities(x, targets, True, folds, seed)
        ranked = find_label_issues(given, probabilities, multi_label=True, return_indices_ranked_by="self_confidence",
                                   n_jobs=1)
        scores = multilabel_scores(given, probabilities)
        suggested = [" ".join(class_names[k] for k in np.flatnonzero(row >= 0.5)) for row in probabilities]
    else:
        labels = np.asarray([index[item.labels[0]] for item in items])
        counts = np.bincount(labels, minlength=len(class_names))
        if counts[counts > 0].min() < folds:
            raise DataError(f"label-issue search needs at least {folds} images of every class for {folds}-fold "
                            f"cross-validation; the smallest class has {counts[counts > 0].min()}: lower --folds "
                            f"or pass --no-label-issues")
        probabilities = out_of_fold_probabilities(x, labels, False, folds, seed)
        ranked = find_label_issues(labels, probabilities, return_indices_ranked_by="self_confidence", n_jobs=1)
        scores = get_label_quality_scores(labels, probabilities)
        suggested = [class_names[k] for k in probabilities.argmax(axis=1)]
    issues = [{"path": items[i].path, "split": items[i].split, "given_label": " ".join(items[i].labels),
               "suggested_label": suggested[i], "score": round(float(scores[i]), 6)} for i in ranked]
    return issues, np.asarray(ranked, int)


def label_issue_grid(items: list[Item], issues: list[dict], ranked: np.ndarray) -> bytes | None:
    """A grid of the worst label-issue candidates, each titled with its given and suggested label."""
    shown = list(zip(ranked[:GRID_IMAGES], issues[:GRID_IMAGES]))
    if not shown:
        return None
    columns = min(8, len(shown))
    rows = -(-len(shown) // columns)
    figure = plots.new_figure(1.6 * columns, 1.9 * rows)
    axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, (index, issue) in zip(axes, shown):
        image = np.asarray(as_pil(items[index].source).convert("RGB"))
        ax.imshow(image, interpolation="nearest")
        ax.set_title(f"given {issue['given_label']}\nsuggested {issue['suggested_label']}", fontsize=7)
    figure.suptitle("Label-issue candidates (cleanlab, out-of-fold probabilities), worst first")
    return plots.png_bytes(figure)


def inspect(dataset: str | DataConfig | RunConfig | ImageData = "digits", overrides: list[str] = (), seed: int = 42,
            folds: int = 5, label_issues: bool = True, near_duplicates: bool = True,
            max_distance: int = PHASH_DISTANCE, max_difference: float = MAX_PIXEL_DIFFERENCE) -> Audit:
    """Audit a dataset (see the module docstring); nothing is written until `Audit.save`.

    Args:
        dataset: a dataset string (name, folder, label CSV), a DataConfig, a RunConfig or a loaded ImageData.
        overrides: `section.key=value` config overrides for a dataset string (e.g. data.image_root=DIR).
        seed: seed of the splits (as `run.seed` in training) and of the folds.
        folds: cross-validation folds of the quick model (default 5).
        label_issues: look for label errors with cleanlab (default True).
        near_duplicates: look for near duplicates (default True; exact duplicates are always found).
        max_distance: pHash Hamming distance that makes a candidate pair (default 10 of 64 bits).
        max_difference: mean absolute pixel difference (0..1) that confirms a pair (default 0.0125).

    Example:
        inspect("photos/labels.csv").save("audit")
    """
    start = time.perf_counter()
    if isinstance(dataset, ImageData):
        data = dataset
    else:
        if isinstance(dataset, str):
            config = load_config(values={"data.dataset": dataset, "run.seed": seed}, overrides=list(overrides))
            seed = config.run.seed
            dataset = config.data
        elif isinstance(dataset, RunConfig):
            seed, dataset = dataset.run.seed, dataset.data
        data = load_data(dataset, seed=seed)
    items = _items(data)
    hashes = [h for split in SPLITS for h in split_hashes(data, split)]
    counts = counts_per_class(data)
    totals = {name: sum(counts[split][name] for split in SPLITS) for name in data.class_names}
    present = [n for n in totals.values() if n > 0]
    groups, duplicate_stats = find_duplicates(items, hashes, near_duplicates, max_distance, max_difference)
    issues, ranked, grid = [], np.zeros(0, int), None
    if label_issues:
        issues, ranked = find_label_errors(items, data.class_names, data.multi_label, folds, seed)
        grid = label_issue_grid(items, issues, ranked)
    scan = data.folder_scan
    result = {
        "dataset": data.name,
        "images": len(items),
        "class_names": list(data.class_names),
        "multi_label": data.multi_label,
        "counts": {"total": totals, **counts},
        "imbalance_ratio": round(max(present) / min(present), 4) if present else None,
        "properties": image_properties(items),
        "unreadable": [{"path": s.path, "reason": s.reason} for s in scan.skipped] if scan is not None else [],
        "duplicates": groups,
        "duplicate_summary": {**duplicate_stats,
                              "across_splits": sum(g["across_splits"] for g in groups),
                              "conflicting_labels": sum(g["conflicting_labels"] for g in groups),
                              "phash_max_distance": max_distance, "max_pixel_difference": max_difference},
        "label_issues": issues,
        "label_issue_method": (f"cleanlab.filter.find_label_issues on {folds}-fold out-of-fold probabilities of a "
                               f"logistic regression on {FEATURE_SIZE[0]}x{FEATURE_SIZE[1]} grayscale pixels")
        if label_issues else None,
        "seconds": 0.0,
    }
    result["seconds"] = round(time.perf_counter() - start, 3)
    return Audit(result=result, grid=grid)


def summary_lines(result: dict) -> list[str]:
    """The audit in a few lines, as `kerascnn inspect` prints it without --json."""
    dup = result["duplicate_summary"]
    lines = [f"{result['dataset']}: {result['images']} images, {len(result['class_names'])} classes"
             f"{' (multi-label)' if result['multi_label'] else ''}, imbalance ratio {result['imbalance_ratio']}",
             "counts: " + ", ".join(f"{name} {n}" for name, n in result["counts"]["total"].items()),
             f"unreadable files: {len(result['unreadable'])}",
             f"duplicate groups: {dup['exact_groups']} exact, {dup['near_groups']} near; {dup['across_splits']} across "
             f"splits (leakage), {dup['conflicting_labels']} with conflicting labels",
             f"label-issue candidates: {len(result['label_issues'])}", f"seconds: {result['seconds']}"]
    return lines


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; line-height: 1.45; }
h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; } table { border-collapse: collapse; font-size: .9em; }
th, td { padding: .25em .7em; border-bottom: 1px solid #e4e4e4; text-align: left; } img { max-width: 100%; }
.leak { color: #a00; font-weight: bold; }
"""


def render_html(audit: Audit) -> str:
    """audit.html: one self-contained page (the grid embedded as base64 PNG)."""
    r = audit.result
    table = lambda frame: frame.to_html(index=False, border=0, escape=True)  # noqa: E731
    parts = [f"<h1>Audit of {html.escape(r['dataset'])}</h1>", "<ul>"] + \
        [f"<li>{html.escape(line)}</li>" for line in summary_lines(r)] + ["</ul>",
         "<h2>Images per class and split</h2>",
         table(pd.DataFrame({split: r["counts"][split] for split in ("total", *SPLITS)}).rename_axis("class")
               .reset_index()),
         "<h2>Sizes, modes, formats</h2>",
         table(pd.DataFrame([{"property": k, "values": ", ".join(f"{a}: {b}" for a, b in v.items())}
                             for k, v in r["properties"].items() if isinstance(v, dict)]))]
    parts += ["<h2>Duplicates</h2>"]
    rows = [{"group": n, "kind": g["kind"], "path": m["path"], "split": m["split"], "labels": " ".join(m["labels"]),
             "flags": ", ".join(f for f in ("across_splits", "conflicting_labels") if g[f])}
            for n, g in enumerate(r["duplicates"], 1) for m in g["members"]]
    parts.append(table(pd.DataFrame(rows)) if rows else "<p>No duplicates found.</p>")
    parts += ["<h2>Label-issue candidates</h2>", f"<p>{html.escape(r['label_issue_method'] or 'not searched')}</p>"]
    if audit.grid is not None:
        parts.append(f"<img src='data:image/png;base64,{base64.b64encode(audit.grid).decode('ascii')}' "
                     f"alt='label issues' data-file='{GRID_FILE}'>")
    if r["label_issues"]:
        parts.append(table(pd.DataFrame(r["label_issues"])))
    parts += ["<h2>Unreadable files</h2>",
              table(pd.DataFrame(r["unreadable"])) if r["unreadable"] else "<p>None.</p>"]
    return (f"<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n<title>Audit of "
            f"{html.escape(r['dataset'])}</title>\n<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(parts) +
            "\n</body>\n</html>\n")
