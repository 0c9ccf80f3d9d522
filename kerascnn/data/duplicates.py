"""Exact and near duplicate images: content hashes, perceptual-hash candidates confirmed pixel by pixel.

Used three ways: `data.deduplicate` drops exact duplicates before a dataset is split, the runner
warns when a test image duplicates a training image, and `kerascnn inspect` reports every group.

Exact duplicates share a SHA-256 of their content (file bytes for files, the pixel array for
in-memory images). Near duplicates (a resized or re-encoded copy) are found in two steps:
`imagehash`'s perceptual hash (pHash) proposes pairs within `max_distance` bits, then each pair is
confirmed by comparing the two images' pixels at a common size, because the 64-bit hashes of small,
similar images (digits) collide often. The pair search and the confirmation are hand-written here
(imagehash only computes hashes); groups are the connected components of the confirmed pairs
(scipy).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

# Pixel comparison of a candidate pair, in grayscale 0..1 at a common size: the smaller image's size
# (at most COMPARE_SIZE, so JPEG noise averages out on photos), the larger one shrunk to it (box
# filter); when the sizes differ, also the smaller one enlarged to the larger's size with each common
# resampling filter, so an enlarged copy matches the filter that made it. The pair is a near
# duplicate when the smallest mean absolute difference is at most MAX_PIXEL_DIFFERENCE. Measured on
# scikit-learn's digits: copies enlarged by any PIL filter differ by 0, enlarged and JPEG-encoded
# (quality >= 60) by <= 0.011, JPEG quality 90 at 8x8 by <= 0.012; the closest two distinct digits by
# 0.0157; JPEG quality 75 at 8x8 (up to 0.03) is out of reach without false positives.
COMPARE_SIZE = 64
MAX_PIXEL_DIFFERENCE = 0.0125
UPSCALE_FILTERS = (Image.Resampling.NEAREST, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC,
                   Image.Resampling.LANCZOS)
PHASH_DISTANCE = 10


def content_hash(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def array_hash(image: np.ndarray) -> str:
    """SHA-256 of an image's pixels and shape (an in-memory image has no file)."""
    image = np.ascontiguousarray(image)
    return hashlib.sha256(str(image.shape).encode() + image.tobytes()).hexdigest()


def exact_groups(hashes: list[str]) -> list[list[int]]:
    """Indices sharing a hash, one list per hash held by more than one item, in first-seen order."""
    seen: dict[str, list[int]] = defaultdict(list)
    for index, value in enumerate(hashes):
        seen[value].append(index)
    return [group for group in seen.values() if len(group) > 1]


def first_of_each(hashes: list[str]) -> np.ndarray:
    """Boolean mask keeping the first item of every hash: what `data.deduplicate` keeps."""
    seen: set[str] = set()
    keep = np.zeros(len(hashes), bool)
    for index, value in enumerate(hashes):
        if value not in seen:
            seen.add(value)
            keep[index] = True
    return keep


def as_pil(image) -> Image.Image:
    """A PIL image from a path or an H x W (x C) array of 0..255 pixels."""
    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            opened.seek(0)
            return opened.convert("RGB")
    pixels = np.clip(np.asarray(image, np.float32), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels)


def thumbnail(image: Image.Image) -> Image.Image:
    """The grayscale image the pixel comparison reads: at most COMPARE_SIZE on its longer side."""
    gray = image.convert("L")
    if max(gray.size) > COMPARE_SIZE:
        scale = COMPARE_SIZE / max(gray.size)
        gray = gray.resize((max(1, round(gray.width * scale)), max(1, round(gray.height * scale))),
                           Image.Resampling.BOX)
    return gray


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, np.float32) / 255.0


def pixel_difference(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference (0..1) of two grayscale thumbnails at a common size (see COMPARE_SIZE)."""
    if a.width * a.height > b.width * b.height:
        a, b = b, a
    differences = [float(np.abs(_pixels(b.resize(a.size, Image.Resampling.BOX)) - _pixels(a)).mean())]
    if a.size != b.size:
        target = _pixels(b)
        differences += [float(np.abs(_pixels(a.resize(b.size, f)) - target).mean()) for f in UPSCALE_FILTERS]
    return min(differences)


def near_duplicate_pairs(images: list, max_distance: int = PHASH_DISTANCE,
                         max_difference: float = MAX_PIXEL_DIFFERENCE) -> tuple[list[tuple[int, int, float]], int]:
    """Confirmed near-duplicate pairs (i, j, pixel difference) among `images` (paths or arrays), and
    the number of pHash candidates that were checked.

    Args:
        images: file paths or H x W (x C) arrays.
        max_distance: largest pHash Hamming distance (of 64 bits) that makes a pair a candidate.
        max_difference: largest mean absolute pixel difference (0..1) that confirms it.
    """
    import imagehash

    pils = [as_pil(image) for image in images]
    if len(pils) < 2:
        return [], 0
    bits = np.stack([imagehash.phash(image).hash.ravel() for image in pils]).astype(np.uint8)
    thumbs = [thumbnail(image) for image in pils]
    pairs, candidates = [], 0
    for i in range(len(bits) - 1):  # Hamming distances of one hash against all later ones, vectorised
        distance = (bits[i + 1:] != bits[i]).sum(axis=1)
        for j in np.flatnonzero(distance <= max_distance) + i + 1:
            candidates += 1
            difference = pixel_difference(thumbs[i], thumbs[j])
            if difference <= max_difference:
                pairs.append((i, int(j), difference))
    return pairs, candidates


def groups_of_pairs(count: int, pairs: list[tuple[int, int, float]]) -> list[list[int]]:
    """Connected components (scipy) of the pair graph with more than one member, sorted indices."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not pairs:
        return []
    rows, cols = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    graph = coo_matrix((np.ones(len(pairs)), (rows, cols)), shape=(count, count))
    _, component = connected_components(graph, directed=False)
    members: dict[int, list[int]] = defaultdict(list)
    for index in sorted(set(rows.tolist()) | set(cols.tolist())):
        members[int(component[index])].append(index)
    return [group for group in members.values() if len(group) > 1]


def split_hashes(data, split: str) -> list[str]:
    """Content hashes of one split of an ImageData: file bytes for files, pixels for arrays, else []."""
    if data.files is not None:
        return [content_hash(path) for path in data.files[split][0]]
    if data.arrays is not None:
        return [array_hash(image) for image in data.arrays[split][0]]
    return []


def leaked_test_images(data, against: tuple[str, ...] = ("train",)) -> list[int]:
    """Positions of test images whose content equals an image of the `against` splits (exact duplicates)."""
    seen = {value for split in against for value in split_hashes(data, split)}
    return [i for i, value in enumerate(split_hashes(data, "test")) if value in seen]
