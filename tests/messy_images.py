"""Test corpora of messy image folders, generated with PIL: unusual but valid images, and malformed files.

`write_unusual(folder)` writes one file per awkward-but-valid case; `write_malformed(folder, ...)`
writes files a real folder collects (truncated downloads, empty files, text saved as .jpg, OS
litter) and returns {path: the reason kind the scan must report}.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def _rgb(rng: np.random.Generator, height: int = 12, width: int = 10) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def write_unusual(folder: Path, seed: int = 0) -> list[Path]:
    """Valid images in awkward formats, modes, sizes and names; returns their paths."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    frames = [_rgb(rng) for _ in range(3)]
    gray16 = Image.fromarray(rng.integers(0, 65536, (12, 10)).astype(np.uint16))
    files = {
        "palette.png": encoded(_rgb(rng).convert("P"), "PNG"),
        "palette.gif": encoded(_rgb(rng).convert("P"), "GIF"),
        "animated.gif": encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0),
        "gray16.png": encoded(gray16, "PNG"),
        "cmyk.jpg": encoded(_rgb(rng).convert("CMYK"), "JPEG"),
        "gray_alpha.png": encoded(_rgb(rng).convert("LA"), "PNG"),
        "rgba.png": encoded(_rgb(rng).convert("RGBA"), "PNG"),
        "rgba.bmp": encoded(_rgb(rng).convert("RGBA"), "BMP"),
        "gray.bmp": encoded(_rgb(rng).convert("L"), "BMP"),
        "bilevel.png": encoded(_rgb(rng).convert("1"), "PNG"),
        "progressive.jpg": encoded(_rgb(rng), "JPEG", progressive=True),
        "tiny.png": encoded(_rgb(rng, 1, 1), "PNG"),
        "large.jpg": encoded(_rgb(rng, 1500, 2000), "JPEG"),
        "png content.jpg": encoded(_rgb(rng), "PNG"),
        "ünïcødé 图像.png": encoded(_rgb(rng), "PNG"),
        "with  spaces (1).JPEG": encoded(_rgb(rng, 30, 7), "JPEG"),
        "nested/deeper/inside.png": encoded(_rgb(rng), "PNG"),
    }
    paths = []
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths.append(path)
    return paths


# What a malformed file is -> the start of the reason the scan must give for it.
REASONS = {
    "empty": "empty file",
    "truncated": "not a decodable image",
    "random": "not a decodable image",
    "text": "not a decodable image",
    "system": "hidden or system file",
    "not_image": "not an image file",
    "palette_bmp": "unsupported image",
}


def malformed_bytes(kind: str, rng: np.random.Generator) -> bytes:
    """The content of one malformed file of `kind` (see REASONS)."""
    if kind == "empty":
        return b""
    if kind == "truncated":
        fmt = ["PNG", "JPEG", "GIF", "BMP"][rng.integers(4)]
        data = encoded(_rgb(rng, 16, 16), fmt)
        return data[: int(rng.integers(1, len(data) // 3))]  # cut before the pixel data is complete
    if kind == "random":
        return rng.integers(0, 256, int(rng.integers(1, 2048)), dtype=np.uint8).tobytes()
    if kind == "text":
        return "this is not an image\n".encode() * int(rng.integers(1, 20))
    if kind == "palette_bmp":
        return encoded(_rgb(rng).convert("P"), "BMP")
    return b"\x00\x05\x16\x07 not an image either"  # system files and other extensions


def write_malformed(folder: Path, count: int, seed: int = 0) -> dict[Path, str]:
    """`count` malformed files in `folder`, cycling through the kinds; returns {path: expected reason start}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    kinds = list(REASONS)
    names = {"system": [".DS_Store", "Thumbs.db", "desktop.ini", "._photo.jpg"], "not_image": [".txt", ".json", ""]}
    expected = {}
    for i in range(count):
        kind = kinds[i % len(kinds)]
        if kind == "system":
            name = names["system"][(i // len(kinds)) % 4]
            path = folder / f"os{i}" / name  # one per folder: system files share their names
        elif kind == "not_image":
            path = folder / f"notes {i}{names['not_image'][i % 3]}"
        else:
            path = folder / f"{kind}_{i}{['.png', '.jpg', '.jpeg', '.gif', '.bmp'][i % 5]}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(malformed_bytes(kind, rng))
        expected[path] = REASONS[kind]
    return expected


def write_valid(folder: Path, count: int, value: int, seed: int = 0, size: int = 8) -> list[Path]:
    """`count` small PNGs around gray level `value` (so two classes are easy to tell apart)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        pixels = np.clip(value + rng.integers(-20, 21, (size, size, 3)), 0, 255).astype(np.uint8)
        paths.append(folder / f"img_{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths
