"""Neural style transfer: with random VGG19 weights the loss falls over a few steps (Adam and L-BFGS),
intermediate images are written, and missing weights are refused in one line that says where they go."""

import numpy as np
import pytest
from PIL import Image

from kerascnn.cli import main
from kerascnn.errors import ModelLoadError
from kerascnn.style import VGG19_NOTOP_FILE, style_transfer


@pytest.fixture
def pictures(tmp_path):
    rng = np.random.default_rng(0)
    content = np.clip(rng.normal(120, 40, (36, 44, 3)), 0, 255).astype(np.uint8)
    stripes = ((np.indices((50, 50)).sum(0) // 4) % 2 * 255).astype(np.uint8)
    Image.fromarray(content).save(tmp_path / "content.png")
    Image.fromarray(np.stack([stripes, 255 - stripes, stripes], -1)).save(tmp_path / "style.jpg")
    return tmp_path / "content.png", tmp_path / "style.jpg"


def test_style_transfer_with_random_weights_lowers_its_loss(pictures, tmp_path):
    seen = []
    result = style_transfer(*pictures, tmp_path / "out.png", steps=4, size=44, weights="none", save_every=2,
                            progress=lambda step, loss, parts: seen.append((step, loss, set(parts))))
    assert len(result.losses) == 5 and result.losses[-1] < result.losses[0]
    assert seen[0][2] == {"content", "style", "total_variation"} and [s for s, _, _ in seen] == [0, 1, 2, 3]
    with Image.open(result.output) as image:
        assert image.size == (44, 36) and image.mode == "RGB"
    assert [p.name for p in result.intermediates] == ["out_step_0002.png"]


def test_the_cli_runs_lbfgs_and_reports_the_loss(pictures, tmp_path, capsys):
    out = tmp_path / "result.png"
    assert main(["style", *map(str, pictures), "--out", str(out), "--steps", "3", "--size", "40", "--weights", "none",
                 "--optimizer", "lbfgs", "--progress-every", "1"]) == 0
    printed = capsys.readouterr().out
    assert "step     0  loss" in printed and f"result: {out}" in printed
    first, last = (float(x) for x in printed.split("loss ")[-1].split(" in ")[0].split(" -> "))
    assert last < first and out.is_file()


def test_missing_weights_are_refused_in_one_line_that_says_where_to_put_them(pictures, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    with pytest.raises(ModelLoadError, match=f"put {VGG19_NOTOP_FILE} into .*keras_home/models"):
        style_transfer(*pictures, tmp_path / "x.png", steps=1, size=32)
    assert main(["style", *map(str, pictures), "--out", str(tmp_path / "x.png"),
                 "--weights", str(tmp_path / "missing.h5")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "missing.h5" in error and "does not exist" in error
    assert not (tmp_path / "x.png").exists()
    assert main(["style", *map(str, pictures), "--out", str(tmp_path / "x.txt"), "--weights", "none"]) == 2
