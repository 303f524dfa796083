"""Names the importer accepts are shown as written in every figure after training, never parsed
as matplotlib math text (a ``$...\\x...$`` class name used to crash ``evaluate`` after training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from opplan.stages.evaluate import literal_label, plot_confusion


def test_confusion_matrix_draws_class_names_with_dollars_and_backslashes(tmp_path: Path) -> None:
    classes = [r"$\x$", r"a$b\alpha$c", "price $5", "$$", "plain"]
    out = tmp_path / "confusion.png"
    plot_confusion(np.eye(len(classes), dtype=int), classes, out)
    assert Image.open(out).size[0] > 100


def test_a_literal_label_renders_as_the_name_itself() -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.text import Text

    for name in [r"$\x$", "a $b$ c", "$"]:
        text = Text(text=literal_label(name))
        assert not text._preprocess_math(text.get_text())[1]  # not math text
        assert text._preprocess_math(text.get_text())[0] == name  # shown as written
