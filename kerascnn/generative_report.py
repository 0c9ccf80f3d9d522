"""Reports and manifests of the generative runs (`kerascnn autoencode`, `kerascnn gan`).

The classifier's report (`kerascnn.report`) is built around class probabilities; these runs have
other numbers (PSNR, SSIM, Fréchet distance) and other pictures (image grids), so they get this
smaller report: `metrics.json`, the figures as PNG files, `report.md` and a self-contained
`report.html`, all written atomically into the run directory with `kerascnn.plots` figures.
"""

from __future__ import annotations

import base64
import datetime
import html
import platform
from pathlib import Path

import numpy as np

from kerascnn import __version__, plots
from kerascnn.rundir import HTML_FILE, MARKDOWN_FILE, METRICS_FILE, write_bytes_atomically, write_json_atomically


def versions() -> dict:
    """The version fields every manifest starts with."""
    import keras
    import tensorflow as tf

    return {"kerascnn_version": __version__, "tensorflow_version": tf.__version__,
            "keras_version": keras.__version__, "python_version": platform.python_version(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def image_grid_figure(rows: list[tuple[str, np.ndarray]], title: str):
    """One row of images (raw pixels 0..255, HWC) per (label, images) pair, labelled on the left."""
    columns = max(len(images) for _, images in rows)
    figure = plots.new_figure(max(1.1 * columns, 4.0), 1.25 * len(rows) + 0.4)
    axes = np.atleast_2d(figure.subplots(len(rows), columns, squeeze=False))
    for r, (label, images) in enumerate(rows):
        for c in range(columns):
            if c < len(images):
                plots.show_image(axes[r, c], images[c])
            else:
                axes[r, c].set_axis_off()
        axes[r, 0].set_title(label, fontsize=8, loc="left")
    figure.suptitle(title, fontsize=10)
    return figure


def sample_grid_figure(images: np.ndarray, title: str, columns: int = 8):
    """Images (raw pixels 0..255) in a square-ish grid, without labels: a GAN's samples."""
    rows = int(np.ceil(len(images) / columns))
    figure = plots.new_figure(columns * 0.9, rows * 0.9 + 0.35)
    axes = np.atleast_2d(figure.subplots(rows, columns, squeeze=False))
    for i, ax in enumerate(axes.flat):
        if i < len(images):
            plots.show_image(ax, images[i])
        else:
            ax.set_axis_off()
    figure.suptitle(title, fontsize=9)
    return figure


def curves_figure(history, columns: list[str], title: str):
    """Each history column by epoch, one panel a column (those present)."""
    columns = [c for c in columns if c in history]
    figure = plots.new_figure(max(4.0 * len(columns), 4.0), 3.6)
    axes = np.atleast_1d(figure.subplots(1, max(len(columns), 1)))
    for ax, column in zip(axes, columns):
        ax.plot(history["epoch"] + 1, history[column], "o-")
        ax.set_xlabel("epoch")
        ax.set_title(column, fontsize=9)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    figure.suptitle(title, fontsize=10)
    return figure


def _value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_report(run_dir: Path, title: str, metrics: dict, figures: dict[str, bytes], notes: list[str]) -> Path:
    """Write metrics.json, the figures, report.md and report.html into `run_dir`; return report.html's path."""
    for name, content in figures.items():
        write_bytes_atomically(run_dir / name, content)
    write_json_atomically(run_dir / METRICS_FILE, metrics)
    flat = [(key, value) for key, value in metrics.items() if not isinstance(value, (dict, list))]
    markdown = [f"# {title}", "", "| metric | value |", "|---|---|",
                *(f"| {key} | {_value(value)} |" for key, value in flat), ""]
    markdown += [f"- {note}" for note in notes] + ([""] if notes else [])
    markdown += [f"![{name}]({name})" for name in figures]
    write_bytes_atomically(run_dir / MARKDOWN_FILE, ("\n".join(markdown) + "\n").encode("utf-8"))
    rows = "".join(f"<tr><td>{html.escape(key)}</td><td>{html.escape(_value(value))}</td></tr>" for key, value in flat)
    images = "".join(f'<h2>{html.escape(name)}</h2><img alt="{html.escape(name)}" '
                     f'src="data:image/png;base64,{base64.b64encode(content).decode()}">'
                     for name, content in figures.items())
    items = "".join(f"<li>{html.escape(note)}</li>" for note in notes)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
            f"<h1>{html.escape(title)}</h1><table>{rows}</table><ul>{items}</ul>{images}</body></html>\n")
    write_bytes_atomically(run_dir / HTML_FILE, page.encode("utf-8"))
    return run_dir / HTML_FILE
